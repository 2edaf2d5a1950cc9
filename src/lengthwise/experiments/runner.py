"""Running an experiment: each point's budget and config, training it, reading its records,
the outputs every experiment writes (results.json, results.md, report.html), the table and plot
helpers the experiment modules share, and `run`, which calls one experiment's runner
(lengthwise.experiments.registry names them)."""

from __future__ import annotations

import inspect
import json
import math
import os
import platform
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lengthwise.errors import UserError
from lengthwise.experiments.spec import Point, Spec
from lengthwise.io import atomic_write_text, check_folder_path, check_replaceable
from lengthwise.rundir import RunDir

# what an experiment's runner returns: (results for results.json, markdown tables, run folders)
Runner = Callable[["Context"], tuple[dict[str, Any], str, list[Path]]]


# ---------------------------------------------------------------------- running points


@dataclass
class Context:
    """What an experiment's runner works with: its spec, its output folder (OUT/EXP), the
    command line and budget for results.md, a log function, and what it collects on the way
    (data folders prepared, warnings for results.json)."""

    spec: Spec
    exp_dir: Path
    command: str
    budget_minutes: float
    quiet: bool
    base_path: Path = Path()
    log: Callable[[str], None] = print
    prepared: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)

    def subst(self, items: list[str]) -> list[str]:
        """``{exp_dir}`` in overrides and settings is the experiment's output folder."""
        return [s.replace("{exp_dir}", str(self.exp_dir)) for s in items]


def _q(value: Any) -> str:
    """An override value that YAML reads back as exactly this string/number."""
    return json.dumps(str(value)) if isinstance(value, str | Path) else json.dumps(value)


def fixed_minutes(spec: Spec) -> float:
    """Budget minutes taken before the equal split: the points with their own ``minutes``, and
    ``settings.reserved_minutes`` (runs the experiment adds itself, E2's long run)."""
    fixed = sum(p.minutes for p in spec.points if p.minutes is not None)
    return fixed + float(spec.settings.get("reserved_minutes", 0.0))


def point_minutes(ctx: Context, point: Point | None = None) -> float:
    """Training minutes of a point: its own ``minutes``, or an equal share of what the budget
    leaves after `fixed_minutes`."""
    if point is not None and point.minutes is not None:
        return point.minutes
    spec = ctx.spec
    shared = [p for p in spec.points if p.minutes is None]
    left = ctx.budget_minutes - fixed_minutes(spec)
    if shared and left <= 0:
        raise UserError(
            f"--budget-minutes {ctx.budget_minutes:g} leaves nothing for the grid: "
            f"{fixed_minutes(spec):g} minutes are fixed (points with their own minutes, "
            "settings.reserved_minutes)"
        )
    return left / max(1, len(shared))


