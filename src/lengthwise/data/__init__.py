"""Documents -> Tokenizer -> TokenStore -> BatchStrategy (+ Curriculum) -> Batch."""
