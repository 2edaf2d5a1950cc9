"""The report's sections: what to show for a set of runs, as plain data (no HTML here).

Each section function takes the runs and a :class:`FigureFiles` (where its PNGs go) and returns a
:class:`Section` or None when no run has the data for it. Text is plain: :mod:`.render` escapes
every string, turning `backticks` into code, so a run name or a config value can never become
markup.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lengthwise.eval import plots
from lengthwise.eval.plots import as_float
from lengthwise.report import figures
from lengthwise.report.runs import Run, group_by_store

# ---------------------------------------------------------------------- the parts of a page


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Table:
    head: list[str]
    rows: list[list[Any]]  # the first cell of a row is its header
    cls: str = ""


@dataclass
class Items:
    """A small bulleted list: (bold label, text) per item."""

    items: list[tuple[str, str]]


Part = Figure | Table | Items


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    parts: list[Part] = field(default_factory=list)


class FigureFiles:
    """Where a report's PNGs go, numbered in the order they are drawn (01_train_loss.png ...)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: list[Path] = []

    def draw(self, name: str, draw: Callable[[Path], Path]) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "figure"
        path = self.folder / f"{len(self.written) + 1:02d}_{safe}.png"
        draw(path)
        self.written.append(path)
        return path


# ---------------------------------------------------------------------- formatting


def fmt_metric(v: Any) -> str:
    """How the report prints a metric value (final eval numbers, losses, best)."""
    if isinstance(v, bool) or v is None:
        return "–" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    return str(v)


def fmt_seconds(s: Any) -> str:
    s = as_float(s)
    if not math.isfinite(s):
        return "–"
    if s < 120:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {sec:02d}s"


def fmt_int(v: Any) -> str:
    x = as_float(v)
    return f"{int(x):,}" if math.isfinite(x) else "–"


def _store_name(store: str | None) -> str:
    return Path(store).name if store else "unknown store"


# ---------------------------------------------------------------------- 1. final numbers
# One row per line of the table, one plain function per row: run -> the cell's text.


def final_evals(run: Run) -> dict[str, Any]:
    """The run's final eval metrics: summary.json's, else the last eval record's."""
    if run.summary and isinstance(run.summary.get("final"), dict):
        return run.summary["final"]
    ev = run.eval_records
    return ev[-1] if ev else {}


def _last(run: Run, key: str) -> Any:
    """summary.json's value of `key`, else the last record's (a run still going)."""
    if run.summary and key in run.summary:
        return run.summary[key]
    return run.records[-1].get(key) if run.records else None


def strategy(run: Run) -> str:
    got = (run.data_stats or {}).get("strategy")
    return str(got or run.cfg("batching", "strategy", default="?"))


def curriculum(run: Run) -> str:
    got = (run.data_stats or {}).get("curriculum")
    return str(got or run.cfg("batching", "curriculum", "name", default="?"))


def position_encoding(run: Run) -> str:
    if run.cfg("model", "kind") == "hf":  # the GPT's `position` field is only its default
        return f"{_hf_config(run).get('model_type', 'transformers')}'s own"
    return str(run.cfg("model", "position", default="?"))


def model_shape(run: Run) -> str:
    m = run.cfg("model", default={}) or {}
    if not m:
        return "?"
    if m.get("kind") == "hf":
        hf = _hf_config(run)

        def first(*keys: str) -> Any:
            return next((hf[k] for k in keys if k in hf), "?")

        return (
            f"{hf.get('model_type', 'transformers')}: "
            f"{first('num_hidden_layers', 'n_layer', 'num_layers')} layers × width "
            f"{first('hidden_size', 'n_embd', 'd_model')}, "
            f"{first('num_attention_heads', 'n_head', 'num_heads')} heads"
        )
    return (
        f"{m.get('n_layer', '?')} layers × d_model {m.get('d_model', '?')}, "
        f"{m.get('n_head', '?')} heads"
    )


