"""OOD alerting and early stopping: pure logic on the metrics dict of each eval (no torch).

- `direction(name)`: whether a metric is better high ("max": acc, exact_match, f1, parse_rate, ...)
  or low ("min": loss, ppl, perplexity, nll, bpb, *_loss), from the last '/' component.
- `OODMonitor`: keeps the best value of each watched metric and returns an `AlertEvent` for every
  metric that is worse than its best by more than `alert_drop` (relative), or not finite.
- `EarlyStopping`: PyTorch Lightning's `EarlyStopping` on one metric (patience, min_delta,
  check_finite, stopping/divergence thresholds), plus `stop_on_drop` (stop at an OOD alert).
- `run_hook(argv, event)`: the `monitor.on_alert` program (no shell), the event as JSON on stdin.
- `mean_metric(metrics, names)`: the mean of some metrics (the "mean OOD metric").

Alert re-fire policy: an alert fires at EVERY eval while a metric stays in the dropped state, so
the log shows how long a drop lasts; `first=True` marks the first eval of a drop episode (hooks
that page someone should act on `first` only). The episode ends when the value comes back within
`alert_drop` of its best (or improves on it); the next drop starts a new episode. A non-finite
value is its own episode kind (reason "non-finite"): going from "drop" to "non-finite" (or back)
starts a new episode, so `first` is set again.

All state (`state_dict()`) is plain JSON types, so a resumed run makes exactly the decisions an
uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shlex
import signal
import subprocess
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["min", "max"]

_MIN_NAMES = frozenset({"loss", "ppl", "perplexity", "nll", "bpb"})
_MIN_SUFFIXES = ("_loss", "_ppl", "_perplexity", "_nll", "_bpb")


def direction(name: str, modes: dict[str, str] | None = None) -> Mode:
    """'min' for losses (last '/' component loss, ppl, perplexity, nll, bpb or *_loss, *_ppl,
    *_nll, *_bpb), 'max' for everything else (acc, exact_match, f1, parse_rate, rates).

    `modes` overrides: looked up by the full name first, then by the last component.
    """
    if modes:
        for key in (name, name.rsplit("/", 1)[-1]):
            if key in modes:
                mode = modes[key]
                if mode not in ("min", "max"):
                    raise ValueError(f"mode for '{key}' must be 'min' or 'max', got {mode!r}")
                return mode  # type: ignore[return-value]
    last = name.rsplit("/", 1)[-1].lower()
    if last in _MIN_NAMES or last.endswith(_MIN_SUFFIXES):
        return "min"
    return "max"


def relative_drop(value: float, best: float, mode: str) -> float:
    """How much worse `value` is than `best`, relative to |best| (positive = worse); the absolute
    difference when best == 0."""
    worse = (best - value) if mode == "max" else (value - best)
    return worse / abs(best) if best != 0 else worse


def _is_better(value: float, best: float, mode: str) -> bool:
    return value > best if mode == "max" else value < best


# ---------------------------------------------------------------------------------- OOD alerts


@dataclass
class AlertEvent:
    """One alert: `metric` = `value` is `drop` (relative, positive = worse) below its `best`
    (reached at `best_step`). `reason` is "drop" or "non-finite"; for "non-finite", `drop` is inf,
    and `best` is NaN / `best_step` None when the metric never had a finite value. `first` marks
    the first eval of an episode (see the module docstring)."""

    metric: str
    value: float
    best: float
    best_step: int | None
    drop: float
    step: int
    tokens: int
    first: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (floats may be NaN/inf; `run_hook` writes those as strings)."""
        return dataclasses.asdict(self)


