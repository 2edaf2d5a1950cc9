"""benchmarks/throughput.py worker mode on a tiny store and model: the JSON it prints is what the
parent and `--json` consumers rely on. Speed is not asserted (it depends on the machine).
The workers run in this process (`main()` with their argv): a worker process would add ~3 s of
Python and torch start-up each and test nothing more."""

import contextlib
import importlib.util
import io
import json
import math
import sys
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCHED = ("concat_chunk", "decomposition")
POSITIVE = ("tokens_per_s", "slots_per_s", "flops_per_s", "step_s", "peak_rss_mb", "loss")


@pytest.fixture(scope="module")
def measurements(throughput, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("throughput")
    docs = [("lorem ipsum dolor sit amet " * (1 + i % 9))[: 20 + 13 * i] for i in range(60)]
    (tmp / "docs.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    (tmp / "cfg.yaml").write_text(
        f"data:\n  out_dir: {tmp / 'data'}\n  tokenizer: {{kind: char}}\n"
        f"  splits:\n    train: {{kind: jsonl, path: {tmp / 'docs.jsonl'}}}\n"
        "batching: {min_bucket: 8, curriculum: {name: grow_p2, cycles: 2}}\n"
    )
    common = ["--config", str(tmp / "cfg.yaml"), "--max-len", "64", "--tokens-per-step", "256"]
    common += ["--d-model", "32", "--n-layer", "1", "--n-head", "2", "--repeats", "2"]
    # The first worker also builds the store; the second then finds it up to date.
    out = {}
    for name in BENCHED:
        stdout = io.StringIO()
        argv = [str(SCRIPT), "--worker", name, *common]
        with (
            mock.patch.object(sys, "argv", argv),
            contextlib.chdir(tmp),
            contextlib.redirect_stdout(stdout),
        ):
            assert throughput.main() == 0
        lines = stdout.getvalue().splitlines()
        out[name] = [json.loads(line) for line in lines if line.startswith("{")]
    return out


@pytest.mark.parametrize("name", BENCHED)
def test_worker_json(measurements, name):
    ms = measurements[name]
    assert [m["repeat"] for m in ms] == [0, 1]
    for m in ms:
        assert (m["strategy"], m["max_len"], m["device"]) == (name, 64, "cpu")
        for key in POSITIVE:
            assert math.isfinite(m[key]) and m[key] > 0, key
        assert 0 < m["attn_flop_share"] < 1 and 0 <= m["pad_fraction"] < 1
        assert 0.5 < m["fwd_frac"] + m["bwd_frac"] + m["opt_frac"] <= 1  # of the step's wall time
        assert m["slots_per_s"] >= m["tokens_per_s"] * (1 - 1e-9)  # real tokens <= slots
        assert sum(g["epoch_steps"] for g in m["groups"]) == m["epoch_steps"]
        assert all(g["step_s"] > 0 for g in m["groups"])


def test_summary_rows(throughput, measurements):
    """The parent's reduction: one row per strategy with the keys `--json` promises."""
    rows = throughput.summarize(measurements, peak=1e12)
    by = {r["strategy"]: r for r in rows}
    assert by["concat_chunk"]["ratio_vs_concat_chunk"] == 1.0
    for r in rows:
        for key in ("tokens_per_s", "ratio_vs_concat_chunk", "peak_rss_mb", "mfu"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert r["max_len"] == 64
    assert throughput.explain(rows, {})[0].startswith("max_len 64: decomposition = ")
