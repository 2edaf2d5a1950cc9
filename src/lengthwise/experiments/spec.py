"""What an experiment is, read from its YAML (``experiments/eN_*.yaml``): a base config (a file or
inline), overrides for every point, the grid of points, the time budget and the rate estimate
it is turned into tokens with, and free-form ``settings`` for the experiment's own code.
Everything here is checked on load: a bad value is one line naming the file and the key."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lengthwise.config import read_yaml_mapping
from lengthwise.errors import UserError

# src/lengthwise/experiments/spec.py -> the checkout
REPO = Path(__file__).resolve().parents[3]


@dataclass
class Point:
    """One grid point: a name (its run directory) and the overrides that define it. `minutes`
    gives the point a fixed training budget of its own (else it shares what the budget leaves
    after the fixed points), `tokens_per_second` its own rate estimate (else the spec's)."""

    name: str
    overrides: list[str]
    labels: dict[str, str] = field(default_factory=dict)  # axis -> value label, for tables
    minutes: float | None = None
    tokens_per_second: float | None = None


@dataclass
class Spec:
    experiment: str
    title: str
    question: str
    path: Path
    base: Path | None  # a config file, or
    config: dict[str, Any] | None  # an inline config
    overrides: list[str]
    points: list[Point]
    budget_minutes: float
    tokens_per_second: float
    evals_per_run: int
    eval_every_tokens: int | None
    threads: int | None
    settings: dict[str, Any]
    quick: bool


def experiments_dir() -> Path:
    """The folder of the experiment YAMLs: the checkout's experiments/, else ./experiments."""
    for d in (REPO / "experiments", Path.cwd() / "experiments"):
        if d.is_dir():
            return d
    return REPO / "experiments"


def expand_grid(raw: Any, where: str) -> list[Point]:
    """A grid is a list of points ``{name, overrides}`` or ``{product: [axis, ...]}`` with axes
    ``{axis: NAME, values: {LABEL: [overrides...]}}``; a product point is named
    ``AXIS-LABEL_AXIS-LABEL``."""
    if isinstance(raw, dict) and "product" in raw:
        axes = raw["product"]
        if not isinstance(axes, list) or not axes:
            raise UserError(f"{where}: grid.product must be a non-empty list of axes")
        options = []
        for ax in axes:
            if (
                not isinstance(ax, dict)
                or "axis" not in ax
                or not isinstance(ax.get("values"), dict)
            ):
                raise UserError(f"{where}: each grid.product axis needs 'axis' and 'values'")
            options.append([(ax["axis"], str(k), list(v or [])) for k, v in ax["values"].items()])
        points = []
        for combo in itertools.product(*options):
            name = "_".join(f"{a}-{label}" for a, label, _ in combo)
            overrides = [o for _, _, ov in combo for o in ov]
            points.append(Point(safe_name(name), overrides, {a: label for a, label, _ in combo}))
        return points
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{where}: grid must be a non-empty list of points or {{product: ...}}")
    points = []
    for p in raw:
        if not isinstance(p, dict) or "name" not in p:
            raise UserError(f"{where}: each grid point needs a 'name'")
        labels = {str(k): str(v) for k, v in (p.get("labels") or {}).items()}
        extra = {}
        for key in ("minutes", "tokens_per_second"):
            if p.get(key) is not None:
                if not isinstance(p[key], int | float) or isinstance(p[key], bool) or p[key] <= 0:
                    raise UserError(f"{where}: point {p['name']}: {key} must be a number > 0")
                extra[key] = float(p[key])
        points.append(
            Point(safe_name(str(p["name"])), list(p.get("overrides") or []), labels, **extra)
        )
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise UserError(f"{where}: grid point names must be unique, got {names}")
    return points


def safe_name(name: str) -> str:
    """`name` usable as a folder name: characters other than letters, digits and ``-_.=``
    become ``_``."""
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)


def spec_number(value: Any, where: str, integer: bool = False, positive: bool = True) -> Any:
    """A number of the spec (`where` names the file and key): a YAML int or float (an int
    where `integer`), > 0 where `positive`, else >= 0. Anything else (`budget_minutes: abc`)
    is a one-line UserError."""
    kinds = int if integer else int | float
    number = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    if number and (value > 0 or (value == 0 and not positive)):
        return value
    what = "an integer" if integer else "a number"
    raise UserError(f"{where}: expected {what} {'> 0' if positive else '>= 0'}, got {value!r}")


def load_spec(path: Path, experiment: str, quick: bool = False) -> Spec:
    """The experiment YAML at `path`; with `quick`, its ``quick:`` section's values replace
    the top-level ones (a tiny smoke-test variant)."""
    path = Path(path)
    raw = read_yaml_mapping(path, "experiment")
    if raw.get("experiment", experiment) != experiment:
        raise UserError(f"{path}: is experiment {raw.get('experiment')}, not {experiment}")
    if ("base" in raw) == ("config" in raw):
        raise UserError(f"{path}: needs exactly one of 'base' (a config file) or 'config'")
    q = raw.get("quick") or {}
    if not isinstance(q, dict):
        raise UserError(f"{path}: quick: expected a mapping")

    def pick(key: str, default: Any, integer: bool = False, positive: bool = True) -> Any:
        where, value = key, raw.get(key, default)
        if quick and key in q:
            where, value = f"quick.{key}", q[key]
        return spec_number(value, f"{path}: {where}", integer, positive)

    overrides = list(raw.get("overrides") or []) + (list(q.get("overrides") or []) if quick else [])
    grid = q["grid"] if quick and "grid" in q else raw.get("grid")
    base = None
    if "base" in raw:
        base = Path(raw["base"])
        if not base.is_absolute():
            base = base if base.is_file() else (REPO / base)
        if not base.is_file():
            raise UserError(f"{path}: base config {raw['base']} not found")
    settings = dict(raw.get("settings") or {})
    if quick:
        settings.update(q.get("settings") or {})
    return Spec(
        experiment=experiment,
        title=str(raw.get("title", experiment)),
        question=str(raw.get("question", "")),
        path=path,
        base=base,
        config=raw.get("config"),
        overrides=overrides,
        points=expand_grid(grid, str(path)),
        budget_minutes=float(pick("budget_minutes", 10.0)),
        tokens_per_second=float(pick("tokens_per_second", 3000.0)),
        evals_per_run=pick("evals_per_run", 16, integer=True, positive=False),
        eval_every_tokens=pick("eval_every_tokens", 0, integer=True, positive=False) or None,
        threads=pick("threads", 0, integer=True, positive=False) or None,
        settings=settings,
        quick=quick,
    )