def _hf_config(run: Run) -> dict[str, Any]:
    """A transformers model's whole config: the run's exported config.json, else the
    pretrained folder's, else model.hf.config as the run's config wrote it (the architecture's
    defaults left out)."""
    paths = [run.path / "export" / "config.json"]
    if run.cfg("model", "hf", "path"):
        paths.append(Path(run.cfg("model", "hf", "path")) / "config.json")
    for path in paths:
        try:
            got = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(got, dict):
            return got
    return run.cfg("model", "hf", "config", default={}) or {}


def tokens_trained(run: Run) -> str:
    return fmt_int(_last(run, "tokens"))


def optimizer_steps(run: Run) -> str:
    return fmt_int(_last(run, "steps" if run.summary else "step"))


def wall_time(run: Run) -> str:
    if run.summary and "wall_seconds" in run.summary:
        return fmt_seconds(run.summary["wall_seconds"])
    w = figures.wall_clock(run.records)
    w = w[np.isfinite(w)]
    return fmt_seconds(w.max()) + " (so far)" if len(w) else "–"


def median_tokens_per_s(run: Run) -> str:
    xs = [as_float(t.get("tokens_per_s")) for t in run.train]
    xs = [x for x in xs if math.isfinite(x)]
    return f"{statistics.median(xs):,.0f}" if xs else "–"


def last_train_loss(run: Run) -> str:
    losses = [t["loss"] for t in run.train if isinstance(t.get("loss"), int | float)]
    return fmt_metric(float(losses[-1])) if losses else "–"


def final_eval(run: Run, key: str) -> str:
    return fmt_metric(final_evals(run).get(key))


def best_metric(run: Run) -> str:
    s = run.summary or {}
    if s.get("best_metric") is None or s.get("best") is None:
        return "–"
    key, val = s["best_metric"], s["best"]
    step = next((e["step"] for e in run.eval_records if e.get(key) == val), None)
    return f"{key} = {fmt_metric(val)}" + (f" (step {step})" if step is not None else "")


def stop_reason(run: Run) -> str:
    s = run.summary
    if not s:
        es = run.events("early_stop")
        return f"early stop: {es[-1].get('reason')}" if es else "– (no summary.json)"
    text = str(s.get("stop_reason", "?"))
    if s.get("stop_detail"):
        text += f": {s['stop_detail']}"
    if s.get("restored_best_step") is not None:
        text += f" (restored best step {s['restored_best_step']})"
    return text


def alerts(run: Run) -> str:
    """The alert cell: "58 (3 significant, 55 within noise; first: m at step s, first
    significant: ...)"; an older run's alerts carry no significance: "7 (first: m at step s)"."""
    al = run.events("alert")
    counts = run.alert_counts()
    if not counts.total:
        return "0"
    notes = []
    if al:
        notes.append(f"first: {al[0].get('metric')} at step {al[0].get('step')}")
        sig = next((a for a in al if a.get("significant") is True), None)
        if sig is not None and sig is not al[0]:
            notes.append(f"first significant: {sig.get('metric')} at step {sig.get('step')}")
    inside = "; ".join(p for p in (", ".join(counts.breakdown()), ", ".join(notes)) if p)
    return f"{counts.total} ({inside})" if inside else str(counts.total)


def skipped_steps(run: Run) -> str:
    return fmt_int((run.summary or {}).get("skipped_steps", len(run.events("nonfinite"))))


def final_rows(runs: Sequence[Run]) -> list[tuple[str, Callable[[Run], str]]]:
    """The rows of the final-numbers table: (row name, run -> cell)."""
    eval_keys = dict.fromkeys(k for r in runs for k in final_evals(r) if "/" in k)
    rows = [
        ("strategy", strategy),
        ("curriculum", curriculum),
        ("position encoding", position_encoding),
        ("model", model_shape),
        ("tokens trained", tokens_trained),
        ("optimizer steps", optimizer_steps),
        ("wall time", wall_time),
        ("median tokens/s", median_tokens_per_s),
        ("final train loss (last logged)", last_train_loss),
        *((f"final {k}", partial(final_eval, key=k)) for k in eval_keys),
        ("best metric", best_metric),
        ("stop reason", stop_reason),
        ("alerts", alerts),
    ]
    if any((r.summary or {}).get("skipped_steps") or r.events("nonfinite") for r in runs):
        rows.append(("non-finite steps skipped", skipped_steps))
    return rows


