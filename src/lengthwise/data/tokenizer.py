"""Tokenizers: a byte-level BPE trained with HF `tokenizers`, any existing tokenizer.json, and a
character-level tokenizer for synthetic tasks. All three are one `Tokenizer` wrapper around an HF
`tokenizers.Tokenizer`, so they save, load and hash the same way.

Special tokens: `<|eos|>` ends every document in a token store (the BatchStrategy relies on it),
`<|pad|>` fills padded rows, `<|bos|>` is optional. A tokenizer.json that lacks them gets them
added, so any existing file can be used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from lengthwise.errors import UserError
from lengthwise.io import atomic_write_text

EOS, PAD, BOS, UNK = "<|eos|>", "<|pad|>", "<|bos|>", "<|unk|>"
SPECIALS = [EOS, PAD, BOS]
PRINTABLE_ASCII = "".join(chr(c) for c in range(32, 127)) + "\n\t"


class Tokenizer:
    def __init__(self, hf: HFTokenizer) -> None:
        missing = [t for t in SPECIALS if hf.token_to_id(t) is None]
        if missing:
            hf.add_special_tokens(missing)
        # Document text that happens to contain "<|eos|>" must stay text, not end the document.
        hf.encode_special_tokens = True
        self.hf = hf
        self.eos_id: int = hf.token_to_id(EOS)
        self.pad_id: int = hf.token_to_id(PAD)
        self.bos_id: int = hf.token_to_id(BOS)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Parallel (Rust threads) encoding of many documents at once."""
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def to_json(self) -> str:
        return self.hf.to_str(pretty=False)

    @property
    def fingerprint(self) -> str:
        """sha256 of the serialized tokenizer: a store records it so mismatches are caught."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.hf.to_str(pretty=True))


def train_bpe(texts: Iterable[str], vocab_size: int = 8192) -> Tokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenization, no normalizer), so decode(encode(x)) == x
    for any text, and no input byte is ever unknown."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf)


def char_tokenizer(alphabet: str | None = None) -> Tokenizer:
    """One token per character of `alphabet` (default: printable ASCII, newline, tab).

    Synthetic tasks need digits to be single tokens (carries, position coupling), which BPE
    would merge. Characters outside the alphabet map to `<|unk|>`.
    """
    chars = sorted(set(alphabet if alphabet is not None else PRINTABLE_ASCII))
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, UNK, *chars])}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens(SPECIALS)
    return Tokenizer(hf)


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: tokenizer file not found")
    try:
        hf = HFTokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: not a valid tokenizer.json ({reason})") from None
    return Tokenizer(hf)


def token_dtype(vocab_size: int) -> str:
    """uint16 halves the store when ids fit (vocab <= 65536, as for GPT-2's 50257)."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


def describe(tok: Tokenizer) -> dict:
    model = json.loads(tok.to_json()).get("model", {}).get("type", "?")
    return {
        "model": model,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "pad_id": tok.pad_id,
        "bos_id": tok.bos_id,
        "sha256": tok.fingerprint,
    }
