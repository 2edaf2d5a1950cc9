"""E4 generalization valley: three model sizes trained on one multi-task source over the complexity
ladder; the valley suite's ID/OOD accuracy and gap per level and the critical complexity per
size."""

from __future__ import annotations

import itertools
import shutil
import time
from pathlib import Path
from typing import Any

from lengthwise.eval.plots import as_float, save_figure
from lengthwise.experiments.runner import (
    Context,
    cell,
    epochs_begun,
    md_table,
    plotting,
    read_records,
    train_point,
)
from lengthwise.rundir import RunDir


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
        out = RunDir(run_dir).eval_dir
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
                "epochs": epochs_begun(read_records(run_dir)),
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


def _plot_e4(rows: list[dict[str, Any]], path: Path) -> Path:
    _, plt = plotting()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for k, r in enumerate(rows):
        color = f"C{k}"
        levels = r["levels"]
        x = [lv["level"] for lv in levels]
        label = f"{r['name']} ({r['model']}, {r['params'] / 1e6:.2f}M)"
        by = r["critical_by"]
        axes[0].plot(x, [as_float(lv[by]) for lv in levels], "o-", color=color, label=label)
        axes[0].plot(x, [as_float(lv["abs_gap"]) for lv in levels], ":", color=color, alpha=0.7)
        if r["critical"]:
            c = r["critical"]
            axes[0].plot([c["level"]], [as_float(c[by])], "*", ms=16, color=color)
        axes[1].plot(x, [as_float(lv["id_acc"]) for lv in levels], "o-", color=color, label=label)
        axes[1].plot(x, [as_float(lv["ood_acc"]) for lv in levels], "s--", color=color)
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
    return save_figure(fig, path)


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
                cell(r["params"], ",d"),
                cell(r["tokens"], ",d"),
                cell(r["epochs"], "d"),
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
                cell(lv["id_acc"], ".3f"),
                cell(lv["ood_acc"], ".3f"),
                cell(lv["abs_gap"], ".3f"),
                cell(lv["rel_gap"], ".3f"),
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
