"""A run paused inside its learning-rate warmup and resumed with another budget trains exactly as
a run planned with that budget from the start: `lengthwise demo` relies on it to re-plan its text
runs from the speed of their first steps (demo.calibrate)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lengthwise.rundir import read_metrics
from lengthwise.train.trainer import train

pytestmark = pytest.mark.usefixtures("single_thread")

STEP = 512  # make_cfg's batching.tokens_per_step
STRATEGIES = {
    "concat_chunk": ["batching.strategy=concat_chunk", "batching.curriculum.name=none"],
    "decomposition": ["batching.strategy=decomposition", "batching.curriculum.name=grow_p2"],
}


def _run(make_cfg, tmp_path: Path, name: str, total: int, every: int, *extra: str, **kw):
    cfg = make_cfg(
        *extra,
        "model.resid_dropout=0.1",  # the resumed run must also draw the same dropout masks
        "eval.sets=[{name: val, split: val, tokens: 256}]",
        f"train.total_tokens={total}",
        f"eval.every_tokens={every}",
        f"train.out_dir={tmp_path / name}",
    )
    return train(cfg, quiet=True, **kw)


def _same_weights(a: Path, b: Path) -> bool:
    x, y = (
        load_file(a / "export" / "model.safetensors"),
        load_file(b / "export" / "model.safetensors"),
    )
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_pause_in_warmup_then_new_budget_equals_a_run_planned_with_it(make_cfg, tmp_path, strategy):
    # warmup 6 steps; planned: 16 steps, evals every 8; paused after 2 steps (inside the
    # warmup, before the new interval's first eval); re-planned: 8 steps, evals every 3
    common = [*STRATEGIES[strategy], "schedule.warmup_tokens=3072"]
    fresh = _run(make_cfg, tmp_path, "fresh", 8 * STEP, 3 * STEP, *common)
    paused = _run(make_cfg, tmp_path, "replan", 16 * STEP, 8 * STEP, *common, stop_at_step=2)
    assert paused["stop_reason"] == "paused" and paused["steps"] == 2
    resumed = _run(make_cfg, tmp_path, "replan", 8 * STEP, 3 * STEP, *common, resume=True)

    assert resumed["steps"] == fresh["steps"] == 8 and resumed["stop_reason"] == "completed"
    assert _same_weights(tmp_path / "fresh", tmp_path / "replan")
    a, b = read_metrics(tmp_path / "fresh"), read_metrics(tmp_path / "replan")
    for event, keys in (("train", ("step", "loss", "lr")), ("eval", ("step", "val/loss"))):
        rows_a = [[r[k] for k in keys] for r in a if r["event"] == event]
        rows_b = [[r[k] for k in keys] for r in b if r["event"] == event]
        assert rows_a == rows_b, event
    assert [r["step"] for r in a if r["event"] == "eval"] == [3, 6, 8]
    assert resumed["final"] == fresh["final"]


def test_a_pause_after_the_warmup_does_not(make_cfg, tmp_path):
    # the same without a warmup: step 2's learning rate already decays towards the planned
    # budget (16 steps), so the re-planned run (8 steps) differs from a fresh one
    common = [*STRATEGIES["concat_chunk"], "schedule.warmup_tokens=0"]
    _run(make_cfg, tmp_path, "fresh", 8 * STEP, 3 * STEP, *common)
    _run(make_cfg, tmp_path, "replan", 16 * STEP, 8 * STEP, *common, stop_at_step=2)
    _run(make_cfg, tmp_path, "replan", 8 * STEP, 3 * STEP, *common, resume=True)
    lr = {
        name: [r["lr"] for r in read_metrics(tmp_path / name, "train")]
        for name in ("fresh", "replan")
    }
    assert lr["fresh"][0] == lr["replan"][0] and lr["fresh"][1] < lr["replan"][1]
    assert lr["fresh"][2:] == lr["replan"][2:]  # after the resume: the same schedule
    assert not _same_weights(tmp_path / "fresh", tmp_path / "replan")
