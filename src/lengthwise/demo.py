"""`lengthwise demo`: the main job on the bundled data, end to end, on CPU, within a time budget.

    lengthwise demo [--quick] [--out runs/demo] [--budget-minutes 10]

One function per stage, called in order by `run_demo`:

1. `prepare_data`   tokenize the bundled corpus (configs/demo_text.yaml: Linux kernel docs, and
                    PostgreSQL docs as an out-of-distribution domain) and the addition task
                    (configs/demo_task.yaml); a no-op when the stores are up to date.
2. `measure_speed`  a few training steps of each demo model on random tokens: tokens/s here.
3. `plan_budget`    token budgets that fit the time budget (`--quick`: fixed tiny budgets).
4. `train_text`     twice, the same model (TEXT_MODEL: the config's, smaller) and token budget:
                    `concat_chunk` (fixed-length chunks across documents) and `decomposition`
                    + `grow_p2` (Dataset Decomposition);
                    eval sets val (held-out kernel docs, id) and ood (PostgreSQL docs).
                    The probe can be far off (other work on the cores: the audit measured 3,793
                    tokens/s, then trained at 600-1,000), so the first run pauses after
                    CALIBRATION_STEPS steps, inside its learning-rate warmup, where the schedule
                    does not depend on the budget yet; `calibrate` re-plans both runs' tokens
                    from the speed measured there and the run resumes with the new budget: it
                    trains exactly as a run planned with that budget from the start, and the
                    second run gets the same tokens. After each run, `replan` compares the text
                    runs' time with the probe's plan and, when the machine is slower, plans the
                    task run and the closing stages at the pace measured. The summary says what
                    was re-planned.
5. `text_lengths`   per-position loss out to 4x the training length (`eval --suite lengths`).
6. `train_task`     addition on 1-8 digit numbers with position coupling (configs/demo_task.yaml,
                    E2's best recipe), tested on 9-16 (2x) and 17-32 (4x) digit numbers during
                    training: OOD monitor, early stopping, best checkpoint restored. Its token
                    budget is what time is left.
7. `task_lengths`   accuracy at exactly 8, 16 and 32 digits (`eval --suite lengths`).
8. `write_report`   OUT/report.html (`lengthwise report` on the three runs).
9. `summary_table`  one line per run, printed at the end.

Runs are written to OUT/text_concat_chunk, OUT/text_decomposition and OUT/task_addition; running
the demo again with the same OUT replaces them (and the report, at the end). A folder under one
of those names that is not a run (no config.yaml) is never deleted: the demo refuses to start.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from lengthwise.config import Config, load_config
from lengthwise.errors import UserError
from lengthwise.io import check_folder_path, check_replaceable
from lengthwise.rundir import RunDir

TEXT_CONFIG = "configs/demo_text.yaml"
TASK_CONFIG = "configs/demo_task.yaml"
TEXT_STRATEGIES = (  # run name, batching overrides: the same model, data and token budget
    ("text_concat_chunk", ["batching.strategy=concat_chunk", "batching.curriculum.name=none"]),
    ("text_decomposition", ["batching.strategy=decomposition", "batching.curriculum.name=grow_p2"]),
)
# The text runs train a smaller model than configs/demo_text.yaml's 4 x 256: 2 x 128 (~1.4M
# parameters, most of them the tied 8192-token embedding) runs 2.9x the tokens/s on one CPU
# thread (5.6k vs 1.9k, measured 2026-11-29), so each run gets ~3x the tokens in the same time
# (4 x 256 stopped at loss ~7 after ~280k tokens, where the two strategies' order flipped
# between runs).
TEXT_MODEL = ["model.n_layer=2", "model.d_model=128"]
TASK_RUN = "task_addition"
RUN_NAMES = (*(name for name, _ in TEXT_STRATEGIES), TASK_RUN)
TEXT_EVAL_SETS = [  # the held-out kernel docs (id) and the PostgreSQL docs (ood)
    {"name": "val", "kind": "text", "split": "val", "tag": "id"},
    {"name": "ood", "kind": "text", "split": "ood", "tag": "ood"},
]
MULTIPLES = [1.0, 2.0, 4.0]
STAGES = 6 + 2 * len(TEXT_STRATEGIES)  # stage headers printed: prepare ... report


# ---------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class Budget:
    """Everything the time budget decides. Tokens are training slots (rows x length), the unit
    of `train.total_tokens`."""

    text_max_len: int
    text_tokens_per_step: int
    text_tokens: int  # per text run (both runs get the same)
    text_tokens_max: int  # configs/demo_text.yaml's train.total_tokens
    text_cycles: int  # grow_p2 cycles per epoch: the run covers TEXT_CYCLES_PER_RUN of them
    text_warmup: int  # fixed before the first text run starts: `calibrate` never changes it
    text_eval_every: int
    text_eval_tokens: int  # per eval set and eval
    text_suite_docs: int
    task_tokens_per_step: int
    task_tokens_min: int
    task_tokens_max: int
    task_evals: int  # evals over the task run (early stopping counts them)
    task_eval_n: int  # items per task eval set in training
    task_suite_n: int  # items per length in the suite
    reason: str
    text_epoch: int = 0  # tokens in the text training split (grow_p2 cycles are per epoch)
    text_end_s: float = 0.0  # on the demo's clock: when both text runs should have ended


QUICK = Budget(
    text_max_len=256,
    text_tokens_per_step=2048,
    text_tokens=4 * 2048,
    text_tokens_max=4 * 2048,
    text_cycles=64,
    text_warmup=2048,
    text_eval_every=2 * 2048,
    text_eval_tokens=2048,
    text_suite_docs=2,
    task_tokens_per_step=1024,
    task_tokens_min=8 * 1024,
    task_tokens_max=8 * 1024,
    task_evals=2,
    task_eval_n=8,
    task_suite_n=8,
    reason="--quick: fixed tiny budgets (a smoke test of every stage, not a result)",
)

# Full demo. Each text run gets TEXT_SHARE of the time left after preparing and measuring, at
# the measured speed discounted by SAFETY (a warm-up on random tokens is a little optimistic, and
# the machine may be shared), less what its evals cost. The task run gets the time left when it
# starts, less TASK_RESERVE_S for the closing stages; its evals add ~TASK_EVAL_OVERHEAD.
TEXT_SHARE = 0.32
SAFETY = 0.9
TEXT_TOKENS_PER_STEP = 4096  # ~120 steps in the budget (16384, the config's, gives only ~30)
TEXT_CYCLES_PER_RUN = 2  # grow_p2 cycles within the run (the config's 8 per epoch assume epochs)
TEXT_EVALS = 3  # at 1/3, 2/3 and the end of each text run
TEXT_EVAL_TOKENS = 16384  # per eval set and eval: 16 windows of 1024 tokens
TEXT_MIN_TOKENS = 24 * TEXT_TOKENS_PER_STEP
TEXT_WARMUP_SHARE = 0.1  # of the probe's plan; at least CALIBRATION_STEPS steps
# The first text run is timed over its first CALIBRATION_STEPS steps less the first (which pays
# the start-up: allocations, kernel warm-up), ~5 s on a quiet machine, then re-planned. The pause
# must come inside the warmup, where the learning rate does not depend on the budget
# (optim.lr_at), and before the first eval of the smallest budget (TEXT_MIN_TOKENS / TEXT_EVALS
# = 8 steps), so that the resumed run trains and evaluates as one planned with the new budget.
CALIBRATION_STEPS = 6
# an eval reads 2 sets x TEXT_EVAL_TOKENS, forward only: ~1/3 of the cost of training on them
TEXT_EVAL_COST = TEXT_EVALS * 2 * TEXT_EVAL_TOKENS / 3  # in training tokens, per text run
TASK_RESERVE_S = 30.0  # the task's lengths suite, the report and the summary
TASK_EVAL_OVERHEAD = 1.15
# Re-planning: the text runs may take up to this factor of their planned time before what
# remains is planned at the measured pace (a quiet machine stays within it, and keeps its plan)
REPLAN_TOLERANCE = 1.1


@dataclass
class Speed:
    text: float  # training tokens/s of the text model at its longest length
    task: float  # of the task model


@dataclass
class RunResult:
    name: str
    what: str
    run_dir: Path
    summary: dict[str, Any]
    suite: dict[str, Any] = field(default_factory=dict)
    suite_table: str = ""
    seconds: float = 0.0  # on the demo's clock: training, model build and export


@dataclass(frozen=True)
class Plan:
    """What the stages after the text runs are planned with: the task model's speed and the
    seconds kept for the closing stages; `note` says how the text runs compared with their plan
    and `replanned` whether that changed anything."""

    task_speed: float
    reserve_s: float
    note: str = ""
    replanned: bool = False


# ---------------------------------------------------------------------- console and progress


class Demo:
    """The demo's context: output folder, clock and budget, console lines."""

    def __init__(self, out: Path, budget_s: float, quick: bool, root: Path) -> None:
        self.out, self.budget_s, self.quick, self.root = out, budget_s, quick, root
        self.start = time.time()
        self.stage = 0

    def elapsed(self) -> float:
        return time.time() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def say(self, text: str) -> None:
        tqdm.write(text, file=sys.stdout)
        sys.stdout.flush()

    def begin(self, title: str) -> None:
        self.stage += 1
        clock = f"{_mmss(self.elapsed())}/{_mmss(self.budget_s)}"
        self.say(f"\n[{self.stage}/{STAGES} {clock}] {title}")

    @contextmanager
    def ticker(self, desc: str, expect_s: float) -> Iterator[None]:
        """A progress bar over the expected seconds of a step that reports no progress itself
        (evaluation suites, the report), refreshed once a second."""
        interactive = sys.stderr.isatty()
        bar = tqdm(
            total=max(round(expect_s), 1),
            desc=desc,
            unit="s",
            bar_format="{desc}: {bar} {elapsed} (expected ~{total}s)",
            mininterval=1.0 if interactive else 30.0,
            dynamic_ncols=True,
        )
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(1.0):
                bar.n = min(round(time.time() - bar.start_t), bar.total - 1)
                bar.refresh()

        thread = threading.Thread(target=tick, daemon=True)
        if interactive:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if interactive:
                thread.join()
            bar.n = bar.total
            bar.close()


