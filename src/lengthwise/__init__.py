"""lengthwise: variable sequence length training and length-generalization diagnostics."""

__version__ = "0.1.0"
