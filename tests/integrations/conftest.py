"""A tiny char-level corpus for the HF Trainer integration: train and val share a domain
(lower-case word salad), ood is the same text in upper case (characters training never shows,
so its loss rises as the model fits the training domain: alerts and early stops happen)."""

import json
import random

import pytest

from lengthwise.config import Config
from lengthwise.data.store import prepare

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven"]
WORDS += ["bright", "stars", "fade"]


@pytest.fixture(scope="session")
def hf_data(tmp_path_factory) -> dict:
    """The `data` section of a lengthwise config whose stores are prepared."""
    root = tmp_path_factory.mktemp("hf_data")
    rng = random.Random(0)
    docs = [
        " ".join(rng.choice(WORDS) for _ in range(rng.choice([2, 4, 8, 16, 40, 80]))) + f" #{i}"
        for i in range(240)
    ]
    parts = {"train": docs[:200], "val": docs[200:220], "ood": [d.upper() for d in docs[220:]]}
    for split, part in parts.items():
        (root / f"{split}.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in part))
    data = {
        "out_dir": str(root / "data"),
        "tokenizer": {"kind": "char"},
        "splits": {s: {"kind": "jsonl", "path": str(root / f"{s}.jsonl")} for s in parts},
    }
    prepare(Config.model_validate({"data": data}).data, progress=False)
    return data
