"""`lengthwise report`: one self-contained HTML page comparing training runs.

The report reads run directories only (config.yaml, metrics.jsonl, summary.json, data_stats.json,
eval/*.json) and never imports the trainer or builds a model. Every figure is written as a PNG
into ``<out stem>_files/`` and embedded in the page as a base64 data URI, the CSS is inline and
nothing refers to the network, so the page opens offline and can be mailed as one file. A run
directory that lacks some files simply gets fewer sections (and a note saying what is missing).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import shlex
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lengthwise import __version__
from lengthwise.errors import UserError
from lengthwise.eval import plots
from lengthwise.report import figures

EVAL_SUITES = ("lengths", "valley", "memorization")


# ---------------------------------------------------------------------- reading runs


@dataclass
class Run:
    """Everything the report knows about one run directory (parsed files; missing ones None)."""

    path: Path
    label: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    data_stats: dict[str, Any] | None = None
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == kind]

    @property
    def train(self) -> list[dict[str, Any]]:
        return self.events("train")

    @property
    def eval_records(self) -> list[dict[str, Any]]:
        return self.events("eval")

    def cfg(self, *keys: str, default: Any = None) -> Any:
        node: Any = self.config
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                return default
            node = node[k]
        return node

    def eval_tags(self) -> dict[str, str]:
        """Eval set name -> "id" | "ood", from the run's config."""
        sets = self.cfg("eval", "sets", default=[]) or []
        return {s["name"]: s.get("tag", "id") for s in sets if isinstance(s, dict) and "name" in s}


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        notes.append(f"{path.name}: unreadable ({type(e).__name__}), left out")
        return None


def load_run(path: Path) -> Run:
    """Read one run directory; a path with neither metrics.jsonl nor summary.json is a
    :class:`UserError`. Files that are missing or unreadable become notes, not errors."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such run directory")
    if not (path / "metrics.jsonl").is_file() and not (path / "summary.json").is_file():
        raise UserError(f"{path}: not a run directory (no metrics.jsonl and no summary.json)")
    run = Run(path=path)
    notes = run.notes
    cfg_path = path / "config.yaml"
    if cfg_path.is_file():
        try:
            loaded = yaml.safe_load(cfg_path.read_text())
            run.config = loaded if isinstance(loaded, dict) else {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            notes.append(f"config.yaml: unreadable ({type(e).__name__}), left out")
    else:
        notes.append("no config.yaml: strategy, position encoding and eval tags unknown")
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        bad = 0
        for line in metrics.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict):
                run.records.append(rec)
        if bad:
            notes.append(f"metrics.jsonl: {bad} unreadable line(s) skipped")
    else:
        notes.append("no metrics.jsonl: no curves over training")
    run.summary = _read_json(path / "summary.json", notes)
    if run.summary is None and not any("summary.json" in n for n in notes):
        notes.append(
            "no summary.json (still running or stopped abnormally): final numbers are the last "
            "logged ones"
        )
    run.data_stats = _read_json(path / "data_stats.json", notes)
    if run.data_stats is None and not any("data_stats" in n for n in notes):
        notes.append("no data_stats.json: no padding / dropped-token accounting")
    for suite in EVAL_SUITES:
        got = _read_json(path / "eval" / f"{suite}.json", notes)
        if isinstance(got, dict):
            run.evals[suite] = got
    if not run.evals:
        notes.append(
            "no eval/*.json: run `lengthwise eval RUN --suite lengths|valley|memorization` "
            "for the length, valley and memorization sections"
        )
    return run


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short unique names: the folder name, with parents added until names are unique."""
    resolved = [Path(os.path.abspath(p)) for p in paths]
    depth = 1
    while True:
        labels = ["/".join(p.parts[-depth:]) for p in resolved]
        if len(set(labels)) == len(labels) or depth > max(len(p.parts) for p in resolved):
            break
        depth += 1
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} ({seen[lab]})")
    return out


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