class OODMonitor:
    """Best value per watched metric, and an alert when a metric is worse than its best by more
    than `alert_drop` relative (or absolute when the best is 0), or is not finite.

    `metrics`: the names to watch (those absent from an update are skipped); None watches every
    metric passed to `update`. `modes` overrides `direction()` per metric name.
    """

    def __init__(
        self,
        metrics: list[str] | None,
        alert_drop: float = 0.05,
        modes: dict[str, str] | None = None,
    ) -> None:
        if not alert_drop > 0:
            raise ValueError(f"alert_drop must be > 0, got {alert_drop}")
        self.metrics = list(metrics) if metrics is not None else None
        self.alert_drop = float(alert_drop)
        self.modes = dict(modes or {})
        # name -> {"best": float | None, "best_step": int | None, "episode": str | None}
        self._state: dict[str, dict[str, Any]] = {}

    def mode(self, name: str) -> Mode:
        return direction(name, self.modes)

    def best(self, name: str) -> float | None:
        s = self._state.get(name)
        return None if s is None else s["best"]

    def update(self, metrics: dict[str, float], step: int, tokens: int) -> list[AlertEvent]:
        """Feed one eval's metrics; the alerts it raises (in the order of the watched names)."""
        names = self.metrics if self.metrics is not None else list(metrics)
        alerts: list[AlertEvent] = []
        for name in names:
            if name not in metrics:
                continue
            value = float(metrics[name])
            mode = self.mode(name)
            s = self._state.setdefault(name, {"best": None, "best_step": None, "episode": None})
            best = s["best"]
            if not math.isfinite(value):
                reason, drop = "non-finite", math.inf
            elif best is None or _is_better(value, best, mode):
                s.update(best=value, best_step=int(step), episode=None)
                continue
            else:
                drop = relative_drop(value, best, mode)
                if not drop > self.alert_drop:
                    s["episode"] = None  # within the threshold: any drop episode is over
                    continue
                reason = "drop"
            alerts.append(
                AlertEvent(
                    metric=name,
                    value=value,
                    best=math.nan if best is None else best,
                    best_step=s["best_step"],
                    drop=drop,
                    step=int(step),
                    tokens=int(tokens),
                    first=s["episode"] != reason,
                    reason=reason,
                )
            )
            s["episode"] = reason
        return alerts

    def state_dict(self) -> dict[str, Any]:
        return {"metrics": {k: dict(v) for k, v in self._state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the per-metric bests and episodes (`alert_drop`, `modes` and the watched names
        stay as constructed, so a resumed run may change them)."""
        self._state = {
            k: {"best": v["best"], "best_step": v["best_step"], "episode": v.get("episode")}
            for k, v in state.get("metrics", {}).items()
        }


# ---------------------------------------------------------------------------------- early stop


@dataclass
class StopDecision:
    """The outcome of one `EarlyStopping.update`: stop or not, whether the value improved on the
    best (by more than min_delta), why it stops (a sentence, None when it does not), and the state
    after this eval."""

    stop: bool
    improved: bool
    reason: str | None
    best: float | None
    best_step: int | None
    wait: int


class EarlyStopping:
    """Lightning `EarlyStopping` semantics on one metric, checked in this order:

    1. `check_finite`: a NaN/inf value stops at once (without it, a non-finite value counts as
       no improvement);
    2. improvement: value < best - min_delta ("min") or value > best + min_delta ("max") makes it
       the new best and resets the wait count; otherwise the wait count grows by one;
    3. `stopping_threshold`: stop once the value reaches it (value <= t for "min", >= t for "max";
       inclusive, so e.g. acc 1.0 can be reached; Lightning compares strictly);
    4. `divergence_threshold`: stop once the value is worse than it (value > t for "min",
       < t for "max");
    5. patience: stop when the wait count reaches `patience`;
    6. `stop_on_drop`: stop when `alert` is set (the caller passes whether an OOD alert fired at
       this eval).

    The first stop reason found is reported. Unlike Lightning, an eval that both improves and
    hits a threshold still records the new best.
    """

    def __init__(
        self,
        metric: str,
        mode: Mode | None = None,
        patience: int = 3,
        min_delta: float = 0.0,
        stop_on_drop: bool = False,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
    ) -> None:
        if mode is None:
            mode = direction(metric)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min', 'max' or None, got {mode!r}")
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.metric = metric
        self.mode: Mode = mode
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.stop_on_drop = stop_on_drop
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.best: float | None = None
        self.best_step: int | None = None
        self.wait = 0

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def _best_text(self) -> str:
        if self.best is None:
            return "no best yet"
        return f"best {self.best:.4g} at step {self.best_step}"

    def update(self, value: float, step: int, alert: bool = False) -> StopDecision:
        """Feed this eval's value of `metric`; whether to stop now."""
        value = float(value)
        m = self.metric
        reason: str | None = None
        improved = False
        if self.check_finite and not math.isfinite(value):
            reason = f"{m} = {value} is not finite ({self._best_text()})"
        else:
            improved = self._improves(value)
            if improved:
                self.best, self.best_step, self.wait = value, int(step), 0
            else:
                self.wait += 1
            t, d = self.stopping_threshold, self.divergence_threshold
            reached = "<=" if self.mode == "min" else ">="
            worse = ">" if self.mode == "min" else "<"
            if t is not None and (value <= t if self.mode == "min" else value >= t):
                reason = f"{m} = {value:.4g} reached the stopping threshold ({reached} {t})"
            elif d is not None and (value > d if self.mode == "min" else value < d):
                reason = f"{m} = {value:.4g} diverged past the threshold ({worse} {d})"
            elif self.wait >= self.patience and not improved:
                reason = (
                    f"{m} did not improve by more than {self.min_delta} for {self.wait} evals "
                    f"({self._best_text()})"
                )
            elif alert and self.stop_on_drop:
                reason = f"an OOD alert fired at step {step} (stop_on_drop; {self._best_text()})"
        return StopDecision(
            stop=reason is not None,
            improved=improved,
            reason=reason,
            best=self.best,
            best_step=self.best_step,
            wait=self.wait,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "mode": self.mode,
            "best": self.best,
            "best_step": self.best_step,
            "wait": self.wait,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore best/wait. A state saved for another metric or mode is ignored (the stopper
        starts afresh), since its best is not comparable."""
        if state.get("metric") != self.metric or state.get("mode") != self.mode:
            return
        self.best = state["best"]
        self.best_step = state["best_step"]
        self.wait = int(state["wait"])


# ---------------------------------------------------------------------------------- helpers


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf (the same convention as the run log)
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    return v


def _tail(text: str, n: int = 500) -> str:
    text = (text or "").strip()
    return text if len(text) <= n else "..." + text[-n:]


def run_hook(argv: list[str], event: dict[str, Any], timeout: float = 30) -> str | None:
    """Run the program `argv` (no shell) with `event` as one JSON line on stdin (non-finite
    floats as strings).

    Never raises: None on success, else a message (non-zero exit with the end of its stderr,
    timeout, or failure to start). On timeout the command's whole process group is killed.
    """
    cmd = shlex.join(argv)
    try:
        line = json.dumps(_json_safe(event)) + "\n"
    except (TypeError, ValueError) as e:
        return f"event is not JSON-serializable: {e}"
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, killed as a whole on timeout
        )
    except Exception as e:  # noqa: BLE001 - a hook must never take the run down
        return f"'{cmd}' could not start: {e}"
    try:
        _, err = proc.communicate(line, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        with contextlib.suppress(Exception):  # reap it; never wait on stray pipes for long
            proc.communicate(timeout=5)
        return f"'{cmd}' timed out after {timeout:g}s"
    except Exception as e:  # noqa: BLE001
        _kill_group(proc)
        return f"'{cmd}' failed: {e}"
    if proc.returncode != 0:
        detail = _tail(err)
        return f"'{cmd}' exited with status {proc.returncode}" + (f": {detail}" if detail else "")
    return None


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - not POSIX
            proc.kill()
    except (ProcessLookupError, PermissionError, OSError):
        pass


def mean_metric(metrics: dict[str, float], names: list[str]) -> float:
    """The mean of `metrics[n]` for n in `names` (NaN if any is NaN). Raises KeyError naming the
    missing metrics, ValueError for an empty list."""
    if not names:
        raise ValueError("mean_metric: no metric names")
    missing = [n for n in names if n not in metrics]
    if missing:
        raise KeyError(f"mean_metric: missing {', '.join(missing)}")
    values = [float(metrics[n]) for n in names]
    if any(math.isnan(v) for v in values):
        return math.nan
    return sum(values) / len(values)
