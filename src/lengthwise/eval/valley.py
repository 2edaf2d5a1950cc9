"""Generalization valley: ID vs OOD accuracy per complexity level (Scylla, arXiv 2410.01769).

Scylla evaluates a model on items it has seen (in-distribution, ID) and on fresh items of the same
task and size (out-of-distribution, OOD) across a ladder of complexity classes (O(N), O(N log N),
O(N^2), ...). The ID-OOD gap first grows with complexity, then shrinks once the model fails on
both: the *generalization valley*. Its peak, the *critical complexity*, is where the model leans
most on memorized (non-generalizable) behaviour.

Gap definitions follow Scylla's code, ``utils/common_utils.py::measure_id_ood_gap`` in
github.com/zhentingqi/scylla (commit f96c058), called per task by ``6_compute_measurement.py``::

    diff          = max(id - ood, 0)
    ratio         = ood / id                  if id > 0 else 1
    relative_diff = max(id - ood, 0) / id     if id > 0 else 1

Here ``abs_gap`` is Scylla's ``diff`` and ``rel_gap`` its ``relative_diff`` (both clamped at 0, as
there); ``signed_gap`` is the unclamped ID - OOD, so an OOD accuracy above ID stays visible, and
``ratio`` is Scylla's ``ratio``.

Deliberate differences from Scylla, so results are comparable across models and honest:

- Denominators are ALL items. An unparseable answer is wrong. (Scylla drops unparseable answers
  from the denominator and sets the accuracy to 0 when fewer than 10% parse.) Parse rates are
  reported next to the accuracies when the rows carry ``id_parsed``/``ood_parsed``.
- When the ID accuracy is 0, ``rel_gap`` and ``ratio`` are undefined (``None``), not 1: with no ID
  accuracy there is nothing memorized to lose, and Scylla's 1 would make every level a model
  completely fails on look maximally critical.
- Several tasks at one level are aggregated by summing their counts (a micro average: a task with
  more items weighs more); per-task numbers are kept under ``per_task``.

The critical level is decided by ``rel_gap`` by default (``critical_by="rel_gap"``). Scylla's
measurement step records both ``acc_diff`` and ``acc_relative_diff`` per task, and its repository
has no code that picks the critical level (that happens in the paper's figures, whose text we
could not check here); we use the relative gap because it measures the share of ID accuracy lost
on fresh items, i.e. reliance on non-generalizable behaviour, independent of how hard a level is
overall. Pass ``critical_by="abs_gap"`` to decide by the absolute gap. Levels whose deciding gap
is undefined are skipped; ties (within 1e-12) go to the lowest level; when every gap is 0 (no
level answers seen problems better than fresh ones) there is no critical level.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GAP_KEYS = ("abs_gap", "rel_gap")
_TIE_TOL = 1e-12


@dataclass(frozen=True)
class ValleyRow:
    """One (task, complexity level) measurement; dicts with the same keys work too."""

    task: str
    complexity: str
    level: int
    id_correct: int
    id_total: int
    ood_correct: int
    ood_total: int
    id_parsed: int | None = None
    ood_parsed: int | None = None


def gaps(id_acc: float | None, ood_acc: float | None) -> dict[str, float | None]:
    """Scylla's ``measure_id_ood_gap`` (see module doc), with ``None`` where undefined."""
    if id_acc is None or ood_acc is None:
        return {"signed_gap": None, "abs_gap": None, "rel_gap": None, "ratio": None}
    signed = id_acc - ood_acc
    diff = max(signed, 0.0)
    return {
        "signed_gap": signed,
        "abs_gap": diff,
        "rel_gap": diff / id_acc if id_acc > 0 else None,
        "ratio": ood_acc / id_acc if id_acc > 0 else None,
    }


def _get(row: Any, key: str, default: Any = ...) -> Any:
    if isinstance(row, Mapping):
        if key in row:
            return row[key]
    elif hasattr(row, key):
        return getattr(row, key)
    if default is ...:
        raise ValueError(f"valley row {row!r} has no '{key}'")
    return default


