"""Figures that compare runs, for `lengthwise report`.

Every function takes plain data read from run directories (label -> records or JSON dicts), draws
with matplotlib's Agg backend and writes one PNG atomically through
:func:`lengthwise.eval.plots.save_figure` (atomically); each returns the path.
Single-run evaluation plots (length accuracy, position loss, valley, memorization) are reused
from :mod:`lengthwise.eval.plots`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from lengthwise.eval.plots import as_float, empty_note, plt, save_figure

WIDE = (12.0, 4.4)
SIZE = (7.5, 4.5)
# quantities of an eval record that get their own panel, in this order; ppl is exp(loss)
PANEL_ORDER = ("loss", "acc", "parse_rate")
SKIP_SUFFIXES = ("ppl",)


def smooth(y: Sequence[float], frac: float = 0.04) -> np.ndarray:
    """Debiased exponential moving average (as TensorBoard draws it) whose span is ``frac`` of the
    series length; NaNs are carried over without disturbing the average."""
    y = np.asarray(y, dtype=np.float64)
    span = max(1.0, frac * len(y))
    alpha = 2.0 / (span + 1.0)
    out = np.full_like(y, np.nan)
    avg, weight = 0.0, 0.0
    for i, v in enumerate(y):
        if math.isfinite(v):
            avg = (1 - alpha) * avg + alpha * v
            weight = (1 - alpha) * weight + alpha
        if weight > 0:
            out[i] = avg / weight
    return out


def wall_clock(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Seconds since the run started for each record; a resumed run restarts its clock at 0, so a
    backwards jump continues from the last time seen (time summed over the run's sessions)."""
    out, offset, last = [], 0.0, 0.0
    for r in records:
        t = as_float(r.get("time"))
        if not math.isfinite(t):
            out.append(math.nan)
            continue
        if t + offset < last:
            offset = last
        last = t + offset
        out.append(last)
    return np.asarray(out, dtype=np.float64)


def _series(records: Sequence[Mapping[str, Any]], key: str, x: str = "tokens"):
    pts = [(as_float(r.get(x)), as_float(r.get(key))) for r in records if key in r]
    pts = [p for p in pts if math.isfinite(p[0])]
    return np.asarray([p[0] for p in pts]), np.asarray([p[1] for p in pts])


def _legend(ax: Any, n: int) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small" if n < 6 else "x-small", loc="best", framealpha=0.85)


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {lab: cycle[i % len(cycle)] for i, lab in enumerate(labels)}


# ---------------------------------------------------------------------- training loss


def plot_loss_curves(
    train: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike[str],
    title: str = "",
) -> Path:
    """Training loss of every run against tokens (left) and wall-clock time (right): the smoothed
    curve bold, the raw values faint behind it. Give it runs that read one token store: their
    tokens are the same tokens (see :func:`lengthwise.report.runs.group_by_store`)."""
    fig, (ax_t, ax_w) = plt.subplots(1, 2, figsize=WIDE, sharey=True)
    colors = _colors(list(train))
    for label, recs in train.items():
        recs = [r for r in recs if "loss" in r]
        if not recs:
            continue
        y = np.asarray([as_float(r["loss"]) for r in recs])
        xs = {
            ax_t: np.asarray([as_float(r.get("tokens")) for r in recs]),
            ax_w: wall_clock(recs),
        }
        for ax, x in xs.items():
            ax.plot(x, y, lw=0.6, alpha=0.25, color=colors[label])
            ax.plot(x, smooth(y), lw=1.8, color=colors[label], label=label)
    ax_t.set_xlabel("tokens trained")
    ax_w.set_xlabel("wall-clock time (s)")
    ax_t.set_ylabel("training loss (nats / token)")
    ax_t.set_title("Training loss vs tokens")
    ax_w.set_title("Training loss vs wall time")
    for ax in (ax_t, ax_w):
        ax.grid(alpha=0.3)
        if not ax.lines:
            empty_note(ax, "no training records")
        _legend(ax, len(train))
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------------- throughput


