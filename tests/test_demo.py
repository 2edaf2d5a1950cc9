"""`lengthwise demo --quick` end to end (as `make demo` runs it, with tiny budgets), and the
demo's budget planning."""

import dataclasses
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
    (out / "text_concat_chunk" / "config.yaml").write_text("model: {}\n")  # a run's marker
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


# ---------------------------------------------------------------------- re-planning (pure)

SPEED = demo.Speed(text=4096.0, task=30_000.0)
RUN = 98_304  # 24 steps of 4,096: (98,304 + 32,768 eval tokens) / (4,096 x 0.9) = 35.56 s
PLANNED = 131_072 / (4096 * 0.9)


def test_planned_text_seconds_is_training_at_safety_plus_evals():
    assert demo.TEXT_EVAL_COST == 32_768  # 3 evals x 2 sets x 16,384 tokens / 3
    assert demo.planned_text_seconds(RUN, SPEED.text) == pytest.approx(35.5556, abs=1e-4)
    assert demo.planned_text_seconds(RUN, SPEED.text) == pytest.approx(PLANNED)


def test_replan_at_the_pace_measured_when_the_text_runs_are_slow():
    # the first text run took 4x its planned time (a busy machine)
    plan = demo.replan("text_concat_chunk", SPEED, [(RUN, 4 * PLANNED)])
    assert plan.replanned
    assert plan.task_speed == pytest.approx(7_500.0)  # 30,000 x 0.25
    assert plan.reserve_s == pytest.approx(120.0)  # 30 s / 0.25
    assert plan.note.startswith(
        "re-planned after text_concat_chunk: measured 691 tok/s vs probe 4,096 "
        "(the text runs took 4.00x their planned time); task run at 7,500 tok/s instead of "
        "30,000, 120s kept for the closing stages"
    )
    # after the second run (on plan this time) the pace is that of both: 71.1 s / 177.8 s = 0.4
    plan = demo.replan("text_decomposition", SPEED, [(RUN, 4 * PLANNED), (RUN, PLANNED)])
    assert plan.replanned and plan.task_speed == pytest.approx(12_000.0)
    assert plan.reserve_s == pytest.approx(75.0)


def test_a_run_within_the_tolerance_keeps_the_plan():
    plan = demo.replan("text_concat_chunk", SPEED, [(RUN, 38.0)])  # 1.07x the plan
    assert not plan.replanned
    assert (plan.task_speed, plan.reserve_s) == (SPEED.task, demo.TASK_RESERVE_S)
    assert plan.note == (
        "plan kept after text_concat_chunk: measured 2,587 tok/s vs probe 4,096 "
        "(the text runs took 1.07x their planned time)"
    )
    plan = demo.replan("text_concat_chunk", SPEED, [(RUN, 40.0)])  # 1.125x: re-planned
    assert plan.replanned and plan.task_speed == pytest.approx(30_000 * PLANNED / 40.0)


def test_task_tokens_fill_the_time_left_at_the_planned_speed():
    budget = dataclasses.replace(
        demo.QUICK,
        task_tokens_per_step=1024,
        task_evals=12,
        task_tokens_min=16 * 1024,
        task_tokens_max=8_388_608,
    )
    # probe's plan: (300 - 30) s x 30,000 x 0.9 / 1.15 = 6,339,130 -> 515 x 12,288 = 6,328,320
    assert demo.task_tokens(300.0, demo.Plan(30_000.0, 30.0), budget) == 6_328_320
    # re-planned: (300 - 120) s x 7,500 x 0.9 / 1.15 = 1,056,522 -> 85 x 12,288 = 1,044,480
    assert demo.task_tokens(300.0, demo.Plan(7_500.0, 120.0), budget) == 1_044_480
    # no time left: the minimum; plenty: the maximum
    assert demo.task_tokens(100.0, demo.Plan(7_500.0, 120.0), budget) == 16 * 1024
    assert demo.task_tokens(3600.0, demo.Plan(30_000.0, 30.0), budget) == 8_388_608