def _mmss(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------------- configs


def find_root() -> Path:
    """The checkout holding configs/ and corpus/: the current directory, else the one this
    package was installed (editable) from."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / TEXT_CONFIG).is_file() and (root / TASK_CONFIG).is_file():
            return root
    raise UserError(
        f"demo: {TEXT_CONFIG} and {TASK_CONFIG} not found; run it from the lengthwise "
        "repository (it trains on the bundled corpus/)"
    )


def demo_config(root: Path, name: str, overrides: list[str]) -> Config:
    """A bundled config plus overrides, with its relative data paths taken from `root` (so the
    demo works from any directory and shares data/ with `lengthwise prepare CONFIG`)."""
    path = root / name
    cfg = load_config(path, overrides)
    rebased = []
    if not cfg.data.out_dir.is_absolute():
        rebased.append(f"data.out_dir={root / cfg.data.out_dir}")
    for split, src in cfg.data.splits.items():
        if src.path is not None and not src.path.is_absolute():
            rebased.append(f"data.splits.{split}.path={root / src.path}")
    return load_config(path, [*rebased, *overrides]) if rebased else cfg


def _round_to(n: float, step: int, at_least: int = 1) -> int:
    return max(int(n) // step, at_least) * step


def text_overrides(budget: Budget, run_dir: Path) -> list[str]:
    """What both text runs share. Nothing in `data`, `batching` or `model` depends on the token
    budget (the trainer refuses a resume that changes them); grow_p2's cycles, which do, are
    added by `text_config` to the run that reads them."""
    b = budget
    return [
        *TEXT_MODEL,
        f"train.out_dir={run_dir}",
        "train.device=cpu",
        f"train.total_tokens={b.text_tokens}",
        "train.checkpoint_every_tokens=0",  # the end only (and `best` by val/loss)
        "train.log_every_steps=1",  # `calibrate` times steps 2 to CALIBRATION_STEPS
        f"batching.max_len={b.text_max_len}",
        f"batching.tokens_per_step={b.text_tokens_per_step}",
        f"schedule.warmup_tokens={b.text_warmup}",
        f"eval.every_tokens={b.text_eval_every}",
        "eval.sets=" + json.dumps([s | {"tokens": b.text_eval_tokens} for s in TEXT_EVAL_SETS]),
    ]


def text_config(root: Path, budget: Budget, run_dir: Path, batching: list[str]) -> Config:
    """A text run's config. `batching.curriculum.cycles` is set from the budget only for
    `decomposition` (the only strategy that reads it): concat_chunk, the run that is paused and
    re-planned, keeps the config's value, so its `batching` section is the same before and after
    `calibrate`."""
    overrides = [*text_overrides(budget, run_dir), *batching]
    cfg = demo_config(root, TEXT_CONFIG, overrides)
    if cfg.batching.strategy != "decomposition":
        return cfg
    return demo_config(
        root, TEXT_CONFIG, [*overrides, f"batching.curriculum.cycles={budget.text_cycles}"]
    )


def task_overrides(budget: Budget, run_dir: Path, tokens: int, base: Config) -> list[str]:
    b = budget
    sets = [  # fewer items per task set and fewer tokens per text set than a standalone run
        s.model_dump(mode="json")
        | (
            {"n": b.task_eval_n}
            if s.kind == "task"
            else {"tokens": min(s.tokens, b.text_eval_tokens)}
        )
        for s in base.eval.sets
    ]
    return [
        f"train.out_dir={run_dir}",
        "train.device=cpu",
        f"train.total_tokens={tokens}",
        "train.checkpoint_every_tokens=0",
        f"batching.tokens_per_step={b.task_tokens_per_step}",
        f"schedule.warmup_tokens={_round_to(tokens / 20, b.task_tokens_per_step)}",
        f"eval.every_tokens={_round_to(tokens / b.task_evals, b.task_tokens_per_step)}",
        "eval.sets=" + json.dumps(sets),
    ]


# ---------------------------------------------------------------------- stages


def prepare_data(demo: Demo) -> None:
    """Stage 1: token stores for both bundled configs (idempotent)."""
    from lengthwise.data.store import prepare

    demo.begin("prepare: tokenize the bundled corpus and the addition task")
    for name in (TEXT_CONFIG, TASK_CONFIG):
        cfg = demo_config(demo.root, name, [])
        try:
            prepare(cfg.data, progress=True)
        except UserError as e:  # stores of the bundled data built by another version: rebuild
            demo.say(f"{e}: rebuilding the demo's stores from the bundled data")
            prepare(cfg.data, overwrite=True, progress=True)


def measure_speed(demo: Demo) -> Speed:
    """Stage 2: training tokens/s of the text model (at its longest length: the slowest shape)
    and of the task model, from a few optimizer steps on random tokens. With several CPU
    threads it also tries one: on a machine shared with other jobs, threads that wait for each
    other can make several threads many times slower than one (measured: 25x with 2 threads on
    2 busy cores), and the demo keeps whichever is faster now."""
    demo.begin("measure: training speed of the two demo models on this machine")
    text = demo_config(demo.root, TEXT_CONFIG, ["train.device=cpu", *TEXT_MODEL])
    task = demo_config(demo.root, TASK_CONFIG, ["train.device=cpu"])
    rows, T = (1, 256) if demo.quick else (2, 1024)
    tried = {}
    for threads in dict.fromkeys((torch.get_num_threads(), 1)):
        torch.set_num_threads(threads)
        tried[threads] = _tokens_per_s(text, rows=rows, T=T, steps=1 if demo.quick else 2)
    threads = max(tried, key=tried.__getitem__)
    torch.set_num_threads(threads)
    task_rows = task.batching.tokens_per_step // task.batching.max_len
    speed = Speed(
        text=tried[threads],
        task=_tokens_per_s(task, rows=task_rows, T=task.batching.max_len, steps=4),
    )
    demo.say(
        "text model "
        + ", ".join(f"{v:,.0f} tokens/s with {k} thread{'s' * (k > 1)}" for k, v in tried.items())
        + f": using {threads}; task model {speed.task:,.0f} tokens/s"
    )
    return speed


def _tokens_per_s(cfg: Config, rows: int, T: int, steps: int) -> float:
    from lengthwise.data.store import TokenStore
    from lengthwise.data.tokenizer import load_tokenizer
    from lengthwise.train.trainer import build_model

    tokenizer = load_tokenizer(cfg.data.out_dir / "tokenizer.json")
    model, cfg = build_model(cfg, TokenStore(cfg.data.out_dir / "train"), tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, cfg.model.vocab_size, (rows, T + 1), generator=gen)
    x, y = ids[:, :-1], ids[:, 1:]
    pos = torch.arange(T).expand(rows, T)
    model.train()
    times = []
    for _ in range(steps + 1):  # the first step warms up kernels and allocators
        t = time.perf_counter()
        loss = model(x, pos, None, y) / y.numel()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return rows * T / (sum(times[1:]) / steps)


def plan_budget(demo: Demo, speed: Speed) -> Budget:
    """Stage 3: token budgets. Each text run gets TEXT_SHARE of the time left, in tokens at the
    measured speed (discounted by SAFETY, less what its evals cost); the task run gets what is
    left after them (decided when it starts), between task_tokens_min and task_tokens_max."""
    demo.begin("plan: token budgets that fit the time budget")
    if demo.quick:
        demo.say(QUICK.reason)
        return QUICK
    from lengthwise.data.store import TokenStore

    text = demo_config(demo.root, TEXT_CONFIG, [])
    step = TEXT_TOKENS_PER_STEP
    left = demo.left()
    cap = text.train.total_tokens
    tokens = text_tokens_for(TEXT_SHARE * left, speed.text, runs=1, done=0, cap=cap)
    epoch = TokenStore(text.data.out_dir / "train").n_tokens
    cycles = grow_p2_cycles(epoch, tokens)
    warmup = text_warmup(tokens)
    task = demo_config(demo.root, TASK_CONFIG, [])
    budget = Budget(
        text_max_len=text.batching.max_len,
        text_tokens_per_step=step,
        text_tokens=tokens,
        text_tokens_max=cap,
        text_cycles=cycles,
        text_warmup=warmup,
        text_eval_every=tokens // TEXT_EVALS,
        text_eval_tokens=TEXT_EVAL_TOKENS,
        text_suite_docs=8,
        task_tokens_per_step=task.batching.tokens_per_step,
        task_tokens_min=16 * task.batching.tokens_per_step,
        task_tokens_max=task.train.total_tokens,
        task_evals=12,
        task_eval_n=100,
        task_suite_n=200,
        reason=(
            f"text runs: {left:.0f}s left x {TEXT_SHARE:.0%} each x {speed.text:,.0f} tokens/s x "
            f"{SAFETY} less evals = {tokens:,} tokens each ({tokens // step} steps of {step:,}); "
            f"grow_p2 with {cycles} cycles per epoch, so {TEXT_CYCLES_PER_RUN} in the run; "
            f"warmup {warmup:,} tokens; re-planned at the speed of the first run's first "
            f"{CALIBRATION_STEPS} steps"
        ),
        text_epoch=epoch,
        text_end_s=demo.elapsed() + 2 * TEXT_SHARE * left,
    )
    demo.say(budget.reason)
    rest = left * (1 - 2 * TEXT_SHARE) - TASK_RESERVE_S
    demo.say(
        f"task run: the time left when it starts (~{rest:.0f}s if the text runs keep to plan) "
        f"at {speed.task:,.0f} tokens/s, at most {budget.task_tokens_max:,} tokens"
    )
    return budget


def text_tokens_for(seconds: float, speed: float, runs: int, done: int, cap: int) -> int:
    """Tokens per text run such that `runs` runs, less the `done` tokens already trained, with
    their evals (TEXT_EVAL_COST each), take `seconds` at `speed` x SAFETY: in whole eval
    intervals (TEXT_EVALS steps), between TEXT_MIN_TOKENS and `cap`."""
    raw = (seconds * speed * SAFETY + done - runs * TEXT_EVAL_COST) / runs
    tokens = min(_round_to(raw, TEXT_TOKENS_PER_STEP * TEXT_EVALS), cap)
    return max(tokens, TEXT_MIN_TOKENS)


def text_warmup(tokens: int) -> int:
    """The text runs' warmup: TEXT_WARMUP_SHARE of the probe's plan, in whole steps, and at
    least CALIBRATION_STEPS steps, so that `calibrate`'s pause comes inside it."""
    step = TEXT_TOKENS_PER_STEP
    return max(_round_to(tokens * TEXT_WARMUP_SHARE, step), CALIBRATION_STEPS * step)


def grow_p2_cycles(epoch: int, tokens: int) -> int:
    """Cycles per epoch such that a run of `tokens` covers TEXT_CYCLES_PER_RUN of them."""
    return max(1, round(epoch / (tokens / TEXT_CYCLES_PER_RUN)))


def steady_speed(records: list[dict[str, Any]]) -> float:
    """Training tokens/s from per-step train records, the first left out: the first step pays
    the start-up (allocations, kernel warm-up)."""
    if len(records) < 2:
        raise ValueError(f"steady_speed: needs 2 train records or more, got {len(records)}")
    first, last = records[0], records[-1]
    return (last["tokens"] - first["tokens"]) / max(last["time"] - first["time"], 1e-9)


def calibrate(
    budget: Budget, run: str, measured: float, probe: float, seconds_left: float
) -> tuple[Budget, str]:
    """After the first text run's CALIBRATION_STEPS steps: both runs' tokens such that the rest
    of the first and all of the second, with their evals, take the `seconds_left` until
    `budget.text_end_s` at the `measured` speed (`text_tokens_for`). The eval interval and
    grow_p2's cycles follow the new budget; the warmup, which the paused run is inside, stays
    (so it is a larger share of a smaller budget). Returns the budget and the summary's line."""
    done = CALIBRATION_STEPS * budget.text_tokens_per_step
    tokens = text_tokens_for(seconds_left, measured, 2, done, budget.text_tokens_max)
    new = replace(
        budget,
        text_tokens=tokens,
        text_eval_every=tokens // TEXT_EVALS,
        text_cycles=grow_p2_cycles(budget.text_epoch, tokens),
    )
    said = f"calibrated after {CALIBRATION_STEPS} steps of {run}: {measured:,.0f} tok/s vs probe "
    said += f"{probe:,.0f}; "
    floor = " (the minimum: the time left allows fewer)" if tokens == TEXT_MIN_TOKENS else ""
    if tokens == budget.text_tokens:
        return new, said + f"text runs kept at {tokens:,} tokens each{floor}"
    change = f"re-planned from {budget.text_tokens:,} to {tokens:,} tokens each{floor}"
    return new, said + "text runs " + change


def planned_text_seconds(tokens: int, text_speed: float) -> float:
    """The time `plan_budget` gives a text run of `tokens` at the probe's `text_speed`:
    training at text_speed x SAFETY plus its evals."""
    return (tokens + TEXT_EVAL_COST) / (text_speed * SAFETY)


def replan(after: str, speed: Speed, done: list[tuple[int, float]]) -> Plan:
    """At a run boundary: compare the text runs so far, (tokens, seconds) each, with the time
    the plan gave them. Slower than REPLAN_TOLERANCE x the plan (other work on the cores: the
    audit measured a 3,793 tokens/s probe, then 600-1,000 in training), and what remains is
    planned at the pace measured: the task model at its probe speed x pace, the closing stages
    with TASK_RESERVE_S / pace. Within it, the probe's plan stands. (The second text run always
    gets the first's tokens: the comparison needs equal budgets.)"""
    tokens = sum(t for t, _ in done)
    seconds = max(sum(s for _, s in done), 1e-9)
    pace = sum(planned_text_seconds(t, speed.text) for t, _ in done) / seconds
    said = (
        f"after {after}: measured {tokens / seconds:,.0f} tok/s vs probe {speed.text:,.0f} "
        f"(the text runs took {1 / pace:.2f}x their planned time)"
    )
    if pace * REPLAN_TOLERANCE >= 1:
        return Plan(speed.task, TASK_RESERVE_S, f"plan kept {said}")
    task, reserve = speed.task * pace, TASK_RESERVE_S / pace
    return Plan(
        task,
        reserve,
        f"re-planned {said}; task run at {task:,.0f} tok/s instead of {speed.task:,.0f}, "
        f"{reserve:.0f}s kept for the closing stages",
        replanned=True,
    )


def task_tokens(left_s: float, plan: Plan, budget: Budget) -> int:
    """The task run's budget: training plus its evals (TASK_EVAL_OVERHEAD) in the seconds left
    less the closing stages' reserve, at the planned speed discounted by SAFETY, in whole eval
    intervals, between task_tokens_min and task_tokens_max."""
    tokens = (left_s - plan.reserve_s) * plan.task_speed * SAFETY / TASK_EVAL_OVERHEAD
    tokens = _round_to(tokens, budget.task_tokens_per_step * budget.task_evals)
    return min(max(tokens, budget.task_tokens_min), budget.task_tokens_max)


def train_text(
    demo: Demo, budget: Budget, name: str, batching: list[str], probe: float | None = None
) -> tuple[RunResult, Budget, str]:
    """Stage 4 (twice): the demo text model for `budget.text_tokens` tokens with one batching
    strategy, evaluated on val (id) and ood (PostgreSQL). With `probe` (the probe's text speed:
    the first run of a full demo) the run pauses after CALIBRATION_STEPS steps, `calibrate`
    re-plans the text budget from the speed measured, and the run resumes with it. Returns the
    run, the budget it trained with (the second run's) and the calibration's line ("" without)."""
    from lengthwise.train.trainer import train

    run_dir = demo.out / name
    cfg = text_config(demo.root, budget, run_dir, batching)
    b = cfg.batching
    what = b.strategy + (f"+{b.curriculum.name}" if b.curriculum.name != "none" else "")
    what += f" T={b.max_len}"
    planned = f"{budget.text_tokens:,} tokens"
    if probe is not None:
        planned += f" (the probe's plan, re-planned after {CALIBRATION_STEPS} steps)"
    demo.begin(f"text run {name}: {what}, {planned}")
    start = time.time()
    note = ""
    if probe is None:
        summary = train(cfg)
    else:
        summary = train(cfg, stop_at_step=CALIBRATION_STEPS)
        if summary["stop_reason"] == "paused":
            measured = steady_speed(RunDir(run_dir).metrics("train"))
            left = budget.text_end_s - demo.elapsed()
            budget, note = calibrate(budget, name, measured, probe, left)
            demo.say(note)
            summary = train(text_config(demo.root, budget, run_dir, batching), resume=True)
    return RunResult(name, what, run_dir, summary, seconds=time.time() - start), budget, note


def text_lengths(demo: Demo, budget: Budget, run: RunResult) -> None:
    """Stage 5: per-position loss on val documents out to 4x the training length."""
    demo.begin(
        f"lengths suite {run.name}: per-position loss on val out to 4x {budget.text_max_len}"
    )
    expect = 2 if demo.quick else 6
    run.suite, run.suite_table = _lengths_suite(
        demo, run.run_dir, expect, text_split="val", n_docs=budget.text_suite_docs
    )
    demo.say(run.suite_table)


def train_task(demo: Demo, budget: Budget, plan: Plan) -> RunResult:
    """Stage 6: coupled addition, 1-8 digits, evaluated at 1x/2x/4x during training with the
    OOD monitor and early stopping (best checkpoint restored). Token budget: the time left, at
    the speed of the current plan (`task_tokens`)."""
    from lengthwise.train.trainer import train

    run_dir = demo.out / TASK_RUN
    base = demo_config(demo.root, TASK_CONFIG, [])
    tokens = budget.task_tokens_min if demo.quick else task_tokens(demo.left(), plan, budget)
    cfg = demo_config(demo.root, TASK_CONFIG, task_overrides(budget, run_dir, tokens, base))
    src = cfg.data.splits["train"]
    what = f"addition {src.lengths[0]}-{src.lengths[1]} {src.format}, {cfg.model.position}"
    es = cfg.monitor.early_stopping
    demo.begin(
        f"task run {TASK_RUN}: {what}, {tokens:,} tokens; early stopping on "
        f"{es.metric or 'ood_mean/acc'} (patience {es.patience} of {budget.task_evals} evals)"
    )
    start = time.time()
    summary = train(cfg)
    return RunResult(TASK_RUN, what, run_dir, summary, seconds=time.time() - start)


def task_lengths(demo: Demo, budget: Budget, run: RunResult) -> None:
    """Stage 7: accuracy on problems of exactly 1x, 2x and 4x the longest training length."""
    demo.begin(f"lengths suite {run.name}: accuracy at exactly 1x, 2x, 4x the trained digits")
    expect = 2 if demo.quick else 10
    run.suite, run.suite_table = _lengths_suite(demo, run.run_dir, expect, n=budget.task_suite_n)
    demo.say(run.suite_table)


def _lengths_suite(
    demo: Demo, run_dir: Path, expect_s: float, **kwargs: Any
) -> tuple[dict[str, Any], str]:
    from lengthwise.eval import suites

    cfg = suites.run_config(run_dir, None)
    out = RunDir(run_dir).eval_dir  # where `lengthwise eval RUN` writes, `lengthwise report` reads
    out.mkdir(parents=True, exist_ok=True)
    with demo.ticker("eval --suite lengths", expect_s):
        lm = suites.load_lm(run_dir, device="cpu")
        return suites.suite_lengths(lm, cfg, out, MULTIPLES, **kwargs)


def write_report(demo: Demo, runs: list[RunResult]) -> tuple[Path | None, str | None, bool]:
    """Stage 8: OUT/report.html over the three runs. Returns (path, problem, failed): a missing
    report module skips the report; a report that fails is a failure of the demo (exit 1), but
    after the summary, so that the runs' results are still printed."""
    demo.begin("report: OUT/report.html")
    try:
        from lengthwise.report import build_report
    except ImportError as e:
        return None, f"skipped: the report module is not available ({e})", False
    title = "lengthwise demo" + (" (--quick)" if demo.quick else "")
    try:
        with demo.ticker("report", 5 if demo.quick else 15):
            path = build_report([r.run_dir for r in runs], demo.out / "report.html", title=title)
    except Exception as e:  # noqa: BLE001 - reported, and the demo exits 1
        return None, f"FAILED: {type(e).__name__}: {e}", True
    return path, None, False


def summary_table(runs: list[RunResult]) -> str:
    """Stage 9: one line per run: what it trained, tokens, wall time, result, stop reason."""
    rows = [("run", "training", "tokens", "wall", "result", "stop")]
    for r in runs:
        s = r.summary
        rows.append(
            (
                r.name,
                r.what,
                f"{s['tokens']:,}",
                f"{s['wall_seconds']:.0f}s",
                _result(r),
                s["stop_reason"],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _result(run: RunResult) -> str:
    s = run.summary
    if "task" in run.suite:
        # the eval sets (1-8, 9-16, 17-32 digits) at the exported step (the restored best), and
        # the suite's problems of exactly 8, 16, 32 digits
        step = s.get("restored_best_step") or s["steps"]
        evals = [e for e in RunDir(run.run_dir).metrics("eval") if e["step"] <= step]
        at = evals[-1] if evals else {}
        sets = "  ".join(f"{m}x {at[f'add_{m}x/acc']:.2f}" for m in (1, 2, 4) if at)
        rows = run.suite["task"]["rows"]
        exact = "/".join(f"{r['acc']:.2f}" for r in rows)
        digits = "/".join(str(r["length"]) for r in rows)
        return f"acc {sets} (step {step})  exactly {digits} digits: {exact}"
    final = s.get("final") or {}
    parts = [f"{k.split('/')[0]} {final[k]:.3f}" for k in ("val/loss", "ood/loss") if k in final]
    text = run.suite.get("text", {})
    bands = list(text.get("band_loss", {}).values())
    if bands:  # mean loss at positions up to 1x, 1x-2x and 2x-4x the training length
        edges = ["0", *(f"{m:g}" for m in MULTIPLES)]
        by_pos = "  ".join(
            f"{lo}-{hi}x {v:.3f}" for lo, hi, v in zip(edges, edges[1:], bands, strict=False)
        )
        parts.append(f"| {text['split']} loss at positions {by_pos}")
    return "  ".join(parts)


# ---------------------------------------------------------------------- the whole job


def check_out(out: Path) -> None:
    """Refuse, before any work, an OUT that is a file, or that holds a folder under a run's name
    which `lengthwise train` did not write (no config.yaml): the demo replaces its own earlier
    runs and nothing else."""
    check_folder_path(out, "--out")
    for name in RUN_NAMES:
        check_replaceable(
            out / name,
            lambda p: RunDir(p).is_run(),
            "a lengthwise run",
            remedy="move it or choose another --out",
        )
    if (out / "report.html").is_dir():
        raise UserError(f"--out {out}: report.html is a folder; the demo writes its report there")
    check_folder_path(out / "report_files", "--out")


def clear_previous(out: Path) -> None:
    """Remove this demo's earlier runs from OUT (after `check_out`: absent, empty or runs).
    The report is replaced when the new one is written."""
    for name in RUN_NAMES:
        if (out / name).is_dir():
            shutil.rmtree(out / name)


def run_demo(out: Path, budget_minutes: float = 10.0, quick: bool = False) -> int:
    if not budget_minutes > 0 or not math.isfinite(budget_minutes):
        raise UserError(f"--budget-minutes: must be a positive number, got {budget_minutes}")
    check_out(Path(out).resolve())
    demo = Demo(Path(out).resolve(), budget_minutes * 60, quick, find_root())
    demo.say(
        f"lengthwise demo{' --quick' if quick else ''}: budget {_mmss(demo.budget_s)}, "
        f"{torch.get_num_threads()} CPU threads, runs in {demo.out}"
    )
    clear_previous(demo.out)
    demo.out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    notes = []
    try:
        prepare_data(demo)
        speed = measure_speed(demo)  # may settle on 1 thread
        budget = plan_budget(demo, speed)
        plan = Plan(speed.task, TASK_RESERVE_S)
        runs: list[RunResult] = []
        for i, (name, batching) in enumerate(TEXT_STRATEGIES):
            # the first calibrates the budget (not --quick: fixed budgets), the second gets the
            # same tokens
            probe = speed.text if i == 0 and not demo.quick else None
            run, budget, note = train_text(demo, budget, name, batching, probe)
            runs.append(run)
            notes += [note] if note else []
            if not demo.quick:  # quick: fixed budgets, nothing to plan
                plan = replan(name, speed, [(budget.text_tokens, r.seconds) for r in runs])
                notes.append(plan.note)
                if plan.replanned:
                    demo.say(plan.note)
        for run in runs:
            text_lengths(demo, budget, run)
        task = train_task(demo, budget, plan)
        task_lengths(demo, budget, task)
        runs.append(task)
        report, problem, failed = write_report(demo, runs)
    finally:
        torch.set_num_threads(threads)
    demo.say(f"\nlengthwise demo: done in {_mmss(demo.elapsed())} (budget {_mmss(demo.budget_s)})")
    demo.say(summary_table(runs))
    for note in notes:
        demo.say(note)
    demo.say(f"runs: {', '.join(str(r.run_dir) for r in runs)}")
    demo.say(f"report: {report}" if report else f"report: {problem}")
    return 1 if failed else 0
