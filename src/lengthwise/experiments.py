"""`lengthwise experiment E1|E2|E3|E4|E5 [--quick] [--budget-minutes M] [--out DIR]`: one command
per experiment, one YAML per experiment (``experiments/eN_*.yaml``: a base config plus the grid).

Each experiment trains one run per grid point in-process (``lengthwise.train.trainer.train`` on
``load_config(base, overrides)``), evaluates the runs, and writes ``OUT/EXP/``:

    runs/<point>/       one ordinary run directory per grid point (metrics.jsonl, export/, ...)
    results.json        every number of the tables, plus the command, budget and environment
    results.md          markdown tables ready for docs/results.md, the command line on top
    *.png               plots
    report.html         when ``lengthwise.report.build_report`` is available

- **E1 efficiency** (text, the bundled corpus): every batching strategy on an equal token budget;
  tokens/s, wall time, final ID/OOD loss, per-position loss to 4x the training length, and the
  time each strategy needs to reach concat_chunk's final validation loss.
- **E2 length generalization** (addition trained on 1-10 digits): accuracy at 1x ... 16x the
  training length and on adversarial carry chains (`adversarial_items`), for positional
  encodings x {reversed}, formats x {fire}, a copy pair, the best recipe (position coupling
  with a window) on its own 5-minute budget, and a long run of the best general recipe; the
  training CPU time of every point.
- **E3 over-training** (task): a small addition set trained until it over-fits, per L1/L2 and
  dropout setting: the OOD alert, the early stop, and the OOD accuracy of the best (restored)
  checkpoint against the last one.
- **E4 generalization valley**: three model sizes trained on one multi-task source over the
  complexity ladder; the valley suite's ID/OOD accuracy and gap per level and the critical
  complexity per size.
- **E5 memorization**: per-item accuracy against training term frequency, on a task source with
  a small ``n`` (natural frequency spread) and on a deliberately skewed training set.

Budget: each grid point trains ``minutes * 60 * tokens_per_second`` tokens (rounded down to
whole steps), ``tokens_per_second`` being the YAML's estimate of the point's effective rate on
2 CPU cores (training plus evals; a point may set its own) and ``minutes`` the point's own
``minutes`` or else an equal share of ``budget_minutes`` less the fixed minutes (points with
their own minutes, ``settings.reserved_minutes``). ``--quick`` uses the YAML's ``quick:``
section: a small model and tiny budgets, a smoke test of the whole pipeline whose numbers mean
nothing. Every run records the CPU seconds its training took (``cpu_seconds``).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import random
import shlex
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lengthwise.config import read_yaml_mapping
from lengthwise.errors import UserError

IMPLEMENTED = {
    "E1": "e1_efficiency.yaml",
    "E2": "e2_length_generalization.yaml",
    "E3": "e3_overtraining.yaml",
    "E4": "e4_valley.yaml",
    "E5": "e5_memorization.yaml",
}
CHOICES = tuple(sorted(IMPLEMENTED))
REPO = Path(__file__).resolve().parents[2]  # src/lengthwise/experiments.py -> the checkout


# ---------------------------------------------------------------------- spec (the YAML)


@dataclass
class Point:
    """One grid point: a name (its run directory) and the overrides that define it. `minutes`
    gives the point a fixed training budget of its own (else it shares what the budget leaves
    after the fixed points), `tokens_per_second` its own rate estimate (else the spec's)."""

    name: str
    overrides: list[str]
    labels: dict[str, str] = field(default_factory=dict)  # axis -> value label, for tables
    minutes: float | None = None
    tokens_per_second: float | None = None


@dataclass
class Spec:
    experiment: str
    title: str
    question: str
    path: Path
    base: Path | None  # a config file, or
    config: dict[str, Any] | None  # an inline config
    overrides: list[str]
    points: list[Point]
    budget_minutes: float
    tokens_per_second: float
    evals_per_run: int
    eval_every_tokens: int | None
    threads: int | None
    settings: dict[str, Any]
    quick: bool


def experiments_dir() -> Path:
    """The folder of the experiment YAMLs: the checkout's experiments/, else ./experiments."""
    for d in (REPO / "experiments", Path.cwd() / "experiments"):
        if d.is_dir():
            return d
    return REPO / "experiments"


def spec_path(experiment: str) -> Path:
    return experiments_dir() / IMPLEMENTED[experiment]


def expand_grid(raw: Any, where: str) -> list[Point]:
    """A grid is a list of points ``{name, overrides}`` or ``{product: [axis, ...]}`` with axes
    ``{axis: NAME, values: {LABEL: [overrides...]}}``; a product point is named
    ``AXIS-LABEL_AXIS-LABEL``."""
    if isinstance(raw, dict) and "product" in raw:
        axes = raw["product"]
        if not isinstance(axes, list) or not axes:
            raise UserError(f"{where}: grid.product must be a non-empty list of axes")
        options = []
        for ax in axes:
            if (
                not isinstance(ax, dict)
                or "axis" not in ax
                or not isinstance(ax.get("values"), dict)
            ):
                raise UserError(f"{where}: each grid.product axis needs 'axis' and 'values'")
            options.append([(ax["axis"], str(k), list(v or [])) for k, v in ax["values"].items()])
        points = []
        for combo in itertools.product(*options):
            name = "_".join(f"{a}-{label}" for a, label, _ in combo)
            overrides = [o for _, _, ov in combo for o in ov]
            points.append(Point(_safe(name), overrides, {a: label for a, label, _ in combo}))
        return points
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{where}: grid must be a non-empty list of points or {{product: ...}}")
    points = []
    for p in raw:
        if not isinstance(p, dict) or "name" not in p:
            raise UserError(f"{where}: each grid point needs a 'name'")
        labels = {str(k): str(v) for k, v in (p.get("labels") or {}).items()}
        extra = {}
        for key in ("minutes", "tokens_per_second"):
            if p.get(key) is not None:
                if not isinstance(p[key], int | float) or isinstance(p[key], bool) or p[key] <= 0:
                    raise UserError(f"{where}: point {p['name']}: {key} must be a number > 0")
                extra[key] = float(p[key])
        points.append(Point(_safe(str(p["name"])), list(p.get("overrides") or []), labels, **extra))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise UserError(f"{where}: grid point names must be unique, got {names}")
    return points


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)


def load_spec(path: Path, experiment: str, quick: bool = False) -> Spec:
    path = Path(path)
    raw = read_yaml_mapping(path, "experiment")
    if raw.get("experiment", experiment) != experiment:
        raise UserError(f"{path}: is experiment {raw.get('experiment')}, not {experiment}")
    if ("base" in raw) == ("config" in raw):
        raise UserError(f"{path}: needs exactly one of 'base' (a config file) or 'config'")
    q = raw.get("quick") or {}
    pick = (lambda k, d=None: q.get(k, raw.get(k, d))) if quick else raw.get  # noqa: E731
    overrides = list(raw.get("overrides") or []) + (list(q.get("overrides") or []) if quick else [])
    grid = q["grid"] if quick and "grid" in q else raw.get("grid")
    base = None
    if "base" in raw:
        base = Path(raw["base"])
        if not base.is_absolute():
            base = base if base.is_file() else (REPO / base)
        if not base.is_file():
            raise UserError(f"{path}: base config {raw['base']} not found")
    settings = dict(raw.get("settings") or {})
    if quick:
        settings.update(q.get("settings") or {})
    return Spec(
        experiment=experiment,
        title=str(raw.get("title", experiment)),
        question=str(raw.get("question", "")),
        path=path,
        base=base,
        config=raw.get("config"),
        overrides=overrides,
        points=expand_grid(grid, str(path)),
        budget_minutes=float(pick("budget_minutes", 10.0)),
        tokens_per_second=float(pick("tokens_per_second", 3000.0)),
        evals_per_run=int(pick("evals_per_run", 16)),
        eval_every_tokens=int(pick("eval_every_tokens", 0)) or None,
        threads=int(pick("threads", 0)) or None,
        settings=settings,
        quick=quick,
    )