def plot_throughput(
    train: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike[str],
    title: str = "",
) -> Path:
    """Tokens per second over training, one line per run (smoothed, raw faint), with each run's
    median as a dotted horizontal line. A log axis when the medians differ by more than 10x
    (a text model next to a tiny task model), so the slow runs are not flattened at zero."""
    fig, ax = plt.subplots(figsize=SIZE)
    colors = _colors(list(train))
    medians = []
    for label, recs in train.items():
        x, y = _series(recs, "tokens_per_s")
        ok = np.isfinite(y)
        if not ok.any():
            continue
        med = float(np.median(y[ok]))
        medians.append(med)
        ax.plot(x, y, lw=0.6, alpha=0.25, color=colors[label])
        ax.plot(x, smooth(y), lw=1.8, color=colors[label], label=f"{label} (median {med:,.0f})")
        ax.axhline(med, color=colors[label], ls=":", lw=1)
    if not ax.lines:
        empty_note(ax, "no tokens_per_s in the training records")
    ax.set_xlabel("tokens trained")
    if medians and min(medians) > 0 and max(medians) > 10 * min(medians):
        ax.set_yscale("log")
        ax.set_ylabel("tokens / s (log scale)")
    else:
        ax.set_ylabel("tokens / s")
        ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_title("Throughput over training" + (f" ({title})" if title else ""))
    ax.grid(alpha=0.3)
    _legend(ax, len(train))
    return save_figure(fig, path)


# ---------------------------------------------------------------------- data accounting


def _attn_per_token(s: Mapping[str, Any]) -> float:
    """Attention FLOPs per input token: data_stats.json counts them per step, over
    input_tokens / steps_per_epoch input tokens per step."""
    attn, tokens, steps = (
        as_float(s.get(k)) for k in ("attn_flops", "input_tokens", "steps_per_epoch")
    )
    return attn * steps / tokens if tokens > 0 and steps > 0 else math.nan