def _count(row: Any, key: str, optional: bool = False) -> int | None:
    v = _get(row, key, None if optional else ...)
    if v is None:
        return None
    if isinstance(v, bool) or int(v) != v or v < 0:
        raise ValueError(f"valley row: '{key}' must be a non-negative integer, got {v!r}")
    return int(v)


def _acc(correct: int, total: int) -> float | None:
    return correct / total if total else None


def _measure(
    id_correct: int,
    id_total: int,
    ood_correct: int,
    ood_total: int,
    id_parsed: int | None,
    ood_parsed: int | None,
) -> dict[str, Any]:
    id_acc, ood_acc = _acc(id_correct, id_total), _acc(ood_correct, ood_total)
    out: dict[str, Any] = {
        "id_correct": id_correct,
        "id_total": id_total,
        "ood_correct": ood_correct,
        "ood_total": ood_total,
        "id_acc": id_acc,
        "ood_acc": ood_acc,
        **gaps(id_acc, ood_acc),
    }
    if id_parsed is not None:
        out["id_parsed"] = id_parsed
        out["id_parse_rate"] = _acc(id_parsed, id_total)
    if ood_parsed is not None:
        out["ood_parsed"] = ood_parsed
        out["ood_parse_rate"] = _acc(ood_parsed, ood_total)
    return out


def _parse_row(row: Any) -> dict[str, Any]:
    r = {
        "task": str(_get(row, "task")),
        "complexity": str(_get(row, "complexity")),
        "level": _get(row, "level"),
        "id_correct": _count(row, "id_correct"),
        "id_total": _count(row, "id_total"),
        "ood_correct": _count(row, "ood_correct"),
        "ood_total": _count(row, "ood_total"),
        "id_parsed": _count(row, "id_parsed", optional=True),
        "ood_parsed": _count(row, "ood_parsed", optional=True),
    }
    if isinstance(r["level"], bool) or int(r["level"]) != r["level"]:
        raise ValueError(f"valley row: 'level' must be an integer, got {r['level']!r}")
    r["level"] = int(r["level"])
    for side in ("id", "ood"):
        correct, total, parsed = r[f"{side}_correct"], r[f"{side}_total"], r[f"{side}_parsed"]
        if correct > total:
            raise ValueError(f"valley row {r['task']}: {side}_correct {correct} > total {total}")
        if parsed is not None and not correct <= parsed <= total:
            raise ValueError(
                f"valley row {r['task']}: need {side}_correct <= {side}_parsed <= {side}_total, "
                f"got {correct}, {parsed}, {total}"
            )
    return r