def _fmt_seconds(s: Any) -> str:
    s = plots._num(s)
    if not math.isfinite(s):
        return "–"
    if s < 120:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {sec:02d}s"


def _fmt_int(v: Any) -> str:
    x = plots._num(v)
    return f"{int(x):,}" if math.isfinite(x) else "–"


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """An HTML table; cells are escaped text (use _Raw for markup)."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            tag = "th" if i == 0 else "td"
            text = c.html if isinstance(c, _Raw) else _e(c)
            cells.append(f"<{tag}>{text}</{tag}>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    attr = f' class="{cls}"' if cls else ""
    return (
        f'<div class="scroll"><table{attr}><thead><tr>{th}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


@dataclass
class _Raw:
    html: str


# ---------------------------------------------------------------------- sections


@dataclass
class _Figure:
    path: Path
    caption: str


@dataclass
class _Section:
    id: str
    title: str
    intro: str = ""
    parts: list[Any] = field(default_factory=list)  # str (raw HTML) or _Figure


class _Builder:
    def __init__(self, runs: list[Run], files_dir: Path) -> None:
        self.runs = runs
        self.files_dir = files_dir
        self.written: list[Path] = []
        self.sections: list[_Section] = []

    def png(self, name: str, draw: Callable[[Path], Path]) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "figure"
        path = self.files_dir / f"{len(self.written) + 1:02d}_{safe}.png"
        draw(path)
        self.written.append(path)
        return path

    def add(self, section: _Section) -> None:
        if section.parts:
            self.sections.append(section)

    # ------------------------------------------------------------------ 1. final numbers

    def final_numbers(self) -> None:
        runs = self.runs
        eval_keys = list(
            dict.fromkeys(
                k
                for r in runs
                for k in ((r.summary or {}).get("final") or (r.eval_records or [{}])[-1])
                if "/" in k
            )
        )
        rows: list[list[Any]] = []

        def row(name: str, fn: Callable[[Run], Any]) -> None:
            rows.append([name, *(fn(r) for r in runs)])

        def final(r: Run) -> dict[str, Any]:
            if r.summary and isinstance(r.summary.get("final"), dict):
                return r.summary["final"]
            ev = r.eval_records
            return ev[-1] if ev else {}

        def last(r: Run, key: str) -> Any:
            if r.summary and key in r.summary:
                return r.summary[key]
            return r.records[-1].get(key) if r.records else None

        def strategy(r: Run) -> Any:
            got = (r.data_stats or {}).get("strategy")
            return got or r.cfg("batching", "strategy", default="?")

        def curriculum(r: Run) -> Any:
            if r.data_stats and r.data_stats.get("curriculum"):
                return r.data_stats["curriculum"]
            return r.cfg("batching", "curriculum", "name", default="?")

        def model(r: Run) -> str:
            m = r.cfg("model", default={}) or {}
            if not m:
                return "?"
            return (
                f"{m.get('n_layer', '?')} layers × d_model {m.get('d_model', '?')}, "
                f"{m.get('n_head', '?')} heads"
            )

        def train_loss(r: Run) -> str:
            losses = [t["loss"] for t in r.train if isinstance(t.get("loss"), int | float)]
            return fmt_metric(float(losses[-1])) if losses else "–"

        def tps(r: Run) -> str:
            xs = [plots._num(t.get("tokens_per_s")) for t in r.train]
            xs = [x for x in xs if math.isfinite(x)]
            return f"{statistics.median(xs):,.0f}" if xs else "–"

        def wall(r: Run) -> str:
            if r.summary and "wall_seconds" in r.summary:
                return _fmt_seconds(r.summary["wall_seconds"])
            w = figures.wall_clock(r.records)
            w = w[np.isfinite(w)]
            return _fmt_seconds(w.max()) + " (so far)" if len(w) else "–"

        def best(r: Run) -> str:
            s = r.summary or {}
            if s.get("best_metric") is None or s.get("best") is None:
                return "–"
            key, val = s["best_metric"], s["best"]
            step = next((e["step"] for e in r.eval_records if e.get(key) == val), None)
            return f"{key} = {fmt_metric(val)}" + (f" (step {step})" if step is not None else "")

        def stop(r: Run) -> str:
            s = r.summary
            if not s:
                es = r.events("early_stop")
                return f"early stop: {es[-1].get('reason')}" if es else "– (no summary.json)"
            text = str(s.get("stop_reason", "?"))
            if s.get("stop_detail"):
                text += f": {s['stop_detail']}"
            if s.get("restored_best_step") is not None:
                text += f" (restored best step {s['restored_best_step']})"
            return text

        def alerts(r: Run) -> str:
            al = r.events("alert")
            n = (r.summary or {}).get("alerts", len(al))
            if not n:
                return "0"
            if al:
                a = al[0]
                return f"{n} (first: {a.get('metric')} at step {a.get('step')})"
            return str(n)

        row("strategy", strategy)
        row("curriculum", curriculum)
        row("position encoding", lambda r: r.cfg("model", "position", default="?"))
        row("model", model)
        row("tokens trained", lambda r: _fmt_int(last(r, "tokens")))
        row("optimizer steps", lambda r: _fmt_int(last(r, "step" if not r.summary else "steps")))
        row("wall time", wall)
        row("median tokens/s", tps)
        row("final train loss (last logged)", train_loss)
        for k in eval_keys:
            row(f"final {k}", lambda r, k=k: fmt_metric(final(r).get(k)))
        row("best metric", best)
        row("stop reason", stop)
        row("alerts", alerts)
        if any((r.summary or {}).get("skipped_steps") or r.events("nonfinite") for r in runs):
            row(
                "non-finite steps skipped",
                lambda r: _fmt_int(
                    (r.summary or {}).get("skipped_steps", len(r.events("nonfinite")))
                ),
            )
        head = ["", *(r.label for r in runs)]
        self.add(
            _Section(
                "final",
                "Final numbers",
                "One column per run. Final eval metrics are from the last evaluation (a restored "
                "best checkpoint is not re-evaluated: see best metric); the train loss is the "
                "last logged step's.",
                [_table(head, rows, cls="final")],
            )
        )

    # ------------------------------------------------------------------ 2-3. curves

    def training_curves(self) -> None:
        train = {r.label: r.train for r in self.runs if any("loss" in t for t in r.train)}
        if train:
            p = self.png("train_loss", lambda path: figures.plot_loss_curves(train, path))
            self.add(
                _Section(
                    "loss",
                    "Training loss",
                    parts=[
                        _Figure(
                            p,
                            "Training loss against tokens (comparable across strategies that read "
                            "the same token store) and against wall time (what a strategy costs); "
                            "the lower curve at equal tokens learns more per token, the lower "
                            "curve at equal time learns more per second.",
                        )
                    ],
                )
            )
        tput = {r.label: r.train for r in self.runs if any("tokens_per_s" in t for t in r.train)}
        if tput:
            p = self.png("throughput", lambda path: figures.plot_throughput(tput, path))
            self.add(
                _Section(
                    "throughput",
                    "Throughput",
                    parts=[
                        _Figure(
                            p,
                            "Tokens per second over training, with each run's median dotted: "
                            "look for the strategy that keeps its throughput high (padding and "
                            "long sequences cost time) and for dips caused by evaluation or "
                            "checkpointing.",
                        )
                    ],
                )
            )

    # ------------------------------------------------------------------ 4. accounting

    def accounting(self) -> None:
        stats = {r.label: r.data_stats for r in self.runs if isinstance(r.data_stats, dict)}
        if not stats:
            return
        rows = figures.accounting_rows(stats)
        p = self.png("data_accounting", lambda path: figures.plot_accounting(rows, path))
        ref = rows[0]["run"]
        table_rows = [
            [
                r["run"],
                r["strategy"],
                r["curriculum"],
                f"{r['pad_pct']:.2f}%",
                f"{r['dropped_pct']:.2f}%",
                f"{r['attn_rel']:.3f}x" if math.isfinite(r["attn_rel"]) else "–",
                f"{r['attn_share_pct']:.1f}%" if math.isfinite(r["attn_share_pct"]) else "–",
                f"{r['mean_seq_len']:.1f}" if math.isfinite(r["mean_seq_len"]) else "–",
                f"{r['cross_doc_pairs']:,.0f}" if math.isfinite(r["cross_doc_pairs"]) else "–",
            ]
            for r in rows
        ]
        head = [
            "run",
            "strategy",
            "curriculum",
            "padding",
            "dropped",
            f"attn FLOPs / token (x {ref})",
            "attn share of FLOPs",
            "mean seq len",
            "cross-doc pairs / step",
        ]
        extra = []
        for label, s in stats.items():
            summ = s.get("summary") or {}
            if summ.get("bucket_lengths") and summ.get("tokens_per_bucket"):
                pairs = ", ".join(
                    f"{b}: {t:,}"
                    for b, t in zip(summ["bucket_lengths"], summ["tokens_per_bucket"], strict=False)
                )
                extra.append(f"<li><b>{_e(label)}</b> tokens per bucket length: {_e(pairs)}</li>")
        parts: list[Any] = [
            _Figure(
                p,
                "Per strategy, one epoch of its batches: the share of slots spent on padding, the "
                "share of the corpus never trained on (truncated or dropped), and attention "
                "FLOPs per trained token relative to the first run (shorter, document-local "
                "sequences attend to fewer tokens).",
            ),
            _table(head, table_rows),
        ]
        if extra:
            parts.append(f'<ul class="small">{"".join(extra)}</ul>')
        self.add(_Section("accounting", "Padding, dropped tokens and attention cost", "", parts))

    # ------------------------------------------------------------------ 5. seq len schedule

    def seq_len_schedule(self) -> None:
        train = {r.label: r.train for r in self.runs if any("seq_len" in t for t in r.train)}
        if not train:
            return
        p = self.png("seq_len_schedule", lambda path: figures.plot_seq_len_schedule(train, path))
        self.add(
            _Section(
                "seqlen",
                "Sequence length over training",
                parts=[
                    _Figure(
                        p,
                        "The sequence length of each logged step (log2 axis): constant for "
                        "chunking, the longest document of the batch for padding, and for "
                        "Dataset Decomposition the bucket chosen by the curriculum (Grow-P2 shows "
                        "as repeated short-to-long ramps).",
                    )
                ],
            )
        )

    # ------------------------------------------------------------------ 6. ID vs OOD

    def id_ood(self) -> None:
        sec = _Section(
            "idood",
            "In-distribution vs out-of-distribution metrics over training",
            "One figure per run with evaluation records. A widening gap between solid (ID) and "
            "dashed (OOD) lines is memorization: the training distribution improves while the "
            "OOD one stalls or degrades.",
        )
        for r in self.runs:
            evals = r.eval_records
            if not figures.eval_panels(evals):
                continue
            stops = r.events("early_stop")
            stop_tokens = plots._num(stops[-1].get("tokens")) if stops else None
            best_tokens = None
            restored = (r.summary or {}).get("restored_best_step")
            if restored is not None:
                best_tokens = next(
                    (plots._num(e["tokens"]) for e in evals if e.get("step") == restored), None
                )
            alerts = r.events("alert")
            p = self.png(
                f"id_ood_{r.label}",
                lambda path, r=r, evals=evals, alerts=alerts, st=stop_tokens, bt=best_tokens: (
                    figures.plot_id_ood_history(
                        evals,
                        r.eval_tags(),
                        path,
                        title=f"{r.label}: eval metrics over training",
                        alerts=alerts,
                        stop_tokens=st,
                        best_tokens=bt,
                    )
                ),
            )
            bits = [f"{len(alerts)} monitor alert(s) (red triangles)" if alerts else "no alerts"]
            if stops:
                bits.append(f"early stop at step {stops[-1].get('step')} (dashed vertical line)")
            if best_tokens is not None:
                bits.append(f"best checkpoint restored from step {restored} (green dotted)")
            sec.parts.append(
                _Figure(
                    p,
                    f"{r.label}: eval metrics against tokens, ID solid and OOD dashed; "
                    f"{'; '.join(bits)}. Look for the point where the OOD curves turn while the "
                    "ID ones keep improving.",
                )
            )
        self.add(sec)

    # ------------------------------------------------------------------ 7. lengths

    def lengths(self) -> None:
        runs = [r for r in self.runs if "lengths" in r.evals]
        if not runs:
            return
        sec = _Section(
            "lengths",
            "Length generalization",
            "From `lengthwise eval RUN --suite lengths`: task accuracy at multiples of the "
            "longest training length, and per-position loss beyond the training length.",
        )
        rows = []
        for r in runs:
            for row in (r.evals["lengths"].get("task") or {}).get("rows") or []:
                if isinstance(row, dict) and "multiple" in row:
                    rows.append({**row, "model": r.label})
        if rows:
            p = self.png("length_accuracy", lambda path: plots.plot_length_accuracy(rows, path))
            sec.parts.append(
                _Figure(
                    p,
                    "Exact-match accuracy per run and task at 1x, 2x, 4x... the longest training "
                    "length (dotted line = training length): a model that generalizes in length "
                    "stays flat to the right of it.",
                )
            )
            mults = sorted({plots._num(x["multiple"]) for x in rows})
            table = []
            for r in runs:
                by = {}
                for x in rows:
                    if x["model"] == r.label:
                        by.setdefault(x["task"], {})[plots._num(x["multiple"])] = x
                for task, cells in by.items():
                    table.append(
                        [
                            r.label,
                            task,
                            *(
                                f"{cells[m]['acc']:.3f} (n={cells[m].get('n', '?')})"
                                if m in cells
                                else "–"
                                for m in mults
                            ),
                        ]
                    )
            sec.parts.append(_table(["run", "task", *(f"{m:g}x acc" for m in mults)], table))
        texts = [(r, r.evals["lengths"]["text"]) for r in runs if r.evals["lengths"].get("text")]
        by_len: dict[int, dict[str, list[float]]] = {}
        for r, t in texts:
            if t.get("per_position_loss") and t.get("train_len"):
                by_len.setdefault(int(t["train_len"]), {})[r.label] = t["per_position_loss"]
        for train_len, curves in sorted(by_len.items()):
            p = self.png(
                f"position_loss_{train_len}",
                lambda path, c=curves, n=train_len: plots.plot_position_loss(c, n, path),
            )
            sec.parts.append(
                _Figure(
                    p,
                    f"Mean loss per token position (log x) for runs trained at length "
                    f"{train_len} (red dashed line): a curve that stays flat past the line "
                    "extrapolates; one that climbs does not use positions it never saw.",
                )
            )
        bands = list(dict.fromkeys(b for _, t in texts for b in t.get("band_loss") or {}))
        if bands:
            sec.parts.append(
                _table(
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
        self.add(sec)

    # ------------------------------------------------------------------ 8. valley

    def valley(self) -> None:
        sec = _Section(
            "valley",
            "Generalization valley",
            "From `lengthwise eval RUN --suite valley`: per complexity level, accuracy on items "
            "seen in training (ID) vs fresh items (OOD).",
        )
        for r in self.runs:
            v = r.evals.get("valley")
            if not v or not isinstance(v.get("levels"), list):
                continue
            p = self.png(f"valley_{r.label}", lambda path, v=v: plots.plot_valley(v, path))
            crit = v.get("critical")
            crit_text = (
                f"critical complexity {crit.get('complexity')} (level {crit.get('level')})"
                if isinstance(crit, dict)
                else "no critical level (no defined gap)"
            )
            sec.parts.append(
                _Figure(
                    p,
                    f"{r.label}: ID vs OOD accuracy by complexity, gap as grey bars; "
                    f"{crit_text}. The valley is where the gap peaks: the complexity at which "
                    "the model memorizes instead of generalizing.",
                )
            )
        self.add(sec)

    # ------------------------------------------------------------------ 9. memorization

    def memorization(self) -> None:
        sec = _Section(
            "memorization",
            "Memorization",
            "From `lengthwise eval RUN --suite memorization`: per-item correctness against how "
            "often the item's terms occur in the training data.",
        )
        for r in self.runs:
            m = r.evals.get("memorization")
            items = (m or {}).get("items")
            if not isinstance(items, list) or not items:
                continue
            freq = [plots._num(i.get("frequency")) for i in items]
            correct = [float(bool(i.get("correct"))) for i in items]
            p = self.png(
                f"memorization_{r.label}",
                lambda path, m=m, f=freq, c=correct: plots.plot_memorization(f, c, m, path),
            )
            sec.parts.append(
                _Figure(
                    p,
                    f"{r.label}: correctness (jittered) vs term frequency with binned accuracy in "
                    "red; a rising red line (positive r / rho) means the model answers what it "
                    "saw often, i.e. memorizes rather than computes.",
                )
            )
        self.add(sec)

    def build(self) -> None:
        self.final_numbers()
        self.training_curves()
        self.accounting()
        self.seq_len_schedule()
        self.id_ood()
        self.lengths()
        self.valley()
        self.memorization()


# ---------------------------------------------------------------------- HTML

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
  background: #fafafa; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; background: #fff;
  box-shadow: 0 0 12px rgba(0,0,0,.06); }
h1 { margin: 0 0 4px; font-size: 28px; }
h2 { margin: 40px 0 8px; padding-bottom: 4px; border-bottom: 2px solid #e3e6ea; font-size: 21px; }
.meta { color: #666; font-size: 13px; margin: 0 0 12px; }
pre.cmd { background: #f3f4f6; padding: 8px 12px; border-radius: 6px; overflow-x: auto;
  font-size: 13px; white-space: pre-wrap; word-break: break-all; }
code { background: #f3f4f6; padding: 0 4px; border-radius: 3px; font-size: 13px; }
nav ol { columns: 2; font-size: 14px; margin: 4px 0; }
a { color: #1f5fa8; text-decoration: none; }
.scroll { overflow-x: auto; margin: 12px 0; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #e1e4e8; padding: 4px 10px; text-align: left; vertical-align: top; }
thead th { background: #f0f2f5; position: sticky; top: 0; }
tbody tr:nth-child(even) { background: #fafbfc; }
tbody th { font-weight: 600; background: #f7f8fa; white-space: nowrap; }
table.final td { min-width: 9em; }
figure { margin: 16px 0 28px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto;
  border: 1px solid #eee; }
figcaption { color: #444; font-size: 14px; margin-top: 6px; padding: 0 8px;
  border-left: 3px solid #c9d7ea; }
.notes { background: #fff8e6; border: 1px solid #f0dca8; border-radius: 6px; padding: 8px 14px;
  font-size: 13px; }
.notes ul { margin: 4px 0; padding-left: 20px; }
.small { font-size: 13px; color: #444; }
ul.runs { font-size: 14px; }
ul.runs code { word-break: break-all; }
footer { margin-top: 48px; color: #888; font-size: 12px; }
"""