def accounting_rows(stats: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per run (from data_stats.json): pad %, dropped %, attention FLOPs per input token relative
    to the first run that has them, and attention FLOPs as a share of all FLOPs."""
    per_token = {label: _attn_per_token(s) for label, s in stats.items()}
    ref = next((v for v in per_token.values() if math.isfinite(v) and v > 0), math.nan)
    rows = []
    for label, s in stats.items():
        attn, total = as_float(s.get("attn_flops")), as_float(s.get("total_flops"))
        rows.append(
            {
                "run": label,
                "strategy": s.get("strategy", "?"),
                "curriculum": s.get("curriculum", "?"),
                "pad_pct": 100 * as_float(s.get("pad_fraction")),
                "dropped_pct": 100 * as_float(s.get("dropped_fraction")),
                "attn_rel": per_token[label] / ref,
                "attn_share_pct": 100 * attn / total if total > 0 else math.nan,
                "mean_seq_len": as_float(s.get("mean_seq_len")),
                "cross_doc_pairs": as_float(s.get("cross_doc_pairs")),
            }
        )
    return rows


def plot_accounting(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Three horizontal bar panels, one bar per run (labelled with its strategy): padding %,
    dropped-token %, and attention FLOPs per input token relative to the first run."""
    panels = (
        ("pad_pct", "padding (% of slots)", "{:.1f}%"),
        ("dropped_pct", "dropped tokens (% of store)", "{:.1f}%"),
        ("attn_rel", f"attention FLOPs / token (x {rows[0]['run'] if rows else ''})", "{:.2f}x"),
    )
    n = len(rows)
    fig, axes = plt.subplots(1, 3, figsize=(WIDE[0], 1.4 + 0.45 * max(n, 2)), sharey=True)
    labels = [f"{r['run']}\n({r['strategy']})" for r in rows]
    y = np.arange(n)
    colors = list(_colors(labels).values())
    for ax, (key, title, fmt) in zip(axes, panels, strict=True):
        vals = np.asarray([as_float(r[key]) for r in rows])
        shown = np.where(np.isfinite(vals), vals, 0.0)
        ax.barh(y, shown, color=colors, height=0.6)
        top = float(np.nanmax(shown)) if n else 0.0
        for yi, v in zip(y, vals, strict=True):
            text = fmt.format(v) if math.isfinite(v) else "n/a"
            ax.text(v if math.isfinite(v) else 0, yi, " " + text, va="center", fontsize="small")
        ax.set_xlim(0, (top or 1.0) * 1.3)
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(labels, fontsize="small")
    axes[0].invert_yaxis()
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------------- sequence lengths


def seq_len_series(records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, bool]:
    """(steps, sequence lengths, every_step) of a run's train records.

    A train record's ``seq_lens`` lists the length T of every step since the previous train
    record, i.e. of steps (previous record's step, this record's step]; they are numbered back
    from the record's step. A record without it (logs written before the field existed) gives
    its own step's ``seq_len`` only, a sample every ``train.log_every_steps`` steps, and
    ``every_step`` is then False: Grow-P2's short buckets fall between the samples."""
    steps: list[float] = []
    lens: list[float] = []
    every_step = True
    for r in records:
        step = as_float(r.get("step"))
        if not math.isfinite(step):
            continue
        got = r.get("seq_lens")
        if isinstance(got, list):
            first = step - len(got) + 1
            steps.extend(first + i for i in range(len(got)))
            lens.extend(as_float(v) for v in got)
        elif "seq_len" in r:
            steps.append(step)
            lens.append(as_float(r["seq_len"]))
            every_step = False
    order = np.argsort(np.asarray(steps), kind="stable")
    return np.asarray(steps)[order], np.asarray(lens)[order], every_step


def plot_seq_len_schedule(
    train: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike[str]
) -> Path:
    """The sequence length (bucket) of every training step, one panel per run, on a log2 axis;
    for decomposition this is the curriculum (e.g. Grow-P2 cycles). Runs whose logs only sample
    it (see :func:`seq_len_series`) say so in their panel's title."""
    series = {lab: seq_len_series(recs) for lab, recs in train.items()}
    runs = [(lab, s) for lab, s in series.items() if len(s[0])]
    n = max(1, len(runs))
    fig, axes = plt.subplots(n, 1, figsize=(SIZE[0] + 1.5, 0.8 + 1.5 * n), squeeze=False)
    colors = _colors([lab for lab, _ in runs])
    for ax, (label, (x, y, every_step)) in zip(axes[:, 0], runs, strict=False):
        ax.step(x, y, where="post", lw=1.2 if len(x) < 200 else 0.5, color=colors[label])
        ax.plot(x, y, ".", ms=3 if len(x) < 500 else 1.5, color=colors[label])
        ok = y[np.isfinite(y) & (y > 0)]
        if len(ok):
            ax.set_yscale("log", base=2)
            ticks = 2.0 ** np.arange(np.floor(np.log2(ok.min())), np.ceil(np.log2(ok.max())) + 1)
            ax.set_yticks(ticks)
            ax.set_yticklabels([f"{t:g}" for t in ticks])
            ax.set_ylim(ticks[0] / 1.3, ticks[-1] * 1.3)
        note = "" if every_step else "  (sampled at logged steps only: no seq_lens in its log)"
        ax.set_title(label + note, fontsize="medium", loc="left")
        ax.set_ylabel("seq_len")
        ax.grid(alpha=0.3)
    if not runs:
        empty_note(axes[0, 0], "no seq_len in the training records")
    axes[-1, 0].set_xlabel("optimizer step")
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------------- eval loss, runs overlaid

SET_STYLES = ("-", "--", ":", "-.")


def plot_eval_loss_comparison(
    curves: Mapping[str, tuple[Sequence[Mapping[str, Any]], Sequence[str]]],
    tags: Mapping[str, Mapping[str, str]],
    path: str | os.PathLike[str],
    title: str = "",
) -> Path:
    """The headline comparison of runs that read one token store: eval loss against tokens
    (left) and against wall-clock seconds (right), one colour per run, one line style per eval
    set (in-distribution sets first, solid; OOD sets dashed and dotted).

    ``curves``: run label -> (eval records carrying ``tokens`` and ``wall``, the ``<set>/loss``
    keys to draw); ``tags``: run label -> set name -> "id" | "ood"."""
    fig, (ax_t, ax_w) = plt.subplots(1, 2, figsize=WIDE, sharey=True)
    colors = _colors(list(curves))

    ood: dict[str, bool] = {}  # set name -> OOD (in any run)
    for label, (_, keys) in curves.items():
        for key in keys:
            name = key.rsplit("/", 1)[0]
            tagged = tags.get(label, {}).get(name) == "ood" or name.startswith("ood")
            ood[name] = ood.get(name, False) or tagged
    names = sorted(ood, key=lambda name: (ood[name], name))  # ID sets first
    style = {name: SET_STYLES[i % len(SET_STYLES)] for i, name in enumerate(names)}
    for label, (evals, keys) in curves.items():
        for key in keys:
            pts = [
                (as_float(e.get("tokens")), as_float(e.get("wall")), as_float(e.get(key)))
                for e in evals
                if key in e
            ]
            pts = [p for p in pts if math.isfinite(p[2])]
            if not pts:
                continue
            tok, wall, loss = (np.asarray(c) for c in zip(*pts, strict=True))
            kw = {
                "color": colors[label],
                "ls": style[key.rsplit("/", 1)[0]],
                "lw": 1.8,
                "marker": "." if len(pts) < 60 else None,
            }
            ax_t.plot(tok, loss, **kw)
            ax_w.plot(wall, loss, **kw)
    handles = [Line2D([], [], color=c, lw=2.2, label=lab) for lab, c in colors.items()]
    handles += [
        Line2D([], [], color="0.3", ls=style[n], lw=1.5, label=f"{n} ({'OOD' if ood[n] else 'ID'})")
        for n in names
    ]
    ax_t.set_xlabel("tokens trained")
    ax_w.set_xlabel("wall-clock time (s)")
    ax_t.set_ylabel("eval loss (nats / token)")
    ax_t.set_title("Eval loss vs tokens")
    ax_w.set_title("Eval loss vs wall time")
    for ax in (ax_t, ax_w):
        ax.grid(alpha=0.3)
        if not ax.lines:
            empty_note(ax, "no <set>/loss in the eval records")
    if handles and ax_t.lines:
        ax_w.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------------- ID vs OOD


def eval_panels(records: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Eval metrics grouped by quantity (the part after '/'), in :data:`PANEL_ORDER` first;
    perplexity is left out (it is exp(loss))."""
    keys = dict.fromkeys(
        k for r in records for k in r if "/" in k and k.rsplit("/", 1)[1] not in SKIP_SUFFIXES
    )
    panels: dict[str, list[str]] = {}
    for k in keys:
        panels.setdefault(k.rsplit("/", 1)[1], []).append(k)
    order = [q for q in PANEL_ORDER if q in panels] + [q for q in panels if q not in PANEL_ORDER]
    return {q: sorted(panels[q]) for q in order}


def plot_id_ood_history(
    evals: Sequence[Mapping[str, Any]],
    tags: Mapping[str, str],
    path: str | os.PathLike[str],
    title: str = "",
    alerts: Sequence[Mapping[str, Any]] = (),
    stop_tokens: float | None = None,
    best_tokens: float | None = None,
) -> Path:
    """One run's eval metrics over tokens, one panel per quantity (loss, acc, ...): in-distribution
    sets solid, OOD sets dashed (``tags``: set name -> "id" | "ood"; the ``ood_mean`` aggregate is
    OOD, drawn thick), monitor alerts as red triangles on their metric (hollow: a drop within the
    eval noise), the early stop as a vertical dashed line and the restored best checkpoint as a
    dotted one."""
    panels = eval_panels(evals)
    n = max(1, len(panels))
    fig, axes = plt.subplots(n, 1, figsize=(SIZE[0] + 1.5, 1.0 + 2.1 * n), sharex=True)
    axes = np.atleast_1d(axes)
    sets = sorted({k.rsplit("/", 1)[0] for ks in panels.values() for k in ks})
    colors = _colors(sets)
    for ax, (quantity, keys) in zip(axes, panels.items(), strict=False):
        n_ood = sum(tags.get(k.rsplit("/", 1)[0]) == "ood" for k in keys)
        for key in keys:
            name = key.rsplit("/", 1)[0]
            if name == "ood_mean" and n_ood == 1:
                continue  # the mean of one set is that set
            x, y = _series(evals, key)
            ok = np.isfinite(y)
            ood = tags.get(name) == "ood" or name.startswith("ood_")
            style = {"ls": "--" if ood else "-", "lw": 2.4 if name == "ood_mean" else 1.5}
            color = "0.15" if name == "ood_mean" else colors[name]
            label = f"{name} ({'OOD' if ood else 'ID'})"
            marker = "." if ok.sum() < 60 else None
            ax.plot(x[ok], y[ok], marker=marker, color=color, label=label, **style)
        mine = [a for a in alerts if str(a.get("metric", "")).rsplit("/", 1)[-1] == quantity]
        noise = [a for a in mine if a.get("significant") is False]
        rest = [a for a in mine if a.get("significant") is not False]
        for group, hollow in ((noise, True), (rest, False)):
            if not group:
                continue
            ax.scatter(
                [as_float(a.get("tokens")) for a in group],
                [as_float(a.get("value")) for a in group],
                marker="v",
                s=70,
                color="none" if hollow else "crimson",
                edgecolors="crimson",
                zorder=5,
                label=f"alert within noise ({len(group)})" if hollow else f"alert ({len(group)})",
            )
        if stop_tokens is not None:
            ax.axvline(stop_tokens, color="0.2", ls="--", lw=1.2, label="early stop")
        if best_tokens is not None:
            ax.axvline(best_tokens, color="tab:green", ls=":", lw=1.5, label="best (restored)")
        ax.set_ylabel(quantity)
        ax.grid(alpha=0.3)
        if quantity in ("acc", "parse_rate"):
            ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if not panels:
        empty_note(axes[0], "no eval metrics")
    axes[-1].set_xlabel("tokens trained")
    axes[0].set_title(title or "Eval metrics over training", fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path)