# ---------------------------------------------------------------------- running points


@dataclass
class Context:
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
    if (run_dir / "config.yaml").is_file():  # our own earlier run of this point
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


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    from lengthwise.train.log import read_metrics

    return read_metrics(run_dir)


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


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


def _fmt(x: Any, spec: str = ".4f", none: str = "-") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    if isinstance(x, int) and spec.endswith("f"):
        return f"{x:,}"
    return format(x, spec)


def md_table(headers: list[str], rows: list[list[str]]) -> str:
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
    from lengthwise.data.tokenizer import atomic_write_text

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
    import inspect

    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def _plt():
    import matplotlib.pyplot as plt

    from lengthwise.eval import plots  # selects the Agg backend before pyplot

    return plots, plt


def _save(fig: Any, path: Path) -> Path:
    plots, plt = _plt()
    return plots._save(fig, path)


# ---------------------------------------------------------------------- E1 efficiency


def eval_durations(records: list[dict[str, Any]]) -> list[float]:
    """Seconds each eval event took: from the record written just before it (the train record
    of the same step when ``log_every_steps`` is 1) to the eval record, which is written after
    the evaluation."""
    out, prev = [], 0.0
    for r in records:
        if r["event"] == "eval":
            out.append(max(0.0, r["time"] - prev))
        prev = r["time"]
    return out


def eval_curve(records: list[dict[str, Any]], metric: str) -> list[dict[str, float]]:
    """Per eval: step, tokens, wall seconds since the start (``time``), training seconds (wall
    minus the evals so far, this one included) and the metric."""
    evals = [r for r in records if r["event"] == "eval"]
    durations = eval_durations(records)
    out, spent = [], 0.0
    for r, d in zip(evals, durations, strict=True):
        spent += d
        out.append(
            {
                "step": r.get("step"),
                "tokens": r["tokens"],
                "time": r["time"],
                "train_time": r["time"] - spent,
                "value": _num(r.get(metric)),
            }
        )
    return out


def time_to_target(
    records: list[dict[str, Any]], target: float, metric: str = "val/loss"
) -> dict[str, Any] | None:
    """The first eval at which ``metric`` <= target: its wall seconds, training seconds,
    tokens and step; None if never reached."""
    for e in eval_curve(records, metric):
        if math.isfinite(e["value"]) and e["value"] <= target:
            return {k: e[k] for k in ("time", "train_time", "tokens", "step", "value")}
    return None


def median_tokens_per_s(records: list[dict[str, Any]]) -> float | None:
    """Median ``tokens_per_s`` of the train records, leaving out the record right after each
    eval (its window also holds the evaluation)."""
    vals, after_eval = [], False
    for r in records:
        if r["event"] == "eval":
            after_eval = True
        elif r["event"] == "train":
            if not after_eval and "tokens_per_s" in r:
                vals.append(float(r["tokens_per_s"]))
            after_eval = False
    return statistics.median(vals) if vals else None


def run_e1(ctx: Context) -> tuple[dict[str, Any], str, list[Path]]:
    from lengthwise.eval import suites

    spec = ctx.spec
    reference = spec.settings.get("reference", "concat_chunk")
    multiples = [float(m) for m in spec.settings.get("multiples", [1, 2, 4])]
    text_split = spec.settings.get("position_split", "val")
    n_docs = int(spec.settings.get("position_docs", 8))
    if reference not in [p.name for p in spec.points]:
        raise UserError(f"{spec.path}: settings.reference '{reference}' is not a grid point")
    rows, run_dirs, curves, histories = [], [], {}, {}
    for point in spec.points:
        run_dir, cfg, summary = train_point(ctx, point)
        run_dirs.append(run_dir)
        records = read_records(run_dir)
        lm = suites.load_lm(run_dir)
        lengths, _ = suites.suite_lengths(
            lm, cfg, run_dir / "eval", multiples, text_split=text_split, n_docs=n_docs
        )
        text = lengths.get("text", {})
        curves[point.name] = text.get("per_position_loss", [])
        histories[point.name] = eval_curve(records, "val/loss")
        final = summary["final"]
        rows.append(
            {
                "name": point.name,
                "strategy": cfg.batching.strategy,
                "curriculum": cfg.batching.curriculum.name,
                "run_dir": str(run_dir),
                "steps": summary["steps"],
                "tokens": summary["tokens"],
                "target_tokens": summary["target_tokens"],
                "tokens_per_s": median_tokens_per_s(records),
                "wall_seconds": summary["wall_seconds"],
                "final_eval_time": histories[point.name][-1]["time"],
                "train_seconds": histories[point.name][-1]["train_time"],
                "eval_seconds": sum(eval_durations(records)),
                "n_evals": len(histories[point.name]),
                "val_loss": final.get("val/loss"),
                "ood_loss": final.get("ood/loss"),
                "position_band_loss": text.get("band_loss", {}),
                "position_docs": text.get("docs"),
                "train_len": cfg.batching.max_len,
            }
        )
    ref = next(r for r in rows if r["name"] == reference)
    target = ref["val_loss"]
    for r in rows:
        if r["name"] == reference:
            r["to_reference"] = None
            continue
        hit = time_to_target(read_records(Path(r["run_dir"])), target)
        if hit is not None:
            hit["ratio_wall"] = hit["time"] / ref["final_eval_time"]
            hit["ratio_train"] = hit["train_time"] / ref["train_seconds"]
            hit["ratio_tokens"] = hit["tokens"] / ref["tokens"]
        r["to_reference"] = hit
    plots, plt = _plt()
    train_len = rows[0]["train_len"]
    plots.plot_position_loss(curves, train_len, ctx.exp_dir / "e1_position_loss.png")
    _plot_e1_curves(histories, target, reference, ctx.exp_dir / "e1_val_loss.png")
    _plot_e1_throughput(rows, ctx.exp_dir / "e1_throughput.png")
    results = {"reference": reference, "reference_val_loss": target, "points": rows}
    return results, _e1_markdown(rows, reference, multiples), run_dirs


def _plot_e1_curves(histories: dict[str, list[dict]], target: float, ref: str, path: Path) -> Path:
    _, plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for name, hist in histories.items():
        for ax, key in zip(axes, ("tokens", "time"), strict=True):
            ax.plot([h[key] for h in hist], [h["value"] for h in hist], marker=".", label=name)
    for ax, label in zip(axes, ("tokens trained", "wall seconds (evals included)"), strict=True):
        if target is not None and math.isfinite(target):
            ax.axhline(target, color="0.3", ls="--", lw=1, label=f"{ref} final val loss")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val loss (nats / token)")
    axes[1].legend(fontsize="small", loc="best")
    fig.suptitle("E1: validation loss vs tokens and wall time, per batching strategy")
    return _save(fig, path)