# Figures are shown at their pixel size / this factor (and never wider than the page), so text
# has the same size in every figure, whatever its width in inches.
DISPLAY_SHRINK = 1.25


def _img(path: Path, alt: str) -> str:
    raw = path.read_bytes()
    width = int.from_bytes(raw[16:20], "big")  # PNG IHDR: width, height (big-endian)
    height = int.from_bytes(raw[20:24], "big")
    size = f' width="{round(width / DISPLAY_SHRINK)}" height="{round(height / DISPLAY_SHRINK)}"'
    data = base64.b64encode(raw).decode("ascii")
    return f'<img src="data:image/png;base64,{data}"{size} alt="{_e(alt)}">'


def _render(
    title: str, runs: list[Run], sections: list[_Section], command: str, files_dir: Path
) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">generated {_e(time.strftime("%Y-%m-%d %H:%M:%S"))} by lengthwise '
        f"{_e(__version__)} from {len(runs)} run(s)</p>",
        f'<pre class="cmd">{_e(command)}</pre>',
        '<h2 id="runs">Runs</h2><ul class="runs">',
    ]
    for r in runs:
        out.append(f"<li><b>{_e(r.label)}</b>: <code>{_e(os.path.abspath(r.path))}</code></li>")
    out.append("</ul>")
    noted = [r for r in runs if r.notes]
    if noted:
        out.append('<div class="notes"><b>Missing data</b> (those sections are left out):<ul>')
        for r in noted:
            out.append(f"<li><b>{_e(r.label)}</b>: {_md_code('; '.join(r.notes))}</li>")
        out.append("</ul></div>")
    if sections:
        out.append("<nav><ol>")
        out.extend(f'<li><a href="#{s.id}">{_e(s.title)}</a></li>' for s in sections)
        out.append("</ol></nav>")
    for s in sections:
        out.append(f'<section id="{s.id}"><h2>{_e(s.title)}</h2>')
        if s.intro:
            out.append(f'<p class="small">{_md_code(s.intro)}</p>')
        for part in s.parts:
            if isinstance(part, _Figure):
                out.append(
                    f"<figure>{_img(part.path, part.caption)}"
                    f"<figcaption>{_md_code(part.caption)}</figcaption></figure>"
                )
            else:
                out.append(part)
        out.append("</section>")
    out.append(
        f"<footer>Every figure is embedded above; PNG copies are in "
        f"<code>{_e(files_dir.name)}/</code> next to this file.</footer>"
    )
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


