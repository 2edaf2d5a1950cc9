"""Reading run folders for the report: what each run has, and a note for each thing it lacks.

The files and their readers are :class:`lengthwise.rundir.RunDir`'s; this module only decides
what the report makes of them. A report of a half-finished, old or damaged run is still useful,
so a missing or unreadable file becomes a note on the page (and fewer sections), never an error;
only a folder with neither `metrics.jsonl` nor `summary.json` is refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lengthwise.errors import UserError
from lengthwise.rundir import EVAL_SUITES, AlertCounts, RunDir, alert_counts


@dataclass
class Run:
    """Everything the report knows about one run folder (parsed files; missing ones None)."""

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

    def alert_counts(self) -> AlertCounts:
        """Its OOD alerts, significant ones apart from noise (summary.json, else the records)."""
        return alert_counts(self.summary, self.events("alert"))

    @property
    def train(self) -> list[dict[str, Any]]:
        return self.events("train")

    @property
    def eval_records(self) -> list[dict[str, Any]]:
        return self.events("eval")

    def cfg(self, *keys: str, default: Any = None) -> Any:
        """A value of the config tree (`run.cfg("model", "position")`), `default` if absent."""
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

    @property
    def store(self) -> str | None:
        """The token store the run read (`data.out_dir`), None when the config does not say.
        Runs on one store saw the same tokens, so their curves share axes."""
        got = self.cfg("data", "out_dir")
        return os.path.normpath(os.path.abspath(got)) if isinstance(got, str) and got else None


def load_run(path: Path) -> Run:
    """Read one run folder; a path with neither metrics.jsonl nor summary.json is a
    :class:`UserError`. Files that are missing or unreadable become notes, not errors."""
    rd = RunDir(Path(path))
    if not rd.path.is_dir():
        raise UserError(f"{rd.path}: no such run directory")
    if not rd.metrics_path.is_file() and not rd.summary_path.is_file():
        raise UserError(f"{rd.path}: not a run directory (no metrics.jsonl and no summary.json)")
    run = Run(path=rd.path)
    notes = run.notes

    if not rd.config_path.is_file():
        notes.append("no config.yaml: strategy, position encoding and eval tags unknown")
    else:
        run.config = rd.config_tree() or {}
        if not run.config:
            notes.append("config.yaml: unreadable, left out")

    if not rd.metrics_path.is_file():
        notes.append("no metrics.jsonl: no curves over training")
    else:
        try:
            run.records, bad = rd.metrics_with_errors()
        except OSError as e:
            notes.append(f"metrics.jsonl: unreadable ({type(e).__name__}), left out")
        else:
            if bad:
                notes.append(f"metrics.jsonl: {bad} unreadable line(s) skipped")

    run.summary = _mapping(
        rd.summary(),
        rd.summary_path,
        "summary.json",
        "no summary.json (still running or stopped abnormally): final numbers are the last "
        "logged ones",
        notes,
    )
    run.data_stats = _mapping(
        rd.data_stats(),
        rd.data_stats_path,
        "data_stats.json",
        "no data_stats.json: no padding / dropped-token accounting",
        notes,
    )
    for suite in EVAL_SUITES:
        got = _mapping(
            rd.eval_result(suite), rd.eval_dir / f"{suite}.json", f"eval/{suite}.json", None, notes
        )
        if got is not None:
            run.evals[suite] = got
    if not run.evals:
        notes.append(
            "no eval/*.json: run `lengthwise eval RUN --suite lengths|valley|memorization` "
            "for the length, valley and memorization sections"
        )
    return run


def _mapping(
    value: Any, path: Path, name: str, missing: str | None, notes: list[str]
) -> dict[str, Any] | None:
    """`value` if it is a JSON object; otherwise None and a note: unreadable when the file
    `name` is there, `missing` (if given) when it is not."""
    if isinstance(value, dict):
        return value
    if path.is_file():
        notes.append(f"{name}: unreadable, left out")
    elif missing:
        notes.append(missing)
    return None


def run_labels(paths: Sequence[Path]) -> list[str]:
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


def load_runs(paths: Sequence[Path]) -> list[Run]:
    """:func:`load_run` for each path, labelled with :func:`run_labels`."""
    runs = [load_run(Path(p)) for p in paths]
    for run, label in zip(runs, run_labels([r.path for r in runs]), strict=True):
        run.label = label
    return runs


def group_by_store(runs: Sequence[Run]) -> list[tuple[str | None, list[Run]]]:
    """Runs grouped by the token store they read, in order of first appearance: runs on one
    store are comparable token for token (the demo's two text runs); a task run on another store
    (millions of tokens at loss ~0) would squeeze them into a corner of shared axes. A run whose
    store is unknown stands alone."""
    groups: dict[Any, tuple[str | None, list[Run]]] = {}
    for r in runs:
        key = r.store if r.store is not None else ("unknown", id(r))
        groups.setdefault(key, (r.store, []))[1].append(r)
    return list(groups.values())