def tokens_per_run(ctx: Context, tokens_per_step: int, point: Point | None = None) -> int:
    rate = ctx.spec.tokens_per_second
    if point is not None and point.tokens_per_second is not None:
        rate = point.tokens_per_second
    steps = int(point_minutes(ctx, point) * 60.0 * rate // tokens_per_step)
    return max(1, steps) * tokens_per_step


def point_config(ctx: Context, point: Point, extra: list[str] | None = None):
    """The validated config of a point, with its run directory, budget and eval cadence."""
    from lengthwise.config import load_config

    overrides = ctx.subst(ctx.spec.overrides + point.overrides + list(extra or []))
    run_dir = ctx.exp_dir / "runs" / point.name
    probe = load_config(ctx.base_path, overrides)
    total = tokens_per_run(ctx, probe.batching.tokens_per_step, point)
    every = 0
    if ctx.spec.eval_every_tokens and probe.eval.sets:  # a fixed cadence (E3: in epochs)
        every = ctx.spec.eval_every_tokens
    elif ctx.spec.evals_per_run > 0 and probe.eval.sets:
        step = probe.batching.tokens_per_step
        every = max(1, round(total / step / ctx.spec.evals_per_run)) * step
    return load_config(
        ctx.base_path,
        overrides
        + [
            f"train.out_dir={_q(run_dir)}",
            f"train.total_tokens={total}",
            f"eval.every_tokens={every}",
        ],
    )


def prepare_data(ctx: Context, data: Any) -> None:
    """`lengthwise prepare` for a point's data config, once per data folder. Data inside the
    experiment's folder is rebuilt when its inputs changed. Shared stores elsewhere (E1's
    data/demo_text) that `prepare` calls stale (their recorded source fingerprint differs, e.g.
    after a change of the config schema) are used as they are, with a warning in results.json;
    rebuild them with `lengthwise prepare CONFIG --overwrite`."""
    from lengthwise.data.store import prepare

    key = str(Path(data.out_dir).resolve())
    if key in ctx.prepared:
        return
    out = Path(data.out_dir).resolve()
    owned = out.is_relative_to(ctx.exp_dir.resolve())
    try:
        prepare(data, progress=False)
    except UserError as e:
        if owned:  # the experiment's own data (inputs changed): rebuild it
            prepare(data, overwrite=True, progress=False)
            ctx.prepared.add(key)
            return
        stores = [Path(data.out_dir) / s / "meta.json" for s in data.splits]
        if not (
            all(m.is_file() for m in stores) and (Path(data.out_dir) / "tokenizer.json").is_file()
        ):
            raise
        msg = f"prepare refused ({e}); using the existing stores in {data.out_dir}"
        ctx.warnings.append(msg)
        ctx.log(f"[{ctx.spec.experiment}] warning: {msg}")
    ctx.prepared.add(key)


def train_point(ctx: Context, point: Point, extra: list[str] | None = None):
    """Prepare the point's data (a no-op when up to date), clear a previous run of this point
    and train it. Returns (run_dir, config, summary)."""
    from lengthwise.train.trainer import train

    cfg = point_config(ctx, point, extra)
    prepare_data(ctx, cfg.data)
    run_dir = Path(cfg.train.out_dir)
    check_run_folder(run_dir)
    if RunDir(run_dir).is_run():  # our own earlier run of this point
        shutil.rmtree(run_dir)
    ctx.log(f"[{ctx.spec.experiment}] {point.name}: training {cfg.train.total_tokens:,} tokens")
    t0, c0 = time.time(), time.process_time()
    summary = train(cfg, quiet=True)
    # CPU seconds of this process during training (all its threads): the honest cost on a
    # shared machine, where wall time also counts the neighbours
    summary["cpu_seconds"] = round(time.process_time() - c0, 2)
    ctx.log(
        f"[{ctx.spec.experiment}] {point.name}: {summary['stop_reason']}, {summary['steps']} "
        f"steps in {time.time() - t0:.1f}s ({summary['cpu_seconds']:.1f} CPU s)"
    )
    return run_dir, cfg, summary


def check_run_folder(run_dir: Path) -> None:
    """A point's run folder is replaced only when it is absent, empty or an earlier run
    (config.yaml): a folder of the user's under that name is refused, never deleted."""
    check_replaceable(
        run_dir,
        lambda p: RunDir(p).is_run(),
        "a lengthwise run",
        remedy="move it or choose another --out",
    )


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every metrics.jsonl record of a run (lengthwise.rundir.RunDir.metrics)."""
    return RunDir(run_dir).metrics()


def epochs_begun(records: list[dict[str, Any]]) -> int | None:
    """Passes over the training set begun: the epoch of the last train record, plus one."""
    epochs = [r["epoch"] for r in records if r["event"] == "train" and "epoch" in r]
    return int(epochs[-1]) + 1 if epochs else None


def _clean(x: Any) -> Any:
    """JSON-able: NaN/inf become None, numpy scalars plain numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, str | bytes):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def cell(x: Any, spec: str = ".4f", none: str = "-") -> str:
    """A table cell: `x` formatted with `spec`; `none` for None, NaN and inf; ints with
    thousands separators under a fixed-point spec."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    if isinstance(x, int) and spec.endswith("f"):
        return f"{x:,}"
    return format(x, spec)


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table (results.md)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    import torch

    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def write_outputs(
    ctx: Context, results: dict[str, Any], tables_md: str, run_dirs: list[Path]
) -> None:
    """results.json, results.md and (when the report module exists) report.html."""
    env = results["environment"]
    n = env["threads"]
    where = "GPU " + env["cuda"] if env["cuda"] else f"CPU, {n} thread{'s' if n != 1 else ''}"
    head = [
        f"## {ctx.spec.experiment}: {ctx.spec.title}"
        + (" (quick smoke run)" if ctx.spec.quick else ""),
        "",
        "```",
        f"{ctx.command}      # {env['date']}, {results['wall_seconds']:.0f} s, {where}, "
        f"torch {env['torch']}",
        "```",
        "",
    ]
    if ctx.spec.question:
        head += [ctx.spec.question.strip(), ""]
    if ctx.spec.quick:
        head += [
            "Quick variant: tiny model and budget, a smoke test of the pipeline; the numbers say "
            "nothing about the question.",
            "",
        ]
    report = None
    try:
        from lengthwise.report import build_report  # another module; optional here
    except ImportError:
        build_report = None
    if build_report is not None:
        try:
            title = f"{ctx.spec.experiment}: {ctx.spec.title}"
            kwargs = {"command": ctx.command} if "command" in _params(build_report) else {}
            build_report(run_dirs, ctx.exp_dir / "report.html", title, **kwargs)
            report = str(ctx.exp_dir / "report.html")
        except Exception as e:  # a broken report must not lose the experiment's results
            results["report_error"] = f"{type(e).__name__}: {e}"
    results["report"] = report
    atomic_write_text(ctx.exp_dir / "results.json", json.dumps(_clean(results), indent=2))
    atomic_write_text(
        ctx.exp_dir / "results.md", "\n".join(head) + "\n" + tables_md.rstrip() + "\n"
    )


def _params(fn: Callable[..., Any]) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def plotting() -> tuple[Any, Any]:
    """(lengthwise.eval.plots, matplotlib.pyplot), imported on first use: matplotlib costs
    ~0.5 s to import, which a command that only validates its input should not pay (the
    plots module selects the Agg backend)."""
    import matplotlib.pyplot as plt

    from lengthwise.eval import plots

    return plots, plt


# ---------------------------------------------------------------------- entry point


def command_line(
    experiment: str, quick: bool, budget: float | None, out: Path | None, spec: Path | None
) -> str:
    parts = ["lengthwise", "experiment", experiment]
    if quick:
        parts.append("--quick")
    if budget is not None:
        parts += ["--budget-minutes", f"{budget:g}"]
    if out is not None:
        parts += ["--out", str(out)]
    if spec is not None:
        parts += ["--spec", str(spec)]
    return shlex.join(parts)


def run(
    spec: Spec,
    runner: Runner,
    command: str,
    budget_minutes: float | None = None,
    out: Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run `spec` with its experiment's `runner` into OUT/EXP/ and write the outputs; returns
    the results written to results.json. Every check that can fail (the output folder, the
    budget, the points' run folders) runs before any work."""
    experiment = spec.experiment
    if budget_minutes is not None and not budget_minutes > 0:
        raise UserError(f"--budget-minutes must be > 0, got {budget_minutes}")
    exp_dir = Path(out or "runs/experiments") / experiment
    check_folder_path(exp_dir.parent, "--out")
    check_folder_path(exp_dir, "--out")
    for point in spec.points:
        check_run_folder(exp_dir / "runs" / point.name)
    ctx = Context(
        spec=spec,
        exp_dir=exp_dir,
        command=command,
        budget_minutes=budget_minutes if budget_minutes is not None else spec.budget_minutes,
        quiet=quiet,
        log=(lambda _m: None) if quiet else print,
    )
    if any(p.minutes is None for p in spec.points):
        point_minutes(ctx)  # a budget below the fixed minutes fails here, before any training
    exp_dir.mkdir(parents=True, exist_ok=True)
    if spec.base is not None:
        ctx.base_path = spec.base
    else:
        ctx.base_path = exp_dir / "base_config.yaml"
        text = yaml.safe_dump(spec.config, sort_keys=False).replace("{exp_dir}", str(exp_dir))
        atomic_write_text(ctx.base_path, text)
    import torch

    threads = torch.get_num_threads()
    if spec.threads:  # tiny models: one thread is as fast, and immune to busy neighbours
        torch.set_num_threads(spec.threads)
    try:
        start = time.time()
        env = environment()
        results, tables, run_dirs = runner(ctx)
    finally:
        torch.set_num_threads(threads)
    results = {
        "experiment": experiment,
        "title": spec.title,
        "command": ctx.command,
        "out_dir": str(exp_dir),
        "spec": str(spec.path),
        "quick": spec.quick,
        "budget_minutes": ctx.budget_minutes,
        "tokens_per_second_estimate": spec.tokens_per_second,
        "grid": [asdict(p) for p in spec.points],
        "environment": env,
        "wall_seconds": round(time.time() - start, 1),
        "warnings": ctx.warnings,
        **results,
    }
    write_outputs(ctx, results, tables, run_dirs)
    ctx.log(f"[{experiment}] done in {results['wall_seconds']:.0f}s: {exp_dir / 'results.md'}")
    return results
