"""benchmarks/time_to_loss.py: where a curve crosses the target, the per-seed ratios to
concat_chunk, and (slow) the script end to end on a tiny store."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "time_to_loss.py"
sys.path.insert(0, str(SCRIPT.parent))
import time_to_loss  # noqa: E402

CURVE = [
    {"tokens": 0, "seconds": 0.0, "val_loss": 9.0},
    {"tokens": 100, "seconds": 10.0, "val_loss": 7.0},
    {"tokens": 200, "seconds": 20.0, "val_loss": 6.0},
]


def run(name, seed, curve):
    return {
        "name": name,
        "seed": seed,
        "curve": curve,
        "real_tokens_per_s": 10.0,
        "train_seconds": curve[-1]["seconds"],
    }


def scaled(curve, time_factor):
    return [{**p, "seconds": p["seconds"] * time_factor} for p in curve]


def test_crossing_interpolates_between_snapshots():
    assert time_to_loss.crossing(CURVE, 6.5) == (15.0, 150.0)
    assert time_to_loss.crossing(CURVE, 7.0) == (10.0, 100.0)
    assert time_to_loss.crossing(CURVE, 6.0) == (20.0, 200.0)
    assert time_to_loss.crossing(CURVE, 5.9) == (math.inf, math.inf)


def test_summarize_ratios_to_concat_chunk():
    fast = [{**p, "val_loss": p["val_loss"] - 0.5} for p in CURVE]  # lower loss all along
    runs = {
        "concat_chunk": [run("concat_chunk", s, CURVE) for s in range(3)],
        "best_fit": [run("best_fit", s, scaled(fast, 2.0)) for s in range(3)],
        "decomposition_natural": [run("decomposition_natural", s, CURVE[:2]) for s in range(3)],
    }
    rows = {r["name"]: r for r in time_to_loss.summarize(runs)}
    cc, bf, dn = rows["concat_chunk"], rows["best_fit"], rows["decomposition_natural"]
    assert (cc["ratio_seconds"], cc["ratio_tokens"], cc["seeds_reached"]) == (1.0, 1.0, 3)
    assert cc["target_val_loss"] == 6.0 and cc["seconds_to_target"] == 20.0
    # best_fit reaches 6.0 halfway between its 100- and 200-token snapshots, at 2x the clock
    assert (bf["tokens_to_target"], bf["seconds_to_target"]) == (150.0, 30.0)
    assert (bf["ratio_tokens"], bf["ratio_seconds"]) == (0.75, 1.5)
    assert dn["seconds_to_target"] is None and dn["ratio_seconds"] is None
    assert dn["seeds_reached"] == 0
    table = time_to_loss.format_table(list(rows.values()))
    assert "0/3" in table and "0.75x" in table
    json.dumps(list(rows.values()))


@pytest.mark.slow
def test_json_rows(tmp_path):
    docs = [("lorem ipsum dolor sit amet " * (1 + i % 5))[: 9 + 7 * i] for i in range(60)]
    for split, part in (("train", docs), ("val", docs[:8])):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in part))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"data:\n  out_dir: {tmp_path / 'data'}\n  tokenizer: {{kind: char}}\n  splits:\n"
        f"    train: {{kind: jsonl, path: {tmp_path / 'train.jsonl'}}}\n"
        f"    val: {{kind: jsonl, path: {tmp_path / 'val.jsonl'}}}\n"
        "batching: {min_bucket: 8}\n"
    )
    cmd = [sys.executable, str(SCRIPT), "--json", "--config", str(cfg), "--max-len", "32"]
    cmd += ["--tokens-per-step", "128", "--d-model", "16", "--n-layer", "1", "--n-head", "2"]
    cmd += ["--budget", "1024", "--snapshots", "4", "--eval-tokens", "256", "--repeats", "1"]
    cmd += ["--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows] == list(time_to_loss.NAMES)
    assert rows[0]["ratio_seconds"] == 1.0 and rows[0]["seeds_reached"] == 1
    for r in rows:
        assert math.isfinite(r["final_val_loss"]) and r["real_tokens_per_s"] > 0


def test_drop_share_time_and_length_split():
    # drop 9 -> 6; 90% of it is reached at 6.3, 70% of the way from the 10 s to the 20 s snapshot
    assert time_to_loss.drop_share_time(CURVE) == pytest.approx(17.0 / 20.0)
    assert time_to_loss.length_split({"loss": [1.0, 2.0, 3.0, 5.0], "max_len": 2}) == (1.5, 4.0)
    assert time_to_loss.length_split({"loss": [1.0, 2.0], "max_len": 2}) is None
    assert time_to_loss.length_split(None) is None


def test_position_loss_averages_over_the_documents_that_reach_each_position():
    import numpy as np
    import peers
    import torch

    V = 7
    tokens = np.arange(18) % V  # documents of 5, 3 and 10 tokens; each next token is x + 1
    offsets = np.array([0, 5, 8, 18])

    def logits_of(x):  # sure of the right next token at positions 0-2, uniform after
        logits = torch.zeros(1, x.shape[1], V)
        logits[0, torch.arange(3), (x[0, :3] + 1) % V] = 50.0
        return logits

    out = peers.position_loss(logits_of, tokens, offsets, 7, 2)
    # the two longest documents (10 and 5 tokens), cut at 7 tokens: 6 and 4 predictions
    assert out["docs_at"] == [2, 2, 2, 2, 1, 1]
    assert out["loss"] == pytest.approx([0.0] * 3 + [math.log(V)] * 3, abs=1e-6)


def test_compact_bins_the_per_position_loss():
    pos = {"max_len": 4, "loss": [1.0, 3.0, 2.0, 4.0, 5.0, 7.0, 9.0], "docs_at": [2] * 6 + [1]}
    runs = {"concat_chunk": [{"seed": 0, "position_loss": pos}, {"seed": 1, "position_loss": None}]}
    out = time_to_loss.compact(runs, bins=3)
    first = out["concat_chunk"][0]["position_loss"]
    assert first == {"max_len": 4, "bin_width": 2, "loss": [2.0, 3.0, 6.0], "docs_at": [2, 2, 2]}
    assert out["concat_chunk"][1]["position_loss"] is None
    assert runs["concat_chunk"][0]["position_loss"] is pos  # the input is left as it was
