"""E5 memorization: per-item accuracy against training term frequency, on a task source with
a small ``n`` (natural frequency spread) and on a deliberately skewed training set."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

from lengthwise.errors import UserError
from lengthwise.eval.plots import save_figure
from lengthwise.experiments.runner import (
    Context,
    cell,
    md_table,
    plotting,
    train_point,
)
from lengthwise.rundir import RunDir


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
    from lengthwise.io import atomic_write_text

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
        out = RunDir(run_dir).eval_dir
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
    _, plt = plotting()
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
    return save_figure(fig, path)


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
                cell(r["train_items"], ",d"),
                cell(r["n_items"], ",d"),
                cell(r["accuracy"], ".3f"),
                f"{cell(f['min'], 'g')} / {cell(f['median'], 'g')} / {cell(f['max'], 'g')}",
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