def _plot_e1_throughput(rows: list[dict[str, Any]], path: Path) -> Path:
    _, plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    names = [r["name"] for r in rows]
    vals = [_num(r["tokens_per_s"]) for r in rows]
    ax.barh(names, vals, color="tab:blue")
    for y, v in enumerate(vals):
        if math.isfinite(v):
            ax.text(v, y, f" {v:,.0f}", va="center", fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("training tokens/s (median over steps; slots incl. padding)")
    ax.set_title("E1: throughput per batching strategy")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def _e1_markdown(rows: list[dict[str, Any]], reference: str, multiples: list[float]) -> str:
    train_len = rows[0]["train_len"]
    edges = [0, *[int(m * train_len) for m in sorted(multiples)]]
    bands = [f"{lo}-{hi}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    headers = [
        "strategy",
        "tokens",
        "tokens/s",
        "wall s",
        "train s",
        "val loss",
        "ood loss",
        *[f"pos loss {b}" for b in bands],
        f"to {reference} loss: wall s",
        "tokens",
        f"x {reference} wall",
    ]
    out = []
    for r in rows:
        hit = r["to_reference"]
        if r["name"] == reference:
            reach = ["(reference)", "-", "1.00"]
        elif hit is None:
            reach = ["never", "-", "-"]
        else:
            reach = [
                _fmt(hit["time"], ".0f"),
                _fmt(hit["tokens"], ",d"),
                _fmt(hit["ratio_wall"], ".2f"),
            ]
        out.append(
            [
                r["name"],
                _fmt(r["tokens"], ",d"),
                _fmt(r["tokens_per_s"], ",.0f"),
                _fmt(r["wall_seconds"], ".0f"),
                _fmt(r["train_seconds"], ".0f"),
                _fmt(r["val_loss"], ".4f"),
                _fmt(r["ood_loss"], ".4f"),
                *[_fmt(r["position_band_loss"].get(b), ".3f") for b in bands],
                *reach,
            ]
        )
    notes = [
        "",
        f"- Equal token budget per strategy ({rows[0]['tokens']:,} input slots, padding "
        "included); tokens/s is the median of the per-step training records, leaving out the "
        "step after each eval.",
        "- wall s: the run's wall time (evals included); train s: minus the time spent in evals "
        f"(about {statistics.mean(r['eval_seconds'] for r in rows):.0f} s per run).",
        f"- pos loss: mean per-position loss of the longest '{'val'}' documents in each position "
        f"band (training length {train_len}), from `lengthwise eval RUN --suite lengths`.",
        f"- to {reference} loss: the first eval at which the strategy's val loss <= "
        f"{reference}'s final val loss; wall seconds and tokens from metrics.jsonl, and the "
        f"ratio to the wall time of {reference}'s final eval.",
        "",
        "Plots: e1_val_loss.png, e1_position_loss.png, e1_throughput.png.",
    ]
    return md_table(headers, out) + "\n" + "\n".join(notes) + "\n"


# ---------------------------------------------------------------------- E2 length generalization

# Adversarial carry families of `adversarial_items`, at L digits:
#   9s+1       (10^L - 1) + 1             the second operand one digit long (as the task renders
#                                         it: training never pairs operands of unequal length)
#   1+9s       1 + (10^L - 1)             the same, operands swapped
#   9s+0..01   (10^L - 1) + 1, the 1 zero-padded to L digits (999+001): the same carry chain
#                                         with operands of equal length
#   9s+10..01  (10^L - 1) + (10^(L-1) + 1)  equal length, a carry through every digit
#   chain      random operands whose digit pairs sum to 9 and units to 10: a + b = 10^L
ADVERSARIAL = ("9s+1", "1+9s", "9s+0..01", "9s+10..01", "chain")


def _number_text(digits: str, fmt: str) -> str:
    """A decimal string as the addition task writes an operand in `fmt`."""
    from lengthwise.tasks.registry import hint_number

    if fmt in ("reversed", "coupled"):
        return digits[::-1]
    if fmt == "index_hints":
        return hint_number(digits)
    return digits  # direct, scratchpad (whose prompt is the direct one)


def adversarial_items(
    length: int, fmt: str, n_chain: int = 8, seed: int = 0, params: dict | None = None
) -> list[tuple[str, Any]]:
    """(family, Item) pairs of addition problems with a carry through all `length` digits (see
    ADVERSARIAL), rendered by ``get_task('addition', **params).render((a, b), fmt)``. The
    zero-padded family rewrites the rendered prompt with the padded operand (and, for
    ``coupled``, recomputes the ids with the task's rule); its answer is the task's. Families
    that coincide with ``9s+1`` at one digit are left out there. `n_chain` random chains,
    deterministic from (seed, length)."""
    import dataclasses

    from lengthwise.tasks import get_task
    from lengthwise.tasks.registry import EOS_POSITION

    if not isinstance(length, int) or length < 1:
        raise ValueError(f"adversarial_items: length must be an int >= 1, got {length!r}")
    task = get_task("addition", **(params or {}))
    nines = 10**length - 1
    out = [("9s+1", task.render((nines, 1), fmt)), ("1+9s", task.render((1, nines), fmt))]
    if length > 1:
        item = task.render((nines, 1), fmt)
        sa, sb = str(nines), "1".zfill(length)
        prompt = f"{_number_text(sa, fmt)}+{_number_text(sb, fmt)}="
        positions = None
        if item.positions is not None:
            positions = (*task.positions_for(prompt, item.completion), EOS_POSITION)
        padded = dataclasses.replace(
            item, prompt=prompt, key=f"addition:{sa}+{sb}", terms=(sa, sb), positions=positions
        )
        out.append(("9s+0..01", padded))
        out.append(("9s+10..01", task.render((nines, 10 ** (length - 1) + 1), fmt)))
    rng = random.Random(f"lengthwise.e2.chain:{seed}:{length}")
    for _ in range(n_chain):
        if length == 1:
            u = rng.randint(1, 9)
            a, b = u, 10 - u
        else:
            top, u = rng.randint(1, 8), rng.randint(1, 9)
            mid = [rng.randint(0, 9) for _ in range(length - 2)]
            a = int("".join(map(str, [top, *mid, u])))
            b = int("".join(map(str, [9 - top, *(9 - d for d in mid), 10 - u])))
        out.append(("chain", task.render((a, b), fmt)))
    return out


def score_adversarial(
    lm: Any, lengths: list[int], fmt: str, settings: dict[str, Any], params: dict, path: Path
) -> dict[str, Any]:
    """Accuracy on `adversarial_items` at each length: overall, per family, per length; every
    item (key, family, length, correct, output) written to `path`."""
    from lengthwise.eval.accuracy import score_items
    from lengthwise.eval.suites import write_json
    from lengthwise.tasks import get_task

    task = get_task("addition", **params)
    pairs = []
    for length in lengths:
        for fam, item in adversarial_items(
            length, fmt, int(settings.get("adversarial_chains", 8)), 0, params
        ):
            pairs.append((fam, length, item))
    score = score_items(
        lm, task, [it for _, _, it in pairs], batch_size=int(settings.get("batch_size", 100))
    )

    def acc(keep: Callable[[str, int], bool]) -> dict[str, Any]:
        hits = [c for (f, n, _), c in zip(pairs, score.per_item, strict=True) if keep(f, n)]
        return {"acc": sum(hits) / len(hits) if hits else None, "n": len(hits)}

    items = [
        {"family": f, "length": n, "key": it.key, "correct": c, "output": o}
        for (f, n, it), c, o in zip(pairs, score.per_item, score.outputs, strict=True)
    ]
    write_json(path, {"format": fmt, "lengths": lengths, "items": items})
    return {
        "file": str(path),
        **acc(lambda f, n: True),
        "parse_rate": score.parse_rate,
        "by_family": {fam: acc(lambda f, n, fam=fam: f == fam) for fam in ADVERSARIAL},
        "by_length": {str(L): acc(lambda f, n, L=L: n == L) for L in lengths},
    }


def e2_score_point(
    ctx: Context, point: Point, run_dir: Path, cfg: Any, summary: dict[str, Any]
) -> dict[str, Any]:
    """Accuracy at each length multiple (the `lengths` suite's own item sets: fresh items of
    exactly round(m x the longest training length)), adversarial carries (addition), costs."""
    from lengthwise.eval import suites

    s = ctx.spec.settings
    src = cfg.data.splits["train"]
    if src.kind != "task" or not isinstance(src.task, str):
        raise UserError(f"E2 point {point.name}: data.splits.train must be a single-task source")
    multiples = [float(m) for m in s.get("multiples", [1, 2, 4, 8])]
    lm = suites.load_lm(run_dir)
    t0, c0 = time.time(), time.process_time()
    batch = int(s.get("batch_size", 100))
    rows = suites.length_accuracy(lm, src, multiples, int(s.get("n", 100)), batch)
    adversarial = None
    if src.task == "addition":
        lengths = [r["length"] for r in rows]
        path = run_dir / "eval" / "e2_adversarial.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        adversarial = score_adversarial(lm, lengths, src.format, s, src.params, path)
    m = cfg.model
    position = m.position
    if position == "relative_bias":
        position += f" (window {m.window}, clip {m.max_distance})" if m.window else ""
    elif position == "abacus":
        position += f" (offset {m.abacus_offset})"
    if src.format == "coupled" and cfg.batching.position_offset_max:
        position += f", id offset {cfg.batching.position_offset_max}"
    return {
        "name": point.name,
        "labels": point.labels,
        "task": src.task,
        "format": src.format,
        "position": position,
        "model": f"{m.n_layer} x {m.d_model}",
        "params": sum(p.numel() for p in lm.model.parameters()),
        "train_lengths": list(src.lengths),
        "run_dir": str(run_dir),
        "budget_minutes": point_minutes(ctx, point),
        "steps": summary["steps"],
        "tokens": summary["tokens"],
        "epochs": _epochs(read_records(run_dir)),
        "train_wall_seconds": summary["wall_seconds"],
        "train_cpu_seconds": summary["cpu_seconds"],
        "accuracy": [
            {k: r[k] for k in ("multiple", "length", "acc", "parse_rate", "correct", "n")}
            for r in rows
        ],
        "adversarial": adversarial,
        "eval_wall_seconds": round(time.time() - t0, 1),
        "eval_cpu_seconds": round(time.process_time() - c0, 1),
    }


def _acc_at(row: dict[str, Any], multiple: float) -> float:
    hit = [a["acc"] for a in row["accuracy"] if a["multiple"] == multiple]
    return _num(hit[0]) if hit else math.nan


def select_long_candidate(rows: list[dict[str, Any]], candidates: list[str], multiple: float):
    """The candidate row with the best accuracy at `multiple`, ties broken by the next lower
    multiples, then by grid order."""
    mine = [r for r in rows if r["name"] in candidates]
    if not mine:
        return None
    lower = sorted({a["multiple"] for a in mine[0]["accuracy"] if a["multiple"] <= multiple})

    def key(r: dict[str, Any]) -> tuple[float, ...]:
        return tuple(-_nan0(_acc_at(r, m)) for m in reversed(lower))

    return min(mine, key=key)  # min is stable: the first of equals wins


def _nan0(x: float) -> float:
    return 0.0 if not math.isfinite(x) else x


def run_e2(ctx: Context) -> tuple[dict[str, Any], str, list[Path]]:
    spec = ctx.spec
    s = spec.settings
    names = [p.name for p in spec.points]
    long_cfg = dict(s.get("long_run") or {})
    candidates = [str(c) for c in long_cfg.get("candidates", [])]
    for name in [*candidates, *([s["best_point"]] if s.get("best_point") else [])]:
        if name not in names:
            raise UserError(f"{spec.path}: settings names point '{name}', not in the grid")
    rows, run_dirs = [], []
    for point in spec.points:
        run_dir, cfg, summary = train_point(ctx, point)
        run_dirs.append(run_dir)
        rows.append(e2_score_point(ctx, point, run_dir, cfg, summary))
    long_row = None
    reserved = float(s.get("reserved_minutes", 0.0))
    select_m = float(long_cfg.get("select_multiple", 4))
    chosen = select_long_candidate(rows, candidates, select_m) if reserved > 0 else None
    if chosen is not None:
        base = next(p for p in spec.points if p.name == chosen["name"])
        point = Point(
            _safe(f"long_{base.name}"),
            list(base.overrides),
            {**base.labels, "run": "long"},
            minutes=reserved,
            tokens_per_second=base.tokens_per_second,
        )
        ctx.log(f"[E2] long run: {base.name} (best candidate at {select_m:g}x), {reserved:g} min")
        run_dir, cfg, summary = train_point(ctx, point)
        run_dirs.append(run_dir)
        long_row = e2_score_point(ctx, point, run_dir, cfg, summary)
        long_row["long_of"] = base.name
        rows.append(long_row)
    best = next((r for r in rows if r["name"] == s.get("best_point")), None)
    targets = e2_targets(best, long_row, s, select_m)
    _plot_e2(rows, ctx.exp_dir / "e2_length_accuracy.png")
    results = {
        "multiples": [float(m) for m in s.get("multiples", [1, 2, 4, 8])],
        "items_per_multiple": int(s.get("n", 100)),
        "adversarial_families": list(ADVERSARIAL),
        "best_point": s.get("best_point"),
        "long_run": {
            "candidates": candidates,
            "select_multiple": select_m,
            "minutes": reserved,
            "chosen": chosen["name"] if chosen else None,
            "point": long_row["name"] if long_row else None,
        },
        "targets": targets,
        "points": rows,
    }
    return results, _e2_markdown(rows, results), run_dirs


def e2_targets(
    best: dict[str, Any] | None,
    long_row: dict[str, Any] | None,
    settings: dict[str, Any],
    select_m: float,
) -> dict[str, Any]:
    """The issue's two targets, checked against the measured numbers: the best recipe at
    ``best_target.multiple`` (8) with ``acc`` (0.99) within ``cpu_minutes`` (5) of training; and
    what the long general run reaches at the selection multiple (4)."""
    t = {"multiple": 8.0, "acc": 0.99, "cpu_minutes": 5.0, **(settings.get("best_target") or {})}
    out: dict[str, Any] = {"best": None, "general": None}
    if best is not None:
        acc = _acc_at(best, float(t["multiple"]))
        cpu = best["train_cpu_seconds"] / 60.0
        out["best"] = {
            "point": best["name"],
            "multiple": float(t["multiple"]),
            "acc": acc if math.isfinite(acc) else None,
            "train_cpu_minutes": cpu,
            "train_wall_minutes": best["train_wall_seconds"] / 60.0,
            "target_acc": float(t["acc"]),
            "target_cpu_minutes": float(t["cpu_minutes"]),
            "met": bool(math.isfinite(acc) and acc >= t["acc"] and cpu <= t["cpu_minutes"]),
        }
    if long_row is not None:
        acc = _acc_at(long_row, select_m)
        out["general"] = {
            "point": long_row["name"],
            "multiple": select_m,
            "acc": acc if math.isfinite(acc) else None,
            "train_cpu_minutes": long_row["train_cpu_seconds"] / 60.0,
        }
    return out


def _plot_e2(rows: list[dict[str, Any]], path: Path) -> Path:
    _, plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    mults = sorted({a["multiple"] for r in rows for a in r["accuracy"]})
    for r in rows:
        xs = [a["multiple"] for a in r["accuracy"]]
        ys = [_num(a["acc"]) for a in r["accuracy"]]
        style = "--" if r["task"] != "addition" else "-"
        lw = 2.5 if r.get("long_of") or r["format"] == "coupled" else 1.3
        ax.plot(xs, ys, style, marker="o", lw=lw, label=f"{r['name']} ({r['task']})")
    if mults:
        ax.set_xscale("log", base=2)
        ax.set_xticks(mults)
        ax.set_xticklabels([f"{m:g}x" for m in mults])
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("test length (multiple of the longest training length)")
    ax.set_ylabel("exact-match accuracy (greedy)")
    ax.set_title("E2: accuracy vs length multiple, per grid point")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def _e2_markdown(rows: list[dict[str, Any]], results: dict[str, Any]) -> str:
    mults = results["multiples"]
    train_hi = rows[0]["train_lengths"][1] if rows else 0
    headers = [
        "point",
        "task",
        "format",
        "position",
        "train CPU min (wall)",
        *[f"{m:g}x ({round(m * train_hi)})" for m in mults],
        "adversarial",
        " / ".join(ADVERSARIAL),
    ]
    out = []
    for r in rows:
        adv = r["adversarial"]
        fams = "-"
        if adv:
            fams = " / ".join(_fmt(adv["by_family"][f]["acc"], ".2f") for f in ADVERSARIAL)
        out.append(
            [
                r["name"],
                r["task"],
                r["format"],
                r["position"],
                f"{r['train_cpu_seconds'] / 60:.1f} ({r['train_wall_seconds'] / 60:.1f})",
                *[_fmt(_acc_at(r, m), ".2f") for m in mults],
                _fmt(adv["acc"], ".2f") if adv else "-",
                fams,
            ]
        )
    t = results["targets"]
    notes = [""]
    if t["best"]:
        b = t["best"]
        notes.append(
            f"- Best recipe `{b['point']}`: {_fmt(b['acc'], '.3f')} at {b['multiple']:g}x after "
            f"{b['train_cpu_minutes']:.1f} CPU minutes of training; target >= {b['target_acc']:g} "
            f"within {b['target_cpu_minutes']:g} CPU minutes: {'met' if b['met'] else 'NOT met'}."
        )
    if t["general"]:
        g = t["general"]
        notes.append(
            f"- General recipe, long run `{g['point']}` (the best of "
            f"{', '.join(results['long_run']['candidates'])} at {g['multiple']:g}x in the grid, "
            f"retrained from scratch): {_fmt(g['acc'], '.3f')} at {g['multiple']:g}x after "
            f"{g['train_cpu_minutes']:.1f} CPU minutes."
        )
    n = results["items_per_multiple"]
    notes += [
        f"- Trained on lengths {rows[0]['train_lengths'] if rows else '?'} (digits per operand; "
        f"list size for copy); columns m x: greedy exact match on {n} fresh items of exactly "
        "round(m x the longest training length), as `lengthwise eval RUN --suite lengths`.",
        "- train CPU min: CPU time of the training process (one torch thread), wall minutes in "
        "brackets; evaluation not included (results.json: eval_cpu_seconds).",
        "- adversarial (addition): carries through every digit at each test length "
        f"({' / '.join(ADVERSARIAL)}; see experiments/README.md), scored the same way; "
        "per item in runs/<point>/eval/e2_adversarial.json.",
        "",
        "Plot: e2_length_accuracy.png.",
    ]
    return md_table(headers, out) + "\n" + "\n".join(notes) + "\n"


# ---------------------------------------------------------------------- E3 over-training


def item_to_dict(item: Any) -> dict[str, Any]:
    d = asdict(item)
    d["terms"] = list(d["terms"])
    return d


def item_from_dict(d: dict[str, Any]) -> Any:
    from lengthwise.tasks import Item

    return Item(**{**d, "terms": tuple(d["terms"])})


def e3_eval_items(cfg: Any, settings: dict[str, Any]) -> dict[str, list[Any]]:
    """The item sets that score the best and the last checkpoint: training items (seen),
    fresh items of the training lengths, fresh items of the longer lengths."""
    from lengthwise.data.sources import task_source_items
    from lengthwise.tasks import generate_items, get_task

    src = cfg.data.splits["train"]
    if src.kind != "task" or not isinstance(src.task, str):
        raise UserError("E3: data.splits.train must be a single-task source")
    task = get_task(src.task, **src.params)
    trained = list(task_source_items(src))
    keys = {it.key for it in trained}
    n = int(settings.get("score_n", 200))
    long_lengths = tuple(settings.get("long_lengths", [src.lengths[1] + 1, 2 * src.lengths[1]]))
    return {
        "seen": trained[:n],
        "fresh": list(
            generate_items(task, tuple(src.lengths), n, src.format, 40_001, exclude=keys)
        ),
        "long": list(generate_items(task, long_lengths, n, src.format, 40_002, exclude=keys)),
    }


def score_export(export_dir: Path, task_name: str, params: dict, items: dict[str, list]) -> dict:
    from lengthwise.eval.accuracy import score_items
    from lengthwise.eval.lengthwise_lm import LengthwiseLM
    from lengthwise.tasks import get_task

    lm = LengthwiseLM.from_export(export_dir)
    task = get_task(task_name, **params)
    return {name: score_items(lm, task, its).to_dict() for name, its in items.items()}


def mean_train_loss(records: list[dict[str, Any]], step: int, k: int = 5) -> float | None:
    """Mean training loss of the last ``k`` train records at or before ``step`` (a smoothed
    training loss at an eval)."""
    vals = [
        r["loss"]
        for r in records
        if r["event"] == "train" and r["step"] <= step and math.isfinite(_num(r["loss"]))
    ][-k:]
    return statistics.mean(vals) if vals else None


def run_e3(ctx: Context) -> tuple[dict[str, Any], str, list[Path]]:
    from lengthwise.data.tokenizer import atomic_write_text
    from lengthwise.export import export_run

    spec = ctx.spec
    plots, _ = _plt()
    rows, run_dirs = [], []
    items = None
    for point in spec.points:
        run_dir, cfg, summary = train_point(ctx, point)
        run_dirs.append(run_dir)
        src = cfg.data.splits["train"]
        if items is None:
            items = e3_eval_items(cfg, spec.settings)
            atomic_write_text(
                ctx.exp_dir / "e3_items.json",
                json.dumps({k: [item_to_dict(i) for i in v] for k, v in items.items()}),
            )
        records = read_records(run_dir)
        evals = [r for r in records if r["event"] == "eval"]
        alerts = [r for r in records if r["event"] == "alert"]
        stops = [r for r in records if r["event"] == "early_stop"]
        metric = summary["best_metric"]
        best_step = summary["restored_best_step"]
        if best_step is None:  # no restore: the best eval by the metric
            best_eval = _best_eval(evals, metric)
            best_step = best_eval["step"] if best_eval else None
        best_eval = next((e for e in evals if e["step"] == best_step), None)
        last_eval = evals[-1] if evals else None
        scores = {}
        for which in ("best", "last"):
            exp = export_run(run_dir, which, run_dir / f"export_{which}")[0]
            scores[which] = score_export(exp, src.task, src.params, items)
        row = {
            "name": point.name,
            "labels": point.labels,
            "l1": cfg.optim.l1,
            "l2": cfg.optim.l2,
            "resid_dropout": cfg.model.resid_dropout,
            "attn_dropout": cfg.model.attn_dropout,
            "run_dir": str(run_dir),
            "stop_reason": summary["stop_reason"],
            "stop_detail": summary["stop_detail"],
            "steps": summary["steps"],
            "tokens": summary["tokens"],
            "epochs": summary["tokens"] / max(1, _train_slots_per_epoch(cfg)),
            "best_metric": metric,
            "best_step": best_step,
            "last_step": last_eval["step"] if last_eval else None,
            "early_stop_step": stops[0]["step"] if stops else None,
            "n_alerts": len(alerts),
            "alert_metrics": sorted({a["metric"] for a in alerts}),
            "first_alert": _first_alert(alerts, spec.settings.get("alert_metric", metric)),
            "at_best": _eval_summary(best_eval, records, spec.settings),
            "at_last": _eval_summary(last_eval, records, spec.settings),
            "accuracy": scores,
        }
        row["train_loss_falling"] = _lt(row["at_last"]["train_loss"], row["at_best"]["train_loss"])
        row["ood_loss_rising"] = _lt(row["at_best"]["ood_loss"], row["at_last"]["ood_loss"])
        rows.append(row)
        metrics = ["loss", *spec.settings.get("plot_metrics", [])]
        plots.plot_metric_history(
            records,
            metrics,
            ctx.exp_dir / f"e3_{point.name}_history.png",
            alerts=alerts,
            stop_step=stops[0]["tokens"] if stops else None,
        )
    _plot_e3_accuracy(rows, ctx.exp_dir / "e3_best_vs_last.png")
    results = {
        "items": {k: len(v) for k, v in (items or {}).items()},
        "items_file": str(ctx.exp_dir / "e3_items.json"),
        "points": rows,
    }
    return results, _e3_markdown(rows, spec.settings), run_dirs


def _lt(a: Any, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    return bool(a < b)


def _train_slots_per_epoch(cfg: Any) -> int:
    from lengthwise.data.store import TokenStore

    return TokenStore(cfg.data.out_dir / "train").n_tokens


def _best_eval(evals: list[dict[str, Any]], metric: str | None) -> dict[str, Any] | None:
    from lengthwise.train.monitor import direction

    ok = [e for e in evals if metric and math.isfinite(_num(e.get(metric)))]
    if not ok:
        return None
    sign = 1.0 if direction(metric) == "min" else -1.0
    return min(ok, key=lambda e: sign * _num(e[metric]))


def _first_alert(alerts: list[dict[str, Any]], metric: str | None) -> dict[str, Any] | None:
    mine = [a for a in alerts if a["metric"] == metric] or alerts
    if not mine:
        return None
    a = mine[0]
    return {k: a.get(k) for k in ("metric", "step", "tokens", "value", "best", "best_step", "drop")}


def _eval_summary(
    e: dict[str, Any] | None,
    records: list[dict[str, Any]],
    settings: dict[str, Any],
) -> dict[str, Any]:
    if e is None:
        return {"step": None, "train_loss": None, "ood_loss": None, "ood_acc": None}
    return {
        "step": e["step"],
        "tokens": e["tokens"],
        "train_loss": mean_train_loss(records, e["step"]),
        "ood_loss": e.get(settings.get("ood_loss_metric", "fresh/loss")),
        "ood_acc": e.get(settings.get("ood_acc_metric", "fresh_acc/acc")),
        "seen_acc": e.get(settings.get("seen_acc_metric", "seen_acc/acc")),
    }


def _plot_e3_accuracy(rows: list[dict[str, Any]], path: Path) -> Path:
    import numpy as np

    _, plt = _plt()
    sets = ("seen", "fresh", "long")
    fig, axes = plt.subplots(1, len(sets), figsize=(12, 4.5), sharey=True)
    x = np.arange(len(rows))
    for ax, s in zip(axes, sets, strict=True):
        for k, which in enumerate(("best", "last")):
            vals = [_num(r["accuracy"][which][s]["acc"]) for r in rows]
            ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label=f"{which} checkpoint")
        ax.set_xticks(x)
        ax.set_xticklabels([r["name"] for r in rows], rotation=30, ha="right", fontsize="small")
        ax.set_title(f"{s} items")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("exact-match accuracy")
    axes[0].legend(fontsize="small")
    fig.suptitle("E3: best (restored) vs last checkpoint")
    return _save(fig, path)


def _e3_markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    headers = [
        "point",
        "L1",
        "L2",
        "dropout",
        "stop",
        "steps",
        "~epochs",
        "best step",
        "first alert",
        "train loss best -> last",
        "OOD loss best -> last",
        "seen acc best / last",
        "fresh acc best / last",
        "longer acc best / last",
    ]
    out = []
    for r in rows:
        a, b, last = r["accuracy"], r["at_best"], r["at_last"]
        fa = r["first_alert"]
        out.append(
            [
                r["name"],
                _fmt(r["l1"], "g"),
                _fmt(r["l2"], "g"),
                f"{r['resid_dropout']:g}/{r['attn_dropout']:g}",
                "early" if r["stop_reason"] == "early_stopping" else r["stop_reason"],
                _fmt(r["steps"], ",d"),
                _fmt(r["epochs"], ".0f"),
                _fmt(r["best_step"], "d"),
                f"{fa['metric']} @ {fa['step']}" if fa else "none",
                f"{_fmt(b['train_loss'], '.3f')} -> {_fmt(last['train_loss'], '.3f')}",
                f"{_fmt(b['ood_loss'], '.3f')} -> {_fmt(last['ood_loss'], '.3f')}",
                *[
                    f"{_fmt(a['best'][s]['acc'], '.3f')} / {_fmt(a['last'][s]['acc'], '.3f')}"
                    for s in ("seen", "fresh", "long")
                ],
            ]
        )
    n = rows[0]["accuracy"]["best"]["fresh"]["n"] if rows else 0
    notes = [
        "",
        f"- best: the checkpoint with the best `{rows[0]['best_metric'] if rows else '?'}` "
        "(restored at the end: monitor.restore_best); last: the final checkpoint (at the early "
        "stop, or at the end of the budget).",
        "- ~epochs: input slots trained / tokens in the training set (padding counted).",
        "- train loss: mean of the last 5 training records before the eval; OOD loss: "
        f"`{settings.get('ood_loss_metric', 'fresh/loss')}`, the loss on a prepared split of "
        "fresh problems of the training lengths.",
        f"- accuracies: greedy exact match of the exported best/last weights "
        f"(`score_items`) on {n} items per set: seen = training items, fresh = new problems of "
        "the training lengths, longer = new problems longer than any trained (up to 2x).",
        "",
        "Plots: e3_<point>_history.png (training loss and OOD metrics with alerts and the "
        "early stop), e3_best_vs_last.png.",
    ]
    return md_table(headers, out) + "\n" + "\n".join(notes) + "\n"


# ---------------------------------------------------------------------- E4 generalization valley


def run_e4(ctx: Context) -> tuple[dict[str, Any], str, list[Path]]:
    """Each size trained on the same multi-task source over the complexity ladder, then the
    valley suite (`lengthwise eval RUN --suite valley`): ID (trained items) vs OOD (fresh items
    of the same lengths) per level, and the critical complexity."""
    from lengthwise.eval import suites
    from lengthwise.eval.valley import format_valley

    spec = ctx.spec
    n = int(spec.settings.get("n", 100))
    batch = int(spec.settings.get("batch_size", 100))
    rows, run_dirs = [], []
    for point in spec.points:
        run_dir, cfg, summary = train_point(ctx, point)
        run_dirs.append(run_dir)
        lm = suites.load_lm(run_dir)
        out = run_dir / "eval"
        out.mkdir(parents=True, exist_ok=True)
        t0, c0 = time.time(), time.process_time()
        result, _ = suites.suite_valley(lm, cfg, out, n=n, batch_size=batch)
        shutil.copyfile(out / "valley.png", ctx.exp_dir / f"e4_{point.name}_valley.png")
        src = cfg.data.splits["train"]
        m = cfg.model
        rows.append(
            {
                "name": point.name,
                "labels": point.labels,
                "model": f"{m.n_layer} x {m.d_model}",
                "n_layer": m.n_layer,
                "d_model": m.d_model,
                "params": sum(p.numel() for p in lm.model.parameters()),
                "run_dir": str(run_dir),
                "valley_json": str(out / "valley.json"),
                "tasks": list(src.task) if isinstance(src.task, list) else [src.task],
                "train_items": src.n,
                "train_lengths": list(src.lengths),
                "format": src.format,
                "steps": summary["steps"],
                "tokens": summary["tokens"],
                "epochs": _epochs(read_records(run_dir)),
                "train_wall_seconds": summary["wall_seconds"],
                "train_cpu_seconds": summary["cpu_seconds"],
                "eval_wall_seconds": round(time.time() - t0, 1),
                "eval_cpu_seconds": round(time.process_time() - c0, 1),
                "levels": result["levels"],
                "per_task": result["per_task"],
                "critical": result["critical"],
                "critical_by": result["critical_by"],
                "valley_text": format_valley(result),
            }
        )
    crit = [r["critical"]["level"] if r["critical"] else None for r in rows]
    results = {
        "items_per_task": n,
        "critical_levels": {r["name"]: c for r, c in zip(rows, crit, strict=True)},
        "moves_right": critical_moves_right(
            [(r["params"], c) for r, c in zip(rows, crit, strict=True)]
        ),
        "points": rows,
    }
    _plot_e4(rows, ctx.exp_dir / "e4_valley_by_size.png")
    return results, _e4_markdown(rows, results), run_dirs


def critical_moves_right(sizes: list[tuple[int, int | None]]) -> bool | None:
    """Does the critical level move right with model size (Scylla's finding for LLMs)?
    `sizes`: (parameters, critical level or None) per model. True when the levels, ordered by
    parameters, never decrease and are not all equal; None when a model has no critical level
    or there are fewer than two models."""
    levels = [c for _, c in sorted(sizes, key=lambda x: x[0])]
    if len(levels) < 2 or any(c is None for c in levels):
        return None
    return all(a <= b for a, b in itertools.pairwise(levels)) and len(set(levels)) > 1


def _epochs(records: list[dict[str, Any]]) -> int | None:
    """Passes over the training set begun: the epoch of the last train record, plus one."""
    epochs = [r["epoch"] for r in records if r["event"] == "train" and "epoch" in r]
    return int(epochs[-1]) + 1 if epochs else None


def _plot_e4(rows: list[dict[str, Any]], path: Path) -> Path:
    _, plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for k, r in enumerate(rows):
        color = f"C{k}"
        levels = r["levels"]
        x = [lv["level"] for lv in levels]
        label = f"{r['name']} ({r['model']}, {r['params'] / 1e6:.2f}M)"
        by = r["critical_by"]
        axes[0].plot(x, [_num(lv[by]) for lv in levels], "o-", color=color, label=label)
        axes[0].plot(x, [_num(lv["abs_gap"]) for lv in levels], ":", color=color, alpha=0.7)
        if r["critical"]:
            c = r["critical"]
            axes[0].plot([c["level"]], [_num(c[by])], "*", ms=16, color=color)
        axes[1].plot(x, [_num(lv["id_acc"]) for lv in levels], "o-", color=color, label=label)
        axes[1].plot(x, [_num(lv["ood_acc"]) for lv in levels], "s--", color=color)
    if rows:
        levels = rows[0]["levels"]
        for ax in axes:
            ax.set_xticks([lv["level"] for lv in levels])
            ax.set_xticklabels([f"{lv['complexity']}\n(L{lv['level']})" for lv in levels])
            ax.set_ylim(-0.03, 1.05)
            ax.grid(alpha=0.3)
            ax.set_xlabel("complexity level")
        by = rows[0]["critical_by"]
        axes[0].set_ylabel(f"{by} (solid), abs_gap (dotted); * critical")
        axes[1].set_ylabel("accuracy: ID (solid), OOD (dashed)")
        axes[0].legend(fontsize="small", loc="best")
    axes[0].set_title("ID - OOD gap by complexity, per model size")
    axes[1].set_title("ID and OOD accuracy")
    fig.suptitle("E4: generalization valley across model sizes")
    return _save(fig, path)


def _e4_markdown(rows: list[dict[str, Any]], results: dict[str, Any]) -> str:
    by = rows[0]["critical_by"] if rows else "rel_gap"
    headers = ["size", "model", "params", "tokens", "epochs", "train CPU min (wall)", "critical"]
    out = []
    for r in rows:
        c = r["critical"]
        out.append(
            [
                r["name"],
                r["model"],
                _fmt(r["params"], ",d"),
                _fmt(r["tokens"], ",d"),
                _fmt(r["epochs"], "d"),
                f"{r['train_cpu_seconds'] / 60:.1f} ({r['train_wall_seconds'] / 60:.1f})",
                f"{c['complexity']} (L{c['level']}, {by} {c[by]:.3f})" if c else "none",
            ]
        )
    parts = [md_table(headers, out), ""]
    mr = results["moves_right"]
    parts.append(
        "Critical complexity by size (smallest first): "
        + ", ".join(
            f"{r['name']} L{r['critical']['level']}" if r["critical"] else f"{r['name']} none"
            for r in sorted(rows, key=lambda r: r["params"])
        )
        + f"; moves right with size: {'n/a' if mr is None else ('yes' if mr else 'no')}."
    )
    level_headers = ["level", "complexity", "tasks", "ID acc", "OOD acc", "gap", "rel gap"]
    for r in rows:
        crit = r["critical"]["level"] if r["critical"] else None
        lines = [
            [
                f"{lv['level']}" + (" (critical)" if lv["level"] == crit else ""),
                lv["complexity"],
                ", ".join(lv["tasks"]),
                _fmt(lv["id_acc"], ".3f"),
                _fmt(lv["ood_acc"], ".3f"),
                _fmt(lv["abs_gap"], ".3f"),
                _fmt(lv["rel_gap"], ".3f"),
            ]
            for lv in r["levels"]
        ]
        parts += ["", f"### {r['name']} ({r['model']}, {r['params']:,} parameters)", ""]
        parts.append(md_table(level_headers, lines))
    n = results["items_per_task"]
    parts += [
        "",
        f"- ID: the first {n} training items of each task; OOD: {n} fresh items per task of the "
        "same lengths (`lengthwise eval RUN --suite valley`); accuracy counts every item, "
        "unparseable answers are wrong; tasks of one level are pooled.",
        f"- gap = max(ID - OOD, 0); rel gap = gap / ID (Scylla's measure_id_ood_gap); the "
        f"critical complexity is the level with the largest {by} (lengthwise.eval.valley).",
        "- epochs: passes over the training problems begun (the last training record's epoch).",
        "",
        "Plots: e4_valley_by_size.png (gap and ID/OOD per level, one line per size), "
        "e4_<size>_valley.png (the suite's plot per size).",
    ]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------- E5 memorization


def skewed_items(settings: dict[str, Any]) -> list[Any]:
    """Task items whose operands are drawn from a Zipf law over a random ranking of the values
    of the given length (so frequency is unrelated to magnitude): p(rank r) ~ 1 / r^s."""
    from lengthwise.tasks import get_task

    s = dict(settings.get("skewed") or {})
    task = get_task(s.get("task", "addition"), **(s.get("params") or {}))
    length = int(s.get("length", 2))
    fmt = s.get("format", "direct")
    n = int(s.get("n", 1000))
    zipf = float(s.get("zipf_s", 1.1))
    lo, hi = (0, 9) if length == 1 else (10 ** (length - 1), 10**length - 1)
    values = list(range(lo, hi + 1))
    random.Random(f"rank:{s.get('rank_seed', 0)}").shuffle(values)  # which values are frequent
    rng = random.Random(int(s.get("seed", 0)))
    weights = [1.0 / (r + 1) ** zipf for r in range(len(values))]
    out = []
    for _ in range(n):
        a, b = rng.choices(values, weights, k=2)
        out.append(task.render((a, b), fmt))
    return out


def skewed_eval_items(settings: dict[str, Any], n: int, exclude: set[str]) -> list[Any]:
    """Fresh items (none in the training set) for the skewed arm: operands from the same Zipf
    law as training (``skewed.eval_from: skewed``, the default), so that the evaluated items
    span the whole frequency range, or uniform (``eval_from: uniform``, as the suite draws)."""
    from lengthwise.tasks import generate_items, get_task

    s = dict(settings.get("skewed") or {})
    if s.get("eval_from", "skewed") == "uniform":
        task = get_task(s.get("task", "addition"), **(s.get("params") or {}))
        length = int(s.get("length", 2))
        fmt = s.get("format", "direct")
        return list(generate_items(task, (length, length), n, fmt, 30_000, exclude=exclude))
    out: list[Any] = []
    pool = skewed_items({"skewed": {**s, "n": 50 * n, "seed": int(s.get("seed", 0)) + 30_000}})
    for it in pool:
        if it.key not in exclude:
            out.append(it)
            if len(out) == n:
                return out
    raise UserError(f"E5: fewer than {n} fresh skewed items in {len(pool)} draws")


def write_skewed_jsonl(items: list[Any], path: Path) -> None:
    from lengthwise.data.tokenizer import atomic_write_text

    text = "".join(json.dumps({"text": it.prompt + it.completion}) + "\n" for it in items)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return  # unchanged: keep its mtime, so `prepare` sees the same inputs
    atomic_write_text(path, text)


def memorization_on_texts(
    lm: Any, task: Any, items: list[Any], texts: Any, out: Path, mode: str = "numbers"
) -> dict[str, Any]:
    """What `suite_memorization` computes, with the term counts taken from any training texts
    (here: the skewed JSONL documents) instead of a task source; writes the same
    memorization.json and memorization.png."""
    import numpy as np

    from lengthwise.eval import plots
    from lengthwise.eval.accuracy import score_items
    from lengthwise.eval.memorization import count_terms, item_frequency, memorization_report
    from lengthwise.eval.suites import write_json

    score = score_items(lm, task, items)
    counts = count_terms(texts, {t for it in items for t in it.terms}, mode=mode)
    freq = item_frequency([it.terms for it in items], counts)
    report = memorization_report(freq, np.asarray(score.per_item, dtype=float))
    result = {"model": lm.name, "n_items": len(items), "terms": mode, **report}
    result["items"] = [
        {"key": it.key, "frequency": float(f), "correct": bool(c)}
        for it, f, c in zip(items, freq, score.per_item, strict=True)
    ]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "memorization.json", result)
    plots.plot_memorization(
        freq, np.asarray(score.per_item, float), report, out / "memorization.png"
    )
    return result