def final_numbers(runs: Sequence[Run], files: FigureFiles) -> Section:
    table = Table(
        ["", *(r.label for r in runs)],
        [[name, *(cell(r) for r in runs)] for name, cell in final_rows(runs)],
        cls="final",
    )
    return Section(
        "final",
        "Final numbers",
        "One column per run. Final eval metrics are from the last evaluation (a restored best "
        "checkpoint is not re-evaluated: see best metric); the train loss is the last logged "
        "step's.",
        [table],
    )


# ---------------------------------------------------------------------- 2. the headline


def eval_loss_keys(run: Run) -> list[str]:
    """The run's `<set>/loss` eval metrics; the `ood_mean` aggregate only when there is no
    single OOD set to show instead."""
    keys = list(dict.fromkeys(k for e in run.eval_records for k in e if k.endswith("/loss")))
    single = [k for k in keys if k != "ood_mean/loss"]
    return single or keys


def timed_evals(run: Run) -> list[dict[str, Any]]:
    """The run's eval records, each with `wall`: seconds on the run's clock, counted over all
    its records (so a resumed run's sessions add up the same way in every figure)."""
    wall = figures.wall_clock(run.records)
    return [
        {**r, "wall": float(w)}
        for r, w in zip(run.records, wall, strict=True)
        if r.get("event") == "eval"
    ]


def headline(runs: Sequence[Run], files: FigureFiles) -> Section | None:
    """Validation and OOD loss of the runs that read one store, against tokens and wall time
    in one figure: the comparison a strategy study exists for (equal tokens: which learns more
    per token; equal time: which learns more per second)."""
    sec = Section(
        "compare",
        "Validation and OOD loss: tokens vs wall time",
        "Runs that read the same token store, overlaid: one colour per run, one line style per "
        "eval set (ID solid, OOD dashed). At equal tokens the lower curve learns more per token; "
        "at equal wall time (evaluation and checkpoints included) the lower curve learns more "
        "per second.",
    )
    for store, group in group_by_store(runs):
        group = [r for r in group if eval_loss_keys(r)]
        if len(group) < 2:
            continue
        curves = {r.label: (timed_evals(r), eval_loss_keys(r)) for r in group}
        tags = {r.label: r.eval_tags() for r in group}
        name = _store_name(store)
        p = files.draw(
            f"eval_loss_{name}",
            partial(figures.plot_eval_loss_comparison, curves, tags, title=f"token store: {name}"),
        )
        sec.parts.append(
            Figure(
                p,
                f"Eval loss of {len(group)} runs on the token store `{store}`, against tokens "
                "trained (left) and wall-clock time (right).",
            )
        )
    return sec


# ---------------------------------------------------------------------- 3-4. curves


APART = (
    " Runs that read different token stores are drawn in separate figures: their tokens are "
    "different tokens, and a task run (millions of tokens at loss ~0) would squeeze the others "
    "into a corner of shared axes."
)


def _training_figures(
    runs: Sequence[Run],
    files: FigureFiles,
    sec: Section,
    key: str,
    name: str,
    plot: Callable[..., Path],
    explain: str,
) -> Section:
    """One figure of `plot` per token store over the train records of the runs that log `key`;
    `explain` is the caption of a single figure, or the section's intro when there are several
    (each figure's caption then names its store and runs)."""
    groups = [
        (store, {r.label: r.train for r in group if any(key in t for t in r.train)})
        for store, group in group_by_store(runs)
    ]
    groups = [(store, train) for store, train in groups if train]
    if len(groups) == 1:
        sec.parts.append(Figure(files.draw(name, partial(plot, groups[0][1])), explain))
        return sec
    sec.intro = explain + APART
    for store, train in groups:
        where = f"the token store `{store}`" if store else "an unknown token store (no config.yaml)"
        p = files.draw(
            f"{name}_{_store_name(store)}",
            partial(plot, train, title=f"token store: {_store_name(store)}"),
        )
        sec.parts.append(Figure(p, f"Runs on {where}: {', '.join(train)}."))
    return sec


