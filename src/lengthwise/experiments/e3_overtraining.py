"""E3 over-training (task): a small addition set trained until it over-fits, per L1/L2 and
dropout setting: the OOD alert, the early stop, and the OOD accuracy of the best (restored)
checkpoint against the last one."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
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
from lengthwise.rundir import alert_counts


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
        if r["event"] == "train" and r["step"] <= step and math.isfinite(as_float(r["loss"]))
    ][-k:]
    return statistics.mean(vals) if vals else None


def run_e3(ctx: Context) -> tuple[dict[str, Any], str, list[Path]]:
    from lengthwise.export import export_run
    from lengthwise.io import atomic_write_text

    spec = ctx.spec
    plots, _ = plotting()
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
        counts = alert_counts(summary, alerts)
        stops = [r for r in records if r["event"] == "early_stop"]
        metric = summary["best_metric"]
        alert_metric = spec.settings.get("alert_metric", metric)
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
            # beyond / within the eval sets' noise (None: the run's alerts carry no significance)
            "n_alerts_significant": counts.significant,
            "n_alerts_within_noise": counts.within_noise,
            "alerts_text": counts.text(),
            "alert_metrics": sorted({a["metric"] for a in alerts}),
            "first_alert": _first_alert(alerts, alert_metric),
            "first_significant_alert": _first_alert(
                [a for a in alerts if a.get("significant") is True], alert_metric
            ),
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

    ok = [e for e in evals if metric and math.isfinite(as_float(e.get(metric)))]
    if not ok:
        return None
    sign = 1.0 if direction(metric) == "min" else -1.0
    return min(ok, key=lambda e: sign * as_float(e[metric]))


def _first_alert(alerts: list[dict[str, Any]], metric: str | None) -> dict[str, Any] | None:
    mine = [a for a in alerts if a["metric"] == metric] or alerts
    if not mine:
        return None
    a = mine[0]
    keys = ("metric", "step", "tokens", "value", "best", "best_step", "drop", "z", "significant")
    return {k: a.get(k) for k in keys}


def _alert_cell(first: dict[str, Any] | None, significant: dict[str, Any] | None) -> str:
    """The first alert as "m @ step", and the first significant one's when it is another."""
    if not first:
        return "none"
    text = f"{first['metric']} @ {first['step']}"
    if significant and (significant["metric"], significant["step"]) != (
        first["metric"],
        first["step"],
    ):
        text += f" (significant: {significant['metric']} @ {significant['step']})"
    return text


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

    _, plt = plotting()
    sets = ("seen", "fresh", "long")
    fig, axes = plt.subplots(1, len(sets), figsize=(12, 4.5), sharey=True)
    x = np.arange(len(rows))
    for ax, s in zip(axes, sets, strict=True):
        for k, which in enumerate(("best", "last")):
            vals = [as_float(r["accuracy"][which][s]["acc"]) for r in rows]
            ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label=f"{which} checkpoint")
        ax.set_xticks(x)
        ax.set_xticklabels([r["name"] for r in rows], rotation=30, ha="right", fontsize="small")
        ax.set_title(f"{s} items")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("exact-match accuracy")
    axes[0].legend(fontsize="small")
    fig.suptitle("E3: best (restored) vs last checkpoint")
    return save_figure(fig, path)


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
        "alerts",
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
                cell(r["l1"], "g"),
                cell(r["l2"], "g"),
                f"{r['resid_dropout']:g}/{r['attn_dropout']:g}",
                "early" if r["stop_reason"] == "early_stopping" else r["stop_reason"],
                cell(r["steps"], ",d"),
                cell(r["epochs"], ".0f"),
                cell(r["best_step"], "d"),
                r["alerts_text"],
                _alert_cell(fa, r["first_significant_alert"]),
                f"{cell(b['train_loss'], '.3f')} -> {cell(last['train_loss'], '.3f')}",
                f"{cell(b['ood_loss'], '.3f')} -> {cell(last['ood_loss'], '.3f')}",
                *[
                    f"{cell(a['best'][s]['acc'], '.3f')} / {cell(a['last'][s]['acc'], '.3f')}"
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
        "- alerts: OOD monitor alerts (every eval in a drop), how many were significant (the "
        "drop beyond the eval set's noise at `monitor.alert_level`) and how many within noise; "
        "first alert: the first on the alert metric, and the first significant one if later.",
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
