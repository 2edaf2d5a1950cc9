import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lengthwise.data.tokenizer import (
    char_tokenizer,
    load_tokenizer,
    token_dtype,
    train_bpe,
)
from lengthwise.errors import UserError

CORPUS = [
    "The quick brown fox jumps over the lazy dog.\n" * 20,
    "def main():\n    return 0  # übung, naïve café\n" * 10,
    "Ein Fest für alle: 東京, Ωμέγα, emoji 🎉.\n" * 5,
]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(CORPUS, vocab_size=400)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_bpe_round_trips_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_specials_and_merges(bpe):
    assert (bpe.eos_id, bpe.pad_id, bpe.bos_id) == (0, 1, 2)
    assert bpe.vocab_size <= 400
    # Trained merges make frequent text shorter than its bytes.
    text = "The quick brown fox jumps over the lazy dog."
    assert len(bpe.encode(text)) < len(text.encode()) / 2
    assert bpe.eos_id not in bpe.encode(text)
    # A document that contains a special token's text keeps it as text.
    assert bpe.eos_id not in bpe.encode("a <|eos|> b")
    assert bpe.decode(bpe.encode("a <|eos|> b")) == "a <|eos|> b"


def test_save_load_same_ids_and_hash(bpe, tmp_path):
    bpe.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.fingerprint == bpe.fingerprint
    assert again.encode("naïve café 🎉") == bpe.encode("naïve café 🎉")


def test_load_foreign_tokenizer_gets_specials(tmp_path):
    from tokenizers import Tokenizer as HF
    from tokenizers import models

    HF(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]")).save(
        str(tmp_path / "t.json")
    )
    tok = load_tokenizer(tmp_path / "t.json")
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (3, 4, 5)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="missing.json: tokenizer file not found"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(UserError, match="bad.json: not a valid tokenizer.json"):
        load_tokenizer(bad)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="0123456789+=*,: \n", max_size=100))
def test_char_tokenizer_one_token_per_char(text):
    tok = char_tokenizer("0123456789+=*,: \n")
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


def test_char_tokenizer_ids_and_unknown():
    tok = char_tokenizer("0123456789")
    assert tok.vocab_size == 3 + 1 + 10  # eos, pad, bos, unk, digits
    assert tok.encode("09") == [4, 13]
    assert tok.decode(tok.encode("1x2")) == "1<|unk|>2"


def test_token_dtype():
    assert token_dtype(8192) == "uint16"
    assert token_dtype(65536) == "uint16"
    assert token_dtype(65537) == "uint32"