def _sum_optional(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def critical_level(levels: list[dict[str, Any]], by: str = "rel_gap") -> dict[str, Any] | None:
    """The level entry with the largest ``by`` gap (ties within 1e-12: the lowest level);
    levels where that gap is undefined are skipped; ``None`` when no level qualifies, or when no
    level answers seen problems better than fresh ones (every gap 0: there is no valley, and an
    argmax over zeros would name the first level)."""
    if by not in GAP_KEYS:
        raise ValueError(f"critical_by must be one of {GAP_KEYS}, got {by!r}")
    best: dict[str, Any] | None = None
    for lv in sorted(levels, key=lambda x: x["level"]):
        g = lv[by]
        if g is not None and (best is None or g > best[by] + _TIE_TOL):
            best = lv
    if best is None or best[by] <= _TIE_TOL:
        return None
    keys = ("level", "complexity", "id_acc", "ood_acc", "signed_gap", "abs_gap", "rel_gap")
    return {"by": by, **{k: best[k] for k in keys}}


def valley_table(rows: Iterable[Any], critical_by: str = "rel_gap") -> dict[str, Any]:
    """Per complexity level: ID/OOD accuracy (all items in the denominator), Scylla's gaps, and
    the critical level (largest ``critical_by`` gap, ties to the lowest level).

    ``rows``: one per (task, level), dicts or :class:`ValleyRow` with task, complexity, level,
    id_correct, id_total, ood_correct, ood_total and optionally id_parsed, ood_parsed. Tasks at
    the same level are summed; they must agree on the complexity label.

    Returns a JSON-able dict: ``{"levels": [...], "per_task": [...], "critical": {...} | None,
    "critical_by": ...}``; undefined values (0 items, 0 ID accuracy for ratios) are ``None``.
    """
    if critical_by not in GAP_KEYS:
        raise ValueError(f"critical_by must be one of {GAP_KEYS}, got {critical_by!r}")
    parsed = [_parse_row(r) for r in rows]
    seen: set[tuple[str, int]] = set()
    by_level: dict[int, list[dict[str, Any]]] = {}
    for r in parsed:
        if (r["task"], r["level"]) in seen:
            raise ValueError(f"valley rows: task {r['task']} at level {r['level']} twice")
        seen.add((r["task"], r["level"]))
        group = by_level.setdefault(r["level"], [])
        if group and group[0]["complexity"] != r["complexity"]:
            raise ValueError(
                f"valley rows: level {r['level']} has complexity {group[0]['complexity']!r} "
                f"({group[0]['task']}) and {r['complexity']!r} ({r['task']})"
            )
        group.append(r)

    def fields(rs: list[dict[str, Any]]) -> dict[str, Any]:
        return _measure(
            sum(r["id_correct"] for r in rs),
            sum(r["id_total"] for r in rs),
            sum(r["ood_correct"] for r in rs),
            sum(r["ood_total"] for r in rs),
            _sum_optional([r["id_parsed"] for r in rs]),
            _sum_optional([r["ood_parsed"] for r in rs]),
        )

    levels = []
    per_task = []
    for level in sorted(by_level):
        group = by_level[level]
        head = {"level": level, "complexity": group[0]["complexity"]}
        levels.append({**head, "tasks": [r["task"] for r in group], **fields(group)})
        per_task.extend({"task": r["task"], **head, **fields([r])} for r in group)
    return {
        "levels": levels,
        "per_task": per_task,
        "critical": critical_level(levels, critical_by),
        "critical_by": critical_by,
    }


def _fmt(x: float | None, width: int, spec: str = ".3f") -> str:
    return f"{'-' if x is None else format(x, spec):>{width}}"


def format_valley(table: Mapping[str, Any]) -> str:
    """A plain text table: one line per level, the critical level marked with ``<- critical``."""
    crit = table.get("critical")
    crit_level = crit["level"] if crit else None
    header = (
        f"{'level':>5}  {'complexity':<12}{'ID acc':>8}{'(c/n)':>11}{'OOD acc':>9}{'(c/n)':>11}"
        f"{'gap':>8}{'rel gap':>9}  tasks"
    )
    lines = [header, "-" * len(header)]
    for lv in table["levels"]:
        id_cn = f"{lv['id_correct']}/{lv['id_total']}"
        ood_cn = f"{lv['ood_correct']}/{lv['ood_total']}"
        line = (
            f"{lv['level']:>5}  {lv['complexity']:<12}{_fmt(lv['id_acc'], 8)}{id_cn:>11}"
            f"{_fmt(lv['ood_acc'], 9)}{ood_cn:>11}{_fmt(lv['abs_gap'], 8)}"
            f"{_fmt(lv['rel_gap'], 9)}  {','.join(lv.get('tasks', []))}"
        )
        if lv["level"] == crit_level:
            line += "  <- critical"
        lines.append(line)
    by = table.get("critical_by", "rel_gap")
    if crit:
        lines.append(
            f"critical complexity: {crit['complexity']} (level {crit['level']}, largest {by} "
            f"= {crit[by]:.3f})"
        )
    else:
        lines.append(f"critical complexity: none (no level with a {by} above 0)")
    lines.append("accuracy counts every item; unparseable answers are wrong")
    return "\n".join(lines)