def _md_code(text: str) -> str:
    """Escape text, turning `backticks` into <code>."""
    parts = _e(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def build_report(
    run_dirs: list[Path],
    out: Path,
    title: str = "lengthwise report",
    command: str | None = None,
) -> Path:
    """Write ``out`` (a self-contained HTML page: PNG figures embedded as data URIs, inline CSS,
    no network references) comparing ``run_dirs``, plus the PNGs in ``<out stem>_files/``; both
    are replaced atomically. Returns ``out``. ``command`` is the command line shown at the top
    (default: the equivalent `lengthwise report` call). A path that is not a run directory is a
    :class:`UserError`; a run that lacks some files gets fewer sections and a note."""
    if not run_dirs:
        raise UserError("report: give at least one run directory")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out}: is a directory; -o needs an .html file path")
    runs = [load_run(Path(p)) for p in run_dirs]
    for run, label in zip(runs, _labels([r.path for r in runs]), strict=True):
        run.label = label
    if command is None:
        command = shlex.join(
            ["lengthwise", "report", *map(str, run_dirs), "-o", str(out)]
            + (["--title", title] if title != "lengthwise report" else [])
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    files_dir = out.with_name(f"{out.stem}_files")
    files_dir.mkdir(exist_ok=True)
    builder = _Builder(runs, files_dir)
    builder.build()
    for stale in files_dir.glob("*.png"):  # figures of an earlier report under the same name
        if stale not in builder.written:
            stale.unlink(missing_ok=True)
    page = _render(title, runs, builder.sections, command, files_dir)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
