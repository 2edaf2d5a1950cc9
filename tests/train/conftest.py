"""A tiny corpus and model for trainer tests: ~200 documents, a char tokenizer, 2 layers."""

import copy
import json
import random
from pathlib import Path

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


def tiny_config(data: dict, out_dir: Path, *overrides: str) -> Config:
    """Config for a tiny run on `data` (tiny_data) in out_dir; overrides use dotted keys."""
    tree = {
        "data": copy.deepcopy(data),  # overrides must not reach the shared fixture
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
            "out_dir": str(out_dir),
            "total_tokens": 20 * 512,
            "progress": False,
            "loggers": [],
            "log_every_steps": 1,
            "seed": 0,
        },
    }
    apply_overrides(tree, list(overrides))
    return Config.model_validate(tree)


@pytest.fixture(scope="session")
def make_cfg_in(tiny_data):
    """make_cfg with the run folder given first: for module-scoped fixtures."""

    def make(out_dir: Path, *overrides: str) -> Config:
        return tiny_config(tiny_data, out_dir, *overrides)

    return make


@pytest.fixture
def make_cfg(make_cfg_in, tmp_path):
    """Config for a tiny run in tmp_path/run; overrides use dotted keys (`key.sub=value`)."""

    def make(*overrides: str) -> Config:
        return make_cfg_in(tmp_path / "run", *overrides)

    return make
