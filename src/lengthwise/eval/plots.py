"""PNG plots for the evaluation suites and the training monitor, and the plotting setup that
every lengthwise figure shares (the report's and the experiments' too).

Every writer renders with matplotlib's Agg backend (headless; selected here before pyplot is
imported) and writes its PNG through :func:`save_figure` (atomically, with the umask applied, by
:mod:`lengthwise.io`), so a reader never sees a half-written PNG; each returns the final path.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lengthwise.io import atomic_write_bytes  # noqa: E402

# Labels and titles are data (run folder names, set names, config values), never TeX: with math
# parsing on, a run folder named `run$x$_1` is typeset and `a$b` is a ParseException at savefig.
plt.rcParams["text.parse_math"] = False

DPI = 120
_SIZE = (7.5, 4.5)


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG to ``path`` (atomically) and close it; returns the path."""
    path = Path(path)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def as_float(x: Any) -> float:
    """A float, NaN for None/non-numbers (so gaps show as breaks in lines)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def empty_note(ax: Any, text: str) -> None:
    """Grey text in the middle of an axes that has nothing to show (and says why)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


# ---------------------------------------------------------------------- lengths


def plot_length_accuracy(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Accuracy vs length multiple (1x, 2x, 4x ... of the longest training length), one line per
    task (per model and task when rows carry ``model``). Rows: ``multiple``, ``acc`` (or
    ``accuracy``), ``task`` and optionally ``model``, ``length``."""
    lines: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        label = str(r.get("task", "task"))
        if r.get("model") is not None:
            label = f"{r['model']} / {label}"
        acc = r.get("acc", r.get("accuracy"))
        lines.setdefault(label, []).append((as_float(r["multiple"]), as_float(acc)))
    fig, ax = plt.subplots(figsize=_SIZE)
    mults = sorted({m for pts in lines.values() for m, _ in pts if m > 0})
    for label, pts in sorted(lines.items()):
        pts.sort()
        ax.plot([m for m, _ in pts], [a for _, a in pts], marker="o", label=label)
    if mults:
        ax.set_xscale("log", base=2)
        ax.set_xticks(mults)
        ax.set_xticklabels([f"{m:g}x" for m in mults])
        ax.axvline(1.0, color="0.5", ls=":", lw=1, label="training length")
        ax.margins(x=0.06)
    else:
        empty_note(ax, "no rows")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("sequence length (multiple of the longest training length)")
    ax.set_ylabel("exact-match accuracy")
    ax.set_title("Task accuracy vs length")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize="small", loc="best")
    return save_figure(fig, path)


def _bucket_mean(y: np.ndarray, n_buckets: int, log: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``y`` (NaN-aware) over position buckets, log- or linearly spaced; the x of each
    bucket is its mean 1-based position."""
    pos = np.arange(1, len(y) + 1, dtype=np.float64)
    if len(y) <= n_buckets:
        return pos, y
    if log:
        edges = np.unique(np.round(np.geomspace(1, len(y) + 1, n_buckets + 1)).astype(int))
    else:
        edges = np.unique(np.linspace(1, len(y) + 1, n_buckets + 1).astype(int))
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        seg = y[lo - 1 : hi - 1]
        ok = np.isfinite(seg)
        if ok.any():
            xs.append(pos[lo - 1 : hi - 1][ok].mean())
            ys.append(seg[ok].mean())
    return np.asarray(xs), np.asarray(ys)


def plot_position_loss(
    per_position: Mapping[str, Sequence[float]],
    train_len: int,
    path: str | os.PathLike[str],
    log_x: bool = True,
    n_buckets: int = 120,
) -> Path:
    """Mean loss vs token position (1-based), one line per name, averaged over ``n_buckets``
    position buckets (log-spaced when ``log_x``) so thousands of positions render cleanly, with
    the raw curve faint behind it and a vertical line at the training length."""
    fig, ax = plt.subplots(figsize=_SIZE)
    drawn = False
    for name, curve in per_position.items():
        y = np.asarray([as_float(v) for v in curve], dtype=np.float64)
        if not np.isfinite(y).any():
            continue
        (line,) = ax.plot(*_bucket_mean(y, n_buckets, log_x), lw=1.8, label=name)
        ax.plot(np.arange(1, len(y) + 1), y, lw=0.5, alpha=0.2, color=line.get_color())
        drawn = True
    ax.axvline(train_len, color="crimson", ls="--", lw=1.2, label=f"training length {train_len}")
    if log_x:
        ax.set_xscale("log")
    if not drawn:
        empty_note(ax, "no finite losses")
    ax.set_xlabel("token position" + (" (log scale)" if log_x else ""))
    ax.set_ylabel("loss (nats / token)")
    ax.set_title("Per-position loss beyond the training length")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="best")
    return save_figure(fig, path)