def training_loss(runs: Sequence[Run], files: FigureFiles) -> Section:
    return _training_figures(
        runs,
        files,
        Section("loss", "Training loss"),
        "loss",
        "train_loss",
        figures.plot_loss_curves,
        "Training loss against tokens (comparable across strategies that read the same token "
        "store) and against wall time (what a strategy costs); the lower curve at equal tokens "
        "learns more per token, the lower curve at equal time learns more per second.",
    )


def throughput(runs: Sequence[Run], files: FigureFiles) -> Section:
    return _training_figures(
        runs,
        files,
        Section("throughput", "Throughput"),
        "tokens_per_s",
        "throughput",
        figures.plot_throughput,
        "Tokens per second over training, with each run's median dotted: look for the strategy "
        "that keeps its throughput high (padding and long sequences cost time) and for dips "
        "caused by evaluation or checkpointing.",
    )


# ---------------------------------------------------------------------- 5. accounting


def _pct(v: float, fmt: str) -> str:
    return fmt.format(v) if math.isfinite(v) else "–"


def accounting(runs: Sequence[Run], files: FigureFiles) -> Section | None:
    stats = {r.label: r.data_stats for r in runs if isinstance(r.data_stats, dict)}
    if not stats:
        return None
    rows = figures.accounting_rows(stats)
    p = files.draw("data_accounting", partial(figures.plot_accounting, rows))
    table = Table(
        [
            "run",
            "strategy",
            "curriculum",
            "padding",
            "dropped",
            f"attn FLOPs / token (x {rows[0]['run']})",
            "attn share of FLOPs",
            "mean seq len",
            "cross-doc pairs / step",
        ],
        [
            [
                r["run"],
                r["strategy"],
                r["curriculum"],
                f"{r['pad_pct']:.2f}%",
                f"{r['dropped_pct']:.2f}%",
                _pct(r["attn_rel"], "{:.3f}x"),
                _pct(r["attn_share_pct"], "{:.1f}%"),
                _pct(r["mean_seq_len"], "{:.1f}"),
                _pct(r["cross_doc_pairs"], "{:,.0f}"),
            ]
            for r in rows
        ],
    )
    buckets = []
    for label, s in stats.items():
        summ = s.get("summary") or {}
        if summ.get("bucket_lengths") and summ.get("tokens_per_bucket"):
            pairs = zip(summ["bucket_lengths"], summ["tokens_per_bucket"], strict=False)
            buckets.append(
                (label, "tokens per bucket length: " + ", ".join(f"{b}: {t:,}" for b, t in pairs))
            )
    parts: list[Part] = [
        Figure(
            p,
            "Per strategy, one epoch of its batches: the share of slots spent on padding, the "
            "share of the corpus never trained on (truncated or dropped), and attention FLOPs "
            "per trained token relative to the first run (shorter, document-local sequences "
            "attend to fewer tokens).",
        ),
        table,
    ]
    if buckets:
        parts.append(Items(buckets))
    return Section("accounting", "Padding, dropped tokens and attention cost", "", parts)


# ---------------------------------------------------------------------- 6. seq len schedule


def seq_len_schedule(runs: Sequence[Run], files: FigureFiles) -> Section | None:
    train = {
        r.label: r.train for r in runs if any("seq_lens" in t or "seq_len" in t for t in r.train)
    }
    if not train:
        return None
    p = files.draw("seq_len_schedule", partial(figures.plot_seq_len_schedule, train))
    sampled = [lab for lab, recs in train.items() if not figures.seq_len_series(recs)[2]]
    note = ""
    if sampled:
        note = (
            f" Sampled, not every step, for {', '.join(sampled)}: their logs predate the "
            "per-step `seq_lens` field, so only the step of each train record (every "
            "`train.log_every_steps`) is shown and short buckets between them are missing."
        )
    return Section(
        "seqlen",
        "Sequence length over training",
        parts=[
            Figure(
                p,
                "The sequence length of each optimizer step (log2 axis): constant for "
                "chunking, the longest document of the batch for padding, and for Dataset "
                "Decomposition the bucket chosen by the curriculum (Grow-P2 shows as repeated "
                "short-to-long ramps)." + note,
            )
        ],
    )


