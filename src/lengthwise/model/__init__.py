"""The model: gpt.py (GPT, read it first), positions.py (positional encodings), attention.py
(attention backends and their dense reference)."""