# ---------------------------------------------------------------------- valley


def plot_valley(table: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """ID and OOD accuracy (lines) and the gap (bars: absolute; dashed: relative) per complexity
    level of a :func:`lengthwise.eval.valley.valley_table`, the critical level shaded."""
    levels = list(table["levels"])
    fig, ax = plt.subplots(figsize=_SIZE)
    x = np.arange(len(levels))
    if levels:
        ax.bar(
            x,
            [as_float(lv["abs_gap"]) for lv in levels],
            width=0.5,
            color="0.8",
            label="gap (ID - OOD)",
        )
        ax.plot(
            x, [as_float(lv["id_acc"]) for lv in levels], "o-", color="tab:blue", label="ID acc"
        )
        ax.plot(
            x, [as_float(lv["ood_acc"]) for lv in levels], "s-", color="tab:orange", label="OOD acc"
        )
        ax.plot(
            x,
            [as_float(lv["rel_gap"]) for lv in levels],
            "^--",
            color="tab:red",
            label="relative gap",
        )
        ax.set_xticks(x)
        ax.set_xticklabels([f"{lv['complexity']}\n(L{lv['level']})" for lv in levels])
    else:
        empty_note(ax, "no levels")
    crit = table.get("critical")
    if crit is not None:
        i = next(i for i, lv in enumerate(levels) if lv["level"] == crit["level"])
        ax.axvspan(i - 0.4, i + 0.4, color="tab:red", alpha=0.08)
        by = crit.get("by", table.get("critical_by", "rel_gap"))
        ax.annotate(
            f"critical: {crit['complexity']}\n{by} = {as_float(crit[by]):.3f}",
            xy=(i, 1.0),
            xytext=(0, -4),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize="small",
            color="tab:red",
        )
    ax.set_ylim(-0.03, 1.08)
    ax.set_xlabel("complexity level")
    ax.set_ylabel("accuracy / gap")
    ax.set_title("Generalization valley: ID vs OOD accuracy by complexity")
    ax.grid(alpha=0.3, axis="y")
    if levels:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


# ---------------------------------------------------------------------- memorization


def _ci_text(c: Mapping[str, Any] | None, key: str, sym: str) -> str:
    if not c or c.get(key) is None:
        return f"{sym} = n/a"
    s = f"{sym} = {c[key]:+.3f}"
    if c.get("ci"):
        s += f" [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]"
    return s


def plot_memorization(
    freq: Sequence[float],
    correct_or_acc: Sequence[float],
    report: Mapping[str, Any],
    path: str | os.PathLike[str],
) -> Path:
    """Per-item correctness (jittered when 0/1) against term frequency + 1 on a log x axis, the
    binned accuracy line from ``report["bins"]`` (of :func:`memorization_report`), and r / rho
    with their bootstrap CIs in the title."""
    x = np.asarray(freq, dtype=np.float64)
    y = np.asarray(correct_or_acc, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    fig, ax = plt.subplots(figsize=_SIZE)
    if len(x):
        binary = bool(np.isin(y, (0.0, 1.0)).all())
        jitter = np.random.default_rng(0).uniform(-0.04, 0.04, len(y)) if binary else 0.0
        ax.scatter(x + 1.0, y + jitter, s=8, alpha=0.3, color="tab:blue", lw=0, label="items")
    else:
        empty_note(ax, "no items")
    bins = report.get("bins") or []
    if bins:
        bx = [b["freq_median"] + 1.0 for b in bins]
        ax.plot(
            bx,
            [b["acc"] for b in bins],
            "o-",
            color="tab:red",
            lw=2,
            label=f"accuracy per frequency bin ({len(bins)} bins)",
        )
    ax.set_xscale("log")
    ax.set_ylim(-0.08, 1.08)
    ax.set_xlabel("term frequency in training data + 1 (log scale)")
    ax.set_ylabel("correct (jittered) / accuracy")
    pearson = _ci_text(report.get("pearson"), "r", "r")
    spearman = _ci_text(report.get("spearman"), "rho", "ρ")
    ci = report.get("bootstrap", {}).get("ci")
    level = f" ({ci:.0%} CI)" if ci else ""
    title = f"Accuracy vs term frequency\n{pearson}, {spearman}{level}"
    d = report.get("decile")
    if d:
        title += f", top-bottom decile gap {d['gap']:+.3f}"
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3, which="both")
    if len(x) or bins:
        ax.legend(fontsize="small", loc="best")
    return save_figure(fig, path)


# ---------------------------------------------------------------------- training history


def _xkey(records: Sequence[Mapping[str, Any]], x: str) -> str:
    if x != "auto":
        return x
    return "tokens" if any("tokens" in r for r in records) else "step"


def plot_metric_history(
    records: Iterable[Mapping[str, Any]],
    metrics: Sequence[str],
    path: str | os.PathLike[str],
    alerts: Iterable[Mapping[str, Any]] | None = None,
    stop_step: float | None = None,
    x: str = "auto",
) -> Path:
    """Each metric over training (one panel per metric, shared x axis), from ``records`` such as
    ``metrics.jsonl`` events; records without a metric are skipped for it.

    ``x`` is the record key on the x axis; "auto" uses ``tokens`` when records have it, else
    ``step``. ``alerts`` (e.g. monitor alert events) are marked with a red triangle on the panel
    of their ``metric`` (every panel when they name none) at their ``value`` when given, else on
    the metric's curve; hollow when the alert says its drop is within the eval noise
    (``significant`` false). ``stop_step`` draws the early-stop vertical line, in x-axis units.
    """
    records = list(records)
    alerts = list(alerts or [])
    metrics = list(metrics)
    xk = _xkey(records, x)
    n = max(1, len(metrics))
    fig, axes = plt.subplots(n, 1, figsize=(_SIZE[0], 1.2 + 2.3 * n), sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics or ["(no metrics)"], strict=True):
        pts = sorted(
            (as_float(r[xk]), as_float(r[metric]))
            for r in records
            if metric in r and xk in r and math.isfinite(as_float(r[metric]))
        )
        xs = np.asarray([p[0] for p in pts])
        ys = np.asarray([p[1] for p in pts])
        if len(pts):
            ax.plot(xs, ys, marker="." if len(pts) < 60 else None, lw=1.5, label=metric)
        else:
            empty_note(ax, f"no values for {metric}")
        mine = [a for a in alerts if a.get("metric") in (None, metric) and xk in a]
        noise = [a for a in mine if a.get("significant") is False]
        rest = [a for a in mine if a.get("significant") is not False]
        for group, hollow in ((noise, True), (rest, False)):
            if not group:
                continue
            ax_x = [as_float(a[xk]) for a in group]
            ay = [
                as_float(a["value"])
                if a.get("value") is not None
                else (float(np.interp(as_float(a[xk]), xs, ys)) if len(xs) else math.nan)
                for a in group
            ]
            ax.scatter(
                ax_x,
                ay,
                marker="v",
                s=60,
                color="none" if hollow else "crimson",
                edgecolors="crimson",
                zorder=5,
                label="alert within noise" if hollow else "alert",
            )
        if stop_step is not None:
            ax.axvline(stop_step, color="0.2", ls="--", lw=1.2, label=f"early stop ({stop_step:g})")
        ax.set_ylabel(metric, fontsize="small")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="best")
    axes[-1, 0].set_xlabel(xk)
    axes[0, 0].set_title("Metrics over training")
    return save_figure(fig, path)
