"""A tiny corpus and model for trainer tests: ~200 documents, a char tokenizer, 2 layers."""

import copy
import json
import random

import pytest

from lengthwise.config import Config, apply_overrides
from lengthwise.data.store import prepare

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "bright",
    "stars",
    "fade",
]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    rng = random.Random(0)
    docs = []
    for i in range(240):
        n = rng.choice([2, 4, 8, 16, 40, 80])
        docs.append(" ".join(rng.choice(WORDS) for _ in range(n)) + f" #{i}")
    for split, part in (("train", docs[:200]), ("val", docs[200:])):
        (root / f"{split}.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in part))
    data = {
        "out_dir": str(root / "data"),
        "tokenizer": {"kind": "char"},
        "splits": {
            s: {"kind": "jsonl", "path": str(root / f"{s}.jsonl")} for s in ("train", "val")
        },
    }
    cfg = Config.model_validate({"data": data})
    prepare(cfg.data, progress=False)
    return data


@pytest.fixture
def make_cfg(tiny_data, tmp_path):
    """Config for a tiny run in tmp_path/run; keyword overrides use dotted keys."""

    def make(*overrides: str, **tree_updates) -> Config:
        tree = {
            "data": copy.deepcopy(tiny_data),  # overrides must not reach the shared fixture
            "batching": {
                "strategy": "decomposition",
                "tokens_per_step": 512,
                "max_len": 64,
                "min_bucket": 8,
                "curriculum": {"name": "grow_p2", "cycles": 2},
            },
            "model": {"n_layer": 2, "n_head": 2, "d_model": 32, "position": "rope"},
            "optim": {"lr": 3e-3},
            "schedule": {"warmup_tokens": 1024},
            "train": {
                "out_dir": str(tmp_path / "run"),
                "total_tokens": 20 * 512,
                "progress": False,
                "tensorboard": False,
                "log_every_steps": 1,
                "seed": 0,
            },
        }
        apply_overrides(tree, list(overrides))
        return Config.model_validate(tree)

    return make