def run_e5(ctx: Context) -> tuple[dict[str, Any], str, list[Path]]:
    from lengthwise.eval import suites
    from lengthwise.tasks import get_task

    spec = ctx.spec
    n_eval = int(spec.settings.get("n", 500))
    skew_path = ctx.exp_dir / "skewed_train.jsonl"
    skewed = skewed_items(spec.settings)
    write_skewed_jsonl(skewed, skew_path)
    skew_keys = {it.key for it in skewed}
    rows, run_dirs = [], []
    for point in spec.points:
        run_dir, cfg, summary = train_point(ctx, point)
        run_dirs.append(run_dir)
        lm = suites.load_lm(run_dir)
        out = run_dir / "eval"
        out.mkdir(parents=True, exist_ok=True)
        src = cfg.data.splits["train"]
        if src.kind == "task":  # the suite itself: lengthwise eval RUN --suite memorization
            kind = "task source"
            result, _ = suites.suite_memorization(lm, cfg, out, n=n_eval)
            n_train = src.n
        else:  # the skewed JSONL: same computation, terms counted in its documents
            kind = "skewed JSONL"
            s = spec.settings.get("skewed") or {}
            task = get_task(s.get("task", "addition"), **(s.get("params") or {}))
            fresh = skewed_eval_items(spec.settings, n_eval, skew_keys)
            texts = (json.loads(line)["text"] for line in skew_path.open(encoding="utf-8"))
            result = memorization_on_texts(lm, task, fresh, texts, out)
            n_train = len(skewed)
        shutil.copyfile(out / "memorization.png", ctx.exp_dir / f"e5_{point.name}_memorization.png")
        rows.append(
            {
                "name": point.name,
                "train_source": kind,
                "run_dir": str(run_dir),
                "memorization_json": str(out / "memorization.json"),
                "train_items": n_train,
                "tokens": summary["tokens"],
                "steps": summary["steps"],
                "wall_seconds": summary["wall_seconds"],
                "n_items": result["n_items"],
                "accuracy": result["accuracy"],
                "frequency": result["frequency"],
                "pearson": result["pearson"],
                "spearman": result["spearman"],
                "bootstrap": result["bootstrap"],
                "decile": result["decile"],
            }
        )
    _plot_e5_frequencies(rows, ctx.exp_dir / "e5_frequency_hist.png")
    results = {
        "skewed_train_file": str(skew_path),
        "skewed_train_items": len(skewed),
        "points": rows,
    }
    return results, _e5_markdown(rows, spec.settings), run_dirs


