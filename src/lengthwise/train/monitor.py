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

Noise: the relative rule alone says nothing of the eval set's own noise: a metric that wanders
below a lucky best alerts at every eval, and a best of 0.053 falling to 0.0 is a "100% drop".
So `update` takes the standard error of each metric at this eval (`noise`: the evaluator's
binomial SE sqrt(p(1-p)/n) for an accuracy on n items, the SE of the mean token loss for a
loss), the monitor keeps the SE of each best with the best, and every alert says whether the
drop is beyond the noise: `z` = (drop in the metric's units) / sqrt(se_best^2 + se_now^2), and
`significant` = z >= the one-sided normal quantile at `alert_level` (0.05 -> 1.645). Without an
SE for the value or the best, `z` and `significant` are None (unknown), never guessed. Two
options cut alerts: `only_significant` (a drop within the noise is no alert; a drop of unknown
noise still is) and `min_best` (no relative-drop alert from a best whose absolute value is below
it: 0.053 -> 0.0 on 300 items is significant, z = 4.1, but not worth a page). Non-finite values
always alert, as significant (no eval noise makes a NaN). Caveats: the best is the maximum of
many noisy evals, so it is biased upwards and z overstates a drop from it somewhat; token losses
within a document are correlated, so a loss SE that treats tokens as independent is too small.

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
from statistics import NormalDist
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
    the first eval of an episode (see the module docstring).

    Noise: `se` is the standard error of the difference value - best (sqrt(se_best^2 + se_now^2)),
    `z` the drop in units of it (|value - best| / se; inf when se is 0), `significant` whether z
    reaches the monitor's one-sided threshold. All three are None when the SE of the value or of
    the best is unknown; a non-finite value is significant with z and se None."""

    metric: str
    value: float
    best: float
    best_step: int | None
    drop: float
    step: int
    tokens: int
    first: bool
    reason: str
    z: float | None = None
    se: float | None = None
    significant: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (floats may be NaN/inf; `run_hook` writes those as strings)."""
        return dataclasses.asdict(self)

    @property
    def noise_text(self) -> str:
        """The noise verdict: "z=3.10, significant", "z=0.80, within noise" or "noise unknown"."""
        if self.z is None or self.significant is None:
            return "noise unknown"
        return f"z={self.z:.2f}, {'significant' if self.significant else 'within noise'}"

    def line(self) -> str:
        """The alert as one console line."""
        head = f"ALERT step {self.step}: {self.metric} = "
        if self.reason == "non-finite":
            best = "no finite best yet"
            if self.best_step is not None:
                best = f"best {self.best:.4g} at step {self.best_step}"
            return f"{head}{self.value} is not finite ({best})"
        return (
            f"{head}{self.value:.4g}, {self.drop:.1%} worse than its best {self.best:.4g} "
            f"(step {self.best_step}; {self.noise_text})"
        )


def z_threshold(level: float) -> float:
    """The one-sided normal quantile for a false-alarm rate `level` (0.05 -> 1.645)."""
    if not 0 < level < 0.5:
        raise ValueError(f"alert_level must be > 0 and < 0.5, got {level}")
    return NormalDist().inv_cdf(1 - level)


def drop_z(value: float, best: float, se_value: float, se_best: float, mode: str) -> float:
    """How many standard errors of the difference `value` is worse than `best` (negative =
    better); +-inf when both SEs are 0 and the values differ, 0 when they are equal."""
    worse = (best - value) if mode == "max" else (value - best)
    se = math.hypot(se_value, se_best)
    if se > 0:
        return worse / se
    return 0.0 if worse == 0 else math.copysign(math.inf, worse)


def _se_of(noise: dict[str, float] | None, name: str) -> float | None:
    """The SE of `name` in `noise`, None when absent or not a finite number >= 0."""
    if not noise or name not in noise or noise[name] is None:
        return None
    se = float(noise[name])
    return se if math.isfinite(se) and se >= 0 else None


class OODMonitor:
    """Best value per watched metric, and an alert when a metric is worse than its best by more
    than `alert_drop` relative (or absolute when the best is 0), or is not finite.

    `metrics`: the names to watch (those absent from an update are skipped); None watches every
    metric passed to `update`. `modes` overrides `direction()` per metric name.

    Noise (module docstring): `alert_level` is the one-sided false-alarm rate that makes a drop
    `significant`; `only_significant` drops the alerts whose drop is within the noise (not those
    of unknown significance, nor non-finite values); `min_best` > 0 drops the relative-drop alerts
    of a metric whose best is below it in absolute value.
    """

    def __init__(
        self,
        metrics: list[str] | None,
        alert_drop: float = 0.05,
        modes: dict[str, str] | None = None,
        *,
        alert_level: float = 0.05,
        only_significant: bool = False,
        min_best: float = 0.0,
    ) -> None:
        if not alert_drop > 0:
            raise ValueError(f"alert_drop must be > 0, got {alert_drop}")
        if not min_best >= 0:
            raise ValueError(f"min_best must be >= 0, got {min_best}")
        self.metrics = list(metrics) if metrics is not None else None
        self.alert_drop = float(alert_drop)
        self.modes = dict(modes or {})
        self.alert_level = float(alert_level)
        self.z_threshold = z_threshold(self.alert_level)
        self.only_significant = bool(only_significant)
        self.min_best = float(min_best)
        # name -> {"best": float | None, "best_step": int | None, "episode": str | None,
        #          "best_se": float | None (the SE of the best's eval; None: unknown)}
        self._state: dict[str, dict[str, Any]] = {}

    def mode(self, name: str) -> Mode:
        return direction(name, self.modes)

    def best(self, name: str) -> float | None:
        s = self._state.get(name)
        return None if s is None else s["best"]

    def update(
        self,
        metrics: dict[str, float],
        step: int,
        tokens: int,
        noise: dict[str, float] | None = None,
    ) -> list[AlertEvent]:
        """Feed one eval's metrics (and, optionally, `noise`: the standard error of each metric
        at this eval); the alerts it raises (in the order of the watched names)."""
        names = self.metrics if self.metrics is not None else list(metrics)
        alerts: list[AlertEvent] = []
        for name in names:
            if name not in metrics:
                continue
            value = float(metrics[name])
            mode = self.mode(name)
            se_now = _se_of(noise, name)
            s = self._state.setdefault(
                name, {"best": None, "best_step": None, "episode": None, "best_se": None}
            )
            best = s["best"]
            z = se = significant = None
            if not math.isfinite(value):
                reason, drop, significant = "non-finite", math.inf, True
            elif best is None or _is_better(value, best, mode):
                s.update(best=value, best_step=int(step), episode=None, best_se=se_now)
                continue
            else:
                drop = relative_drop(value, best, mode)
                if se_now is not None and s["best_se"] is not None:
                    se = math.hypot(se_now, s["best_se"])
                    z = drop_z(value, best, se_now, s["best_se"], mode)
                    significant = z >= self.z_threshold
                if (
                    not drop > self.alert_drop
                    or abs(best) < self.min_best
                    or (self.only_significant and significant is False)
                ):
                    s["episode"] = None  # no alert: any drop episode is over
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
                    z=z,
                    se=se,
                    significant=significant,
                )
            )
            s["episode"] = reason
        return alerts

    def state_dict(self) -> dict[str, Any]:
        return {"metrics": {k: dict(v) for k, v in self._state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the per-metric bests, their SEs and the episodes (`alert_drop`, the noise
        options, `modes` and the watched names stay as constructed, so a resumed run may change
        them). A state saved before SEs were kept loads with the bests' SEs unknown."""
        self._state = {
            k: {
                "best": v["best"],
                "best_step": v["best_step"],
                "episode": v.get("episode"),
                "best_se": v.get("best_se"),
            }
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