# ---------------------------------------------------------------------- 7. ID vs OOD


def _id_ood_figure(run: Run, files: FigureFiles) -> Figure | None:
    evals = run.eval_records
    if not figures.eval_panels(evals):
        return None
    stops = run.events("early_stop")
    stop_tokens = as_float(stops[-1].get("tokens")) if stops else None
    restored = (run.summary or {}).get("restored_best_step")
    best_tokens = None
    if restored is not None:
        best_tokens = next(
            (as_float(e["tokens"]) for e in evals if e.get("step") == restored), None
        )
    run_alerts = run.events("alert")
    p = files.draw(
        f"id_ood_{run.label}",
        partial(
            figures.plot_id_ood_history,
            evals,
            run.eval_tags(),
            title=f"{run.label}: eval metrics over training",
            alerts=run_alerts,
            stop_tokens=stop_tokens,
            best_tokens=best_tokens,
        ),
    )
    bits = [f"{len(run_alerts)} monitor alert(s) (red triangles)" if run_alerts else "no alerts"]
    if any("significant" in a for a in run_alerts):  # significance known: noise ones hollow
        noise = sum(a.get("significant") is False for a in run_alerts)
        bits = [
            f"{len(run_alerts)} monitor alert(s) (red triangles), {noise} of them within the eval "
            "noise (hollow)"
        ]
    if stops:
        bits.append(f"early stop at step {stops[-1].get('step')} (dashed vertical line)")
    if best_tokens is not None:
        bits.append(f"best checkpoint restored from step {restored} (green dotted)")
    return Figure(
        p,
        f"{run.label}: eval metrics against tokens, ID solid and OOD dashed; {'; '.join(bits)}. "
        "Look for the point where the OOD curves turn while the ID ones keep improving.",
    )


def id_ood(runs: Sequence[Run], files: FigureFiles) -> Section:
    sec = Section(
        "idood",
        "In-distribution vs out-of-distribution metrics over training",
        "One figure per run with evaluation records. A widening gap between solid (ID) and "
        "dashed (OOD) lines is memorization: the training distribution improves while the OOD "
        "one stalls or degrades.",
    )
    sec.parts = [f for f in (_id_ood_figure(r, files) for r in runs) if f is not None]
    return sec


# ---------------------------------------------------------------------- 8. lengths


def _accuracy_table(runs: Sequence[Run], rows: list[dict[str, Any]]) -> Table:
    mults = sorted({as_float(x["multiple"]) for x in rows})
    table = []
    for r in runs:
        by_task: dict[str, dict[float, dict[str, Any]]] = {}
        for x in rows:
            if x["model"] == r.label:
                by_task.setdefault(x["task"], {})[as_float(x["multiple"])] = x
        for task, cells in by_task.items():
            table.append(
                [
                    r.label,
                    task,
                    *(
                        f"{cells[m]['acc']:.3f} (n={cells[m].get('n', '?')})" if m in cells else "–"
                        for m in mults
                    ),
                ]
            )
    return Table(["run", "task", *(f"{m:g}x acc" for m in mults)], table)


