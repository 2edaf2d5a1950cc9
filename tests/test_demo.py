"""`lengthwise demo --quick` end to end (as `make demo` runs it, with tiny budgets), the demo's
budget planning and its re-planning from the speed measured, and a model of the whole demo on a
machine slower than its probe said."""

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lengthwise import demo
from lengthwise.cli import main
from lengthwise.data.store import prepare
from lengthwise.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
TEXT_RUNS = ("text_concat_chunk", "text_decomposition")


def _records(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


@pytest.fixture(scope="module")
def text_store() -> None:
    """configs/demo_text.yaml's stores in ROOT/data (where the demo keeps them; a no-op once
    built, e.g. by the end-to-end test)."""
    prepare(demo.demo_config(ROOT, demo.TEXT_CONFIG, []).data, progress=False)


@pytest.mark.slow  # 27-44 s on a fresh 2-core clone; its pieces (plan, pause, recalibrate,
# resume, budgets) have fast tests below, and `make demo` runs the whole job
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


def test_budget_plan_fits_ten_minutes_and_builds_valid_configs(text_store, tmp_path):
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


def test_a_slow_machine_still_gets_a_minimum_budget(text_store, tmp_path):
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


# ---------------------------------------------------------------------- calibration (pure)

STEP = demo.TEXT_TOKENS_PER_STEP  # 4,096; budgets come in eval intervals of 3 steps = 12,288
EPOCH = 2_000_000  # tokens in a text training split (for grow_p2's cycles)
FULL = dataclasses.replace(  # a full demo's budget as plan_budget builds it (store-free)
    demo.QUICK,
    text_max_len=1024,
    text_tokens_per_step=STEP,
    text_tokens=602_112,  # the probe's plan, 49 intervals
    text_tokens_max=4_194_304,
    text_cycles=demo.grow_p2_cycles(EPOCH, 602_112),
    text_warmup=57_344,  # 14 steps: 10% of the plan
    text_eval_every=602_112 // 3,
    text_eval_tokens=demo.TEXT_EVAL_TOKENS,
    text_epoch=EPOCH,
    text_end_s=389.4,
)


def test_text_tokens_for_fits_the_runs_and_their_evals_in_the_seconds():
    # one run, nothing done: 100 s x 4,096 x 0.9 - 32,768 = 335,872 -> 27 x 12,288 = 331,776
    assert demo.text_tokens_for(100.0, 4096.0, 1, 0, 4_194_304) == 331_776
    # two runs, 6 steps of the first done: (368,640 + 24,576 - 65,536) / 2 = 163,840
    # -> 13 x 12,288 = 159,744
    assert demo.text_tokens_for(100.0, 4096.0, 2, 6 * STEP, 4_194_304) == 159_744
    assert demo.text_tokens_for(10.0, 4096.0, 2, 6 * STEP, 4_194_304) == demo.TEXT_MIN_TOKENS
    assert demo.text_tokens_for(1e6, 4096.0, 2, 6 * STEP, 4_194_304) == 4_194_304


def test_grow_p2_cycles_cover_two_per_run():
    assert demo.grow_p2_cycles(2_000_000, 602_112) == 7  # 2,000,000 / 301,056 = 6.64
    assert demo.grow_p2_cycles(2_000_000, 110_592) == 36  # 2,000,000 / 55,296 = 36.2
    assert demo.grow_p2_cycles(100_000, 4_194_304) == 1


def test_steady_speed_leaves_the_first_step_out():
    # step 1 took 3 s (start-up), the next five 1 s each: 20,480 tokens in 5 s
    records = [{"step": i, "tokens": i * STEP, "time": 2.0 + i} for i in range(1, 7)]
    assert demo.steady_speed(records) == 4096.0
    with pytest.raises(ValueError, match="2 train records"):
        demo.steady_speed(records[:1])


def test_calibrate_replans_both_text_runs_from_the_speed_measured():
    # the audit's machine: probe 3,793 tok/s, training at 903 (4.2x slower); 334.6 s left for
    # the text runs: (334.6 x 903 x 0.9 + 24,576 - 65,536) / 2 = 115,483 -> 9 x 12,288
    budget, note = demo.calibrate(FULL, "text_concat_chunk", 903.0, 3793.0, 334.6)
    assert budget.text_tokens == 110_592
    assert budget.text_eval_every == 36_864
    assert budget.text_cycles == 36
    assert budget.text_warmup == FULL.text_warmup  # the paused run is inside it: unchanged
    assert note == (
        "calibrated after 6 steps of text_concat_chunk: 903 tok/s vs probe 3,793; "
        "text runs re-planned from 602,112 to 110,592 tokens each"
    )
    # a machine as fast as the probe said keeps its plan: (x + 24,576 - 65,536) / 2 = 602,112
    seconds = (2 * 602_112 + 65_536 - 24_576) / (3793.0 * 0.9)
    budget, note = demo.calibrate(FULL, "text_concat_chunk", 3793.0, 3793.0, seconds + 1)
    assert budget == FULL
    assert note.endswith("text runs kept at 602,112 tokens each")
    # no time left: the minimum, and the line says so
    budget, note = demo.calibrate(FULL, "text_concat_chunk", 903.0, 3793.0, 10.0)
    assert budget.text_tokens == demo.TEXT_MIN_TOKENS == 98_304
    assert note.endswith(
        "from 602,112 to 98,304 tokens each (the minimum: the time left allows fewer)"
    )


def test_the_pause_comes_inside_the_warmup_and_before_the_first_eval():
    """What makes the resumed first run equal to one planned with the new budget
    (tests/train/test_resume_replan.py): every step before the pause has a learning rate
    that does not depend on the budget, and no budget's first eval comes before the pause."""
    paused = demo.CALIBRATION_STEPS * STEP  # 24,576 tokens
    assert paused < demo.TEXT_MIN_TOKENS // demo.TEXT_EVALS  # 32,768: the smallest interval
    assert demo.text_warmup(602_112) == 57_344  # 10%: 60,211 -> 14 steps
    assert demo.text_warmup(demo.TEXT_MIN_TOKENS) == paused  # 10% is 2 steps: 6 at least
    assert demo.text_warmup(4_194_304) == 417_792


def test_the_paused_run_resumes_with_the_same_data_batching_and_model(tmp_path):
    """The trainer refuses a resume that changes `data`, `batching` or `model`
    (check_resumable): the first text run's config may change only in its budget and eval
    interval; grow_p2's cycles, which follow the budget, go to the decomposition run alone."""
    after, _ = demo.calibrate(FULL, "text_concat_chunk", 903.0, 3793.0, 334.6)
    (name, batching), (_, decomposition) = demo.TEXT_STRATEGIES
    planned, replanned = (
        demo.text_config(ROOT, b, tmp_path / name, batching).model_dump(mode="json")
        for b in (FULL, after)
    )
    for section in ("data", "batching", "model", "schedule"):
        assert planned[section] == replanned[section], section
    assert (planned["train"]["total_tokens"], replanned["train"]["total_tokens"]) == (
        602_112,
        110_592,
    )
    assert (planned["eval"]["every_tokens"], replanned["eval"]["every_tokens"]) == (
        200_704,
        36_864,
    )
    assert planned["schedule"]["warmup_tokens"] == 57_344
    assert planned["train"]["log_every_steps"] == 1  # steady_speed reads every step
    grow = demo.text_config(ROOT, after, tmp_path / "d", decomposition)
    assert grow.batching.curriculum.name == "grow_p2" and grow.batching.curriculum.cycles == 36


def test_the_first_text_run_pauses_recalibrates_and_resumes(
    text_store, single_thread, tmp_path, monkeypatch
):
    """The wiring of train_text on the demo's model, scaled down: steps of 512 tokens, a
    plan of 12 steps, the pause after 2, and no time left, so the re-plan is the minimum of 9
    steps (evals every 3, after the pause). The resumed run is accepted by the trainer and
    trains to the new budget, with one train record per step."""
    for name, value in (
        ("TEXT_TOKENS_PER_STEP", 512),
        ("TEXT_MIN_TOKENS", 9 * 512),
        ("CALIBRATION_STEPS", 2),
        ("TEXT_EVAL_COST", 0.0),
    ):
        monkeypatch.setattr(demo, name, value)
    budget = dataclasses.replace(
        FULL,
        text_max_len=128,
        text_tokens_per_step=512,
        text_tokens=12 * 512,
        text_warmup=4 * 512,
        text_eval_every=4 * 512,
        text_eval_tokens=256,
        text_end_s=0.0,
    )
    d = demo.Demo(tmp_path, budget_s=600.0, quick=False, root=ROOT)
    (name, batching), _ = demo.TEXT_STRATEGIES
    run, after, note = demo.train_text(d, budget, name, batching, probe=3793.0)
    assert note.startswith("calibrated after 2 steps of text_concat_chunk: ")
    assert note.endswith(
        "; text runs re-planned from 6,144 to 4,608 tokens each (the minimum: the time left "
        "allows fewer)"
    )
    assert (after.text_tokens, after.text_eval_every) == (4608, 1536)
    assert run.summary["stop_reason"] == "completed"
    assert (run.summary["steps"], run.summary["tokens"]) == (9, 4608)
    records = _records(run.run_dir, "train")
    assert [r["step"] for r in records] == list(range(1, 10))
    assert [r["step"] for r in _records(run.run_dir, "eval")] == [3, 6, 9]
    assert RunDir(run.run_dir).config().train.total_tokens == 4608


# ---------------------------------------------------------------------- a model of the whole demo

# Stage costs on a quiet machine (seconds), all slowed by the same factor after the probe: the
# audit's case (probe 3,793 tok/s, then other work on both cores). Training runs at the probe's
# speed / slowdown; each train() call pays TRAIN_START_S (model, loader, evaluator, export).
PROBE = demo.Speed(text=3793.0, task=29_000.0)
BEFORE_PLAN_S = 15.0  # prepare (stores up to date) and the probe
TRAIN_START_S = 3.0
TEXT_SUITE_S, TASK_SUITE_S, REPORT_S = 6.0, 10.0, 15.0  # the demo's tickers' expectations
TASK_BUDGET = dataclasses.replace(
    demo.QUICK,
    task_tokens_per_step=512,
    task_tokens_min=16 * 512,
    task_tokens_max=8_388_608,
    task_evals=12,
)


def simulate(slowdown: float, calibrated: bool, budget_s: float = 600.0) -> float:
    """The demo's clock at its end, as a fraction of the budget: the planning functions of
    run_demo on the stage costs above. `calibrated=False` is the demo before calibration (both
    text runs' tokens fixed from the probe), with the same re-planning at run boundaries."""
    p, cap = slowdown, FULL.text_tokens_max
    text_speed, task_speed = PROBE.text / p, PROBE.task / p
    t = BEFORE_PLAN_S
    left = budget_s - t
    tokens = demo.text_tokens_for(demo.TEXT_SHARE * left, PROBE.text, 1, 0, cap)
    text_end = t + 2 * demo.TEXT_SHARE * left
    start, done = t, 0
    if calibrated:  # the first run's first steps, then the re-plan
        done = demo.CALIBRATION_STEPS * STEP
        t += TRAIN_START_S * p + done / text_speed
        tokens = demo.text_tokens_for(text_end - t, text_speed, 2, done, cap)
    t += TRAIN_START_S * p + (tokens - done + demo.TEXT_EVAL_COST) / text_speed
    runs = [(tokens, t - start)]
    t += TRAIN_START_S * p + (tokens + demo.TEXT_EVAL_COST) / text_speed
    runs.append((tokens, t - start - runs[0][1]))
    plan = demo.replan("text_decomposition", PROBE, runs)
    t += 2 * TEXT_SUITE_S * p
    task = demo.task_tokens(budget_s - t, plan, TASK_BUDGET)
    t += TRAIN_START_S * p + task * demo.TASK_EVAL_OVERHEAD / task_speed
    t += (TASK_SUITE_S + REPORT_S) * p
    return t / budget_s


@pytest.mark.parametrize("slowdown", [1.0, 1.3, 2.0, 4.2])
def test_a_busy_machine_keeps_the_budget(slowdown):
    """With the text runs planned from the probe, the audit's 4.2x slower machine took ~2.7x
    the budget; calibrated on the first run's first steps, the demo ends within it."""
    assert simulate(slowdown, calibrated=True) <= 1.0
    if slowdown == 4.2:
        assert simulate(slowdown, calibrated=False) > 2.5