def _plot_e5_frequencies(rows: list[dict[str, Any]], path: Path) -> Path:
    _, plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for r in rows:
        data = json.loads(Path(r["memorization_json"]).read_text())
        freq = [it["frequency"] for it in data["items"]]
        ax.hist(freq, bins=30, alpha=0.5, label=f"{r['name']} ({r['train_source']})")
    ax.set_xlabel("item term frequency in the training data (min over its operands)")
    ax.set_ylabel("evaluated items")
    ax.set_title("E5: how skewed the training frequencies of the evaluated items are")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def _ci(c: dict[str, Any] | None, key: str) -> str:
    if not c or c.get(key) is None:
        return "n/a"
    s = f"{c[key]:+.3f}"
    if c.get("ci"):
        s += f" [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]"
    return s


def _e5_markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    headers = [
        "training set",
        "source",
        "train items",
        "eval items",
        "accuracy",
        "term freq min / median / max",
        "Pearson r (log freq) [95% CI]",
        "Spearman rho [95% CI]",
        "top vs bottom decile acc (gap)",
    ]
    out = []
    for r in rows:
        f, d = r["frequency"], r["decile"]
        out.append(
            [
                r["name"],
                r["train_source"],
                _fmt(r["train_items"], ",d"),
                _fmt(r["n_items"], ",d"),
                _fmt(r["accuracy"], ".3f"),
                f"{_fmt(f['min'], 'g')} / {_fmt(f['median'], 'g')} / {_fmt(f['max'], 'g')}",
                _ci(r["pearson"], "r"),
                _ci(r["spearman"], "rho"),
                (
                    f"{d['top']['acc']:.3f} vs {d['bottom']['acc']:.3f} ({d['gap']:+.3f})"
                    if d
                    else "-"
                ),
            ]
        )
    s = settings.get("skewed") or {}
    notes = [
        "",
        "- Items: fresh problems (never in the training data) of the training length; an "
        "item's frequency is the smaller of its two operands' counts in the training texts "
        "(digit runs, answers included).",
        "- task source: `lengthwise eval RUN --suite memorization` on a run trained on a task "
        "source with a small n, so operand counts vary by chance only.",
        f"- skewed JSONL: operands drawn from a Zipf law (s = {s.get('zipf_s', 1.1)}) over a "
        "random ranking of the values, written as JSONL documents `a+b=c`. JSONL documents get "
        "loss on the prompt too (a task source masks it), so the two arms differ in that as "
        "well; the memorization numbers are computed exactly as the suite does, with terms "
        "counted in the JSONL.",
        "- CIs: percentile bootstrap over items (1000 resamples).",
        "",
        "Plots: e5_<point>_memorization.png, e5_frequency_hist.png.",
    ]
    return md_table(headers, out) + "\n" + "\n".join(notes) + "\n"


