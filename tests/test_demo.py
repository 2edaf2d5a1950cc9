"""`lengthwise demo --quick` end to end (as `make demo` runs it, with tiny budgets), and the
demo's budget planning."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lengthwise import demo
from lengthwise.cli import main

ROOT = Path(__file__).resolve().parents[1]
TEXT_RUNS = ("text_concat_chunk", "text_decomposition")


def _records(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    # a previous demo's run (with a checkpoint, which the trainer would refuse to start on) and
    # a file of the user's: the first is replaced, the second kept
    stale = out / "text_concat_chunk" / "checkpoints" / "step-00000007"
    stale.mkdir(parents=True)
    (stale / "manifest.json").write_text("{}")
    (out / "notes.txt").write_text("mine")

    proc = subprocess.run(
        [sys.executable, "-m", "lengthwise", "demo", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "notes.txt").read_text() == "mine"
    assert not stale.exists()

    for name in (*TEXT_RUNS, "task_addition"):
        run = out / name
        summary = json.loads((run / "summary.json").read_text())
        assert summary["tokens"] > 0 and summary["stop_reason"] in ("completed", "early_stopping")
        assert (run / "export" / "model.safetensors").is_file()
        assert name in proc.stdout  # the summary table has a line per run

    strategies = {}
    for name in TEXT_RUNS:
        run = out / name
        evals = _records(run, "eval")
        assert evals and all({"val/loss", "ood/loss"} <= e.keys() for e in evals)
        lengths = json.loads((run / "eval" / "lengths.json").read_text())
        text = lengths["text"]
        assert text["split"] == "val" and text["train_len"] == 256
        assert len(text["band_loss"]) == 3  # 0-1x, 1x-2x, 2x-4x
        assert len(text["per_position_loss"]) > 256  # beyond the training length
        cfg = (run / "config.yaml").read_text()
        strategies[name] = cfg
    assert "strategy: concat_chunk" in strategies["text_concat_chunk"]
    assert "strategy: decomposition" in strategies["text_decomposition"]
    assert "name: grow_p2" in strategies["text_decomposition"]
    # the same token budget for both strategies
    tokens = {json.loads((out / n / "summary.json").read_text())["tokens"] for n in TEXT_RUNS}
    assert len(tokens) == 1

    task = out / "task_addition"
    evals = _records(task, "eval")
    assert evals and all(
        {"add_1x/acc", "add_2x/acc", "add_4x/acc", "ood_mean/acc"} <= e.keys() for e in evals
    )
    rows = json.loads((task / "eval" / "lengths.json").read_text())["task"]["rows"]
    assert [(r["multiple"], r["length"]) for r in rows] == [(1.0, 8), (2.0, 16), (4.0, 32)]

    if importlib.util.find_spec("lengthwise.report") is not None:
        html = out / "report.html"
        assert html.is_file() and html.stat().st_size > 1000
        assert f"report: {html}" in proc.stdout
    else:
        assert "report: skipped" in proc.stdout


def test_budget_plan_fits_ten_minutes_and_builds_valid_configs(tmp_path):
    """At the speeds of the demo models on 2 cores, the plan gives each text run ~0.5M tokens,
    and the configs it makes validate."""
    d = demo.Demo(tmp_path, budget_s=600.0, quick=False, root=demo.find_root())
    budget = demo.plan_budget(d, demo.Speed(text=3000.0, task=40000.0))
    assert 300_000 <= budget.text_tokens <= 700_000
    assert budget.text_tokens % budget.text_tokens_per_step == 0
    cfg = demo.demo_config(d.root, demo.TEXT_CONFIG, demo.text_overrides(budget, tmp_path / "r"))
    assert cfg.train.total_tokens == budget.text_tokens and cfg.train.device == "cpu"
    assert [s.name for s in cfg.eval.sets] == ["val", "ood"]
    assert cfg.data.out_dir.is_absolute()
    base = demo.demo_config(d.root, demo.TASK_CONFIG, [])
    task_over = demo.task_overrides(budget, tmp_path / "t", 1_048_576, base)
    task = demo.demo_config(d.root, demo.TASK_CONFIG, task_over)
    assert task.monitor.early_stopping.enabled and task.monitor.restore_best
    task_sets = [s for s in task.eval.sets if s.kind == "task"]
    assert [s.n for s in task_sets] == [budget.task_eval_n] * 3
    assert [s.lengths for s in task_sets] == [[1, 8], [9, 16], [17, 32]]
    assert [s.tag for s in task_sets] == ["id", "ood", "ood"]
    assert task.model.position == "relative_bias" and task.model.window == 2  # coupling recipe
    assert task.data.splits["train"].format == "coupled"


def test_a_slow_machine_still_gets_a_minimum_budget(tmp_path):
    d = demo.Demo(tmp_path, budget_s=60.0, quick=False, root=demo.find_root())
    budget = demo.plan_budget(d, demo.Speed(text=100.0, task=1000.0))
    assert budget.text_tokens == demo.TEXT_MIN_TOKENS


@pytest.mark.parametrize("value", ["0", "-3", "nan"])
def test_bad_budget_is_a_one_line_error(value, tmp_path, capsys):
    assert main(["demo", "--budget-minutes", value, "--out", str(tmp_path)]) == 2
    assert "--budget-minutes" in capsys.readouterr().err