def lengths(runs: Sequence[Run], files: FigureFiles) -> Section | None:
    runs = [r for r in runs if "lengths" in r.evals]
    if not runs:
        return None
    sec = Section(
        "lengths",
        "Length generalization",
        "From `lengthwise eval RUN --suite lengths`: task accuracy at multiples of the longest "
        "training length, and per-position loss beyond the training length.",
    )
    rows = [
        {**row, "model": r.label}
        for r in runs
        for row in (r.evals["lengths"].get("task") or {}).get("rows") or []
        if isinstance(row, dict) and "multiple" in row
    ]
    if rows:
        p = files.draw("length_accuracy", partial(plots.plot_length_accuracy, rows))
        sec.parts.append(
            Figure(
                p,
                "Exact-match accuracy per run and task at 1x, 2x, 4x... the longest training "
                "length (dotted line = training length): a model that generalizes in length "
                "stays flat to the right of it.",
            )
        )
        sec.parts.append(_accuracy_table(runs, rows))
    texts = [(r, r.evals["lengths"]["text"]) for r in runs if r.evals["lengths"].get("text")]
    by_len: dict[int, dict[str, list[float]]] = {}
    for r, t in texts:
        if t.get("per_position_loss") and t.get("train_len"):
            by_len.setdefault(int(t["train_len"]), {})[r.label] = t["per_position_loss"]
    for train_len, curves in sorted(by_len.items()):
        p = files.draw(
            f"position_loss_{train_len}",
            partial(plots.plot_position_loss, curves, train_len),
        )
        sec.parts.append(
            Figure(
                p,
                f"Mean loss per token position (log x) for runs trained at length {train_len} "
                "(red dashed line): a curve that stays flat past the line extrapolates; one "
                "that climbs does not use positions it never saw.",
            )
        )
    bands = list(dict.fromkeys(b for _, t in texts for b in t.get("band_loss") or {}))
    if bands:
        sec.parts.append(
            Table(
                ["run", "split", *(f"loss @ {b}" for b in bands)],
                [
                    [
                        r.label,
                        t.get("split", "?"),
                        *(fmt_metric((t.get("band_loss") or {}).get(b)) for b in bands),
                    ]
                    for r, t in texts
                ],
            )
        )
    return sec


# ---------------------------------------------------------------------- 9. valley


def valley(runs: Sequence[Run], files: FigureFiles) -> Section:
    sec = Section(
        "valley",
        "Generalization valley",
        "From `lengthwise eval RUN --suite valley`: per complexity level, accuracy on items "
        "seen in training (ID) vs fresh items (OOD).",
    )
    for r in runs:
        v = r.evals.get("valley")
        if not v or not isinstance(v.get("levels"), list):
            continue
        p = files.draw(f"valley_{r.label}", partial(plots.plot_valley, v))
        crit = v.get("critical")
        crit_text = (
            f"critical complexity {crit.get('complexity')} (level {crit.get('level')})"
            if isinstance(crit, dict)
            else "no critical level (no defined gap)"
        )
        sec.parts.append(
            Figure(
                p,
                f"{r.label}: ID vs OOD accuracy by complexity, gap as grey bars; {crit_text}. "
                "The valley is where the gap peaks: the complexity at which the model memorizes "
                "instead of generalizing.",
            )
        )
    return sec


# ---------------------------------------------------------------------- 10. memorization


def memorization(runs: Sequence[Run], files: FigureFiles) -> Section:
    sec = Section(
        "memorization",
        "Memorization",
        "From `lengthwise eval RUN --suite memorization`: per-item correctness against how "
        "often the item's terms occur in the training data.",
    )
    for r in runs:
        m = r.evals.get("memorization")
        items = (m or {}).get("items")
        if not isinstance(items, list) or not items:
            continue
        freq = [as_float(i.get("frequency")) for i in items]
        correct = [float(bool(i.get("correct"))) for i in items]
        p = files.draw(
            f"memorization_{r.label}", partial(plots.plot_memorization, freq, correct, m)
        )
        sec.parts.append(
            Figure(
                p,
                f"{r.label}: correctness (jittered) vs term frequency with binned accuracy in "
                "red; a rising red line (positive r / rho) means the model answers what it saw "
                "often, i.e. memorizes rather than computes.",
            )
        )
    return sec


SECTIONS: tuple[Callable[[Sequence[Run], FigureFiles], Section | None], ...] = (
    final_numbers,
    headline,
    training_loss,
    throughput,
    accounting,
    seq_len_schedule,
    id_ood,
    lengths,
    valley,
    memorization,
)


def build_sections(runs: Sequence[Run], files: FigureFiles) -> list[Section]:
    """Every section that has something to show, in page order."""
    return [s for s in (make(runs, files) for make in SECTIONS) if s is not None and s.parts]