# ---------------------------------------------------------------------- entry point

RUNNERS = {"E1": run_e1, "E2": run_e2, "E3": run_e3, "E4": run_e4, "E5": run_e5}


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


def run_experiment(
    experiment: str,
    quick: bool = False,
    budget_minutes: float | None = None,
    out: Path | None = None,
    spec_file: Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run one experiment end to end; returns the results written to OUT/EXP/results.json."""
    if experiment not in IMPLEMENTED:
        raise UserError(f"experiment {experiment}: not implemented yet")
    spec = load_spec(spec_file or spec_path(experiment), experiment, quick)
    if budget_minutes is not None and not budget_minutes > 0:
        raise UserError(f"--budget-minutes must be > 0, got {budget_minutes}")
    exp_dir = Path(out or "runs/experiments") / experiment
    exp_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        spec=spec,
        exp_dir=exp_dir,
        command=command_line(experiment, quick, budget_minutes, out, spec_file),
        budget_minutes=budget_minutes if budget_minutes is not None else spec.budget_minutes,
        quiet=quiet,
        log=(lambda _m: None) if quiet else print,
    )
    if any(p.minutes is None for p in spec.points):
        point_minutes(ctx)  # a budget below the fixed minutes fails here, before any training
    if spec.base is not None:
        ctx.base_path = spec.base
    else:
        from lengthwise.data.tokenizer import atomic_write_text

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
        results, tables, run_dirs = RUNNERS[experiment](ctx)
    finally:
        torch.set_num_threads(threads)
    results = {
        "experiment": experiment,
        "title": spec.title,
        "command": ctx.command,
        "out_dir": str(exp_dir),
        "spec": str(spec.path),
        "quick": quick,
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
