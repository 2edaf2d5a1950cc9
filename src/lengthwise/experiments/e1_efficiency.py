"""E1 efficiency (text, the bundled corpus): every batching strategy on an equal token budget;
tokens/s, wall time, final ID/OOD loss, per-position loss to 4x the training length, and the
time each strategy needs to reach concat_chunk's final validation loss."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from lengthwise.errors import UserError
from lengthwise.eval.plots import as_float, save_figure
from lengthwise.experiments.runner import (
    Context,
    cell,
    md_table,
    plotting,
    read_records,
    train_point,
)
from lengthwise.rundir import RunDir


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
                "value": as_float(r.get(metric)),
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
            lm, cfg, RunDir(run_dir).eval_dir, multiples, text_split=text_split, n_docs=n_docs
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
    plots, plt = plotting()
    train_len = rows[0]["train_len"]
    plots.plot_position_loss(curves, train_len, ctx.exp_dir / "e1_position_loss.png")
    _plot_e1_curves(histories, target, reference, ctx.exp_dir / "e1_val_loss.png")
    _plot_e1_throughput(rows, ctx.exp_dir / "e1_throughput.png")
    results = {"reference": reference, "reference_val_loss": target, "points": rows}
    return results, _e1_markdown(rows, reference, multiples), run_dirs


def _plot_e1_curves(histories: dict[str, list[dict]], target: float, ref: str, path: Path) -> Path:
    _, plt = plotting()
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
    return save_figure(fig, path)


def _plot_e1_throughput(rows: list[dict[str, Any]], path: Path) -> Path:
    _, plt = plotting()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    names = [r["name"] for r in rows]
    vals = [as_float(r["tokens_per_s"]) for r in rows]
    ax.barh(names, vals, color="tab:blue")
    for y, v in enumerate(vals):
        if math.isfinite(v):
            ax.text(v, y, f" {v:,.0f}", va="center", fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("training tokens/s (median over steps; slots incl. padding)")
    ax.set_title("E1: throughput per batching strategy")
    ax.grid(alpha=0.3, axis="x")
    return save_figure(fig, path)


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
                cell(hit["time"], ".0f"),
                cell(hit["tokens"], ",d"),
                cell(hit["ratio_wall"], ".2f"),
            ]
        out.append(
            [
                r["name"],
                cell(r["tokens"], ",d"),
                cell(r["tokens_per_s"], ",.0f"),
                cell(r["wall_seconds"], ".0f"),
                cell(r["train_seconds"], ".0f"),
                cell(r["val_loss"], ".4f"),
                cell(r["ood_loss"], ".4f"),
                *[cell(r["position_band_loss"].get(b), ".3f") for b in bands],
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
