"""The trainer's eval round: when it is due, the metrics, the OOD alerts (log, console, hook),
early stopping, and whether the tracked metric reached a new best.

The evaluator's standard errors go to the monitor (each alert's z and significance) and into the
eval record under `se` (one field, apart from the metric names).

All of it happens before the step's checkpoint is written, so the checkpoint holds the monitor,
the stopper and the best value *after* this eval, and a run resumed from it makes exactly the
decisions an uninterrupted one would.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lengthwise.config import Config
from lengthwise.eval.evaluator import Evaluator
from lengthwise.train.log import RunLog
from lengthwise.train.monitor import EarlyStopping, OODMonitor, direction, run_hook


@dataclass
class EvalOutcome:
    metrics: dict[str, float] = field(default_factory=dict)
    stop_reason: str | None = None  # early stopping's sentence, None to go on
    new_best: bool = False  # the tracked metric improved: checkpoint and copy to best/


class EvalRound:
    """Eval sets + OOD monitor + early stopping + best tracking, due every `eval.every_tokens` of
    the budget (counted from the last eval) and at the end of training."""

    def __init__(self, cfg: Config, evaluator: Evaluator | None, is_main: bool) -> None:
        self.evaluator, self.is_main = evaluator, is_main
        self.every_tokens = cfg.eval.every_tokens
        ood = evaluator.ood_metrics if evaluator else []
        m = cfg.monitor
        self.monitor = OODMonitor(
            ood,
            alert_drop=m.alert_drop,
            alert_level=m.alert_level,
            only_significant=m.alert_only_significant,
            min_best=m.min_best,
        )
        es = cfg.monitor.early_stopping
        self.stopper = None
        if es.enabled:  # the config checked that the metric exists (Config._check_eval)
            self.stopper = EarlyStopping(
                es.metric or evaluator.default_stop_metric,  # type: ignore[union-attr]
                mode=es.mode,
                patience=es.patience,
                min_delta=es.min_delta,
                stop_on_drop=es.stop_on_drop,
                check_finite=es.check_finite,
            )
        self.best_metric = cfg.train.best_metric or (self.stopper.metric if self.stopper else None)
        self.hook = cfg.monitor.on_alert  # an argv list (config.hook_argv) or None

    def describe_hook(self) -> str | None:
        """The line the run's log shows before the first step: what an alert will run."""
        if self.hook is None:
            return None
        return (
            f"monitor.on_alert runs `{shlex.join(self.hook)}` (no shell) at the first eval of "
            "each OOD drop, the alert as JSON on stdin"
        )

    def due(self, counters: Any, budget: int, end: bool) -> bool:
        """Whether to evaluate after this step; moves `counters.next_eval` on when it fires."""
        if (self.every_tokens and budget >= counters.next_eval) or end:
            counters.next_eval = budget + self.every_tokens
            return self.evaluator is not None
        return False

    def run(self, model: nn.Module, counters: Any, log: RunLog) -> EvalOutcome:
        metrics = self.evaluator.run(model) if self.evaluator else {}
        # the metrics' standard errors (an evaluator without them: alerts of unknown noise)
        noise = dict(getattr(self.evaluator, "noise", None) or {})
        c = counters
        log.write("eval", c.tokens, c.step, **metrics, **({"se": noise} if noise else {}))
        new_best = self._track_best(metrics, c)
        alerts = self.monitor.update(metrics, c.step, c.tokens, noise=noise)
        c.alerts += len(alerts)
        c.alerts_significant += sum(a.significant is True for a in alerts)
        c.alerts_within_noise += sum(a.significant is False for a in alerts)
        for a in alerts:
            event = a.to_dict()
            log.write(
                "alert",
                c.tokens,
                c.step,
                **{k: v for k, v in event.items() if k not in ("tokens", "step")},
            )
            log.message(a.line())
            if self.hook and self.is_main and a.first:  # once per drop
                problem = run_hook(self.hook, event)
                if problem:
                    log.message(f"monitor.on_alert failed: {problem}")
        reason = None
        if self.stopper is not None:
            decision = self.stopper.update(metrics[self.stopper.metric], c.step, alert=bool(alerts))
            if decision.stop:
                reason = decision.reason
                log.write("early_stop", c.tokens, c.step, reason=reason)
                log.message(f"early stop at step {c.step}: {reason}")
        return EvalOutcome(metrics, reason, new_best)

    def _track_best(self, metrics: dict[str, float], c: Any) -> bool:
        key = self.best_metric
        if not key or not math.isfinite(metrics[key]):
            return False
        value = metrics[key]
        sign = 1.0 if direction(key) == "min" else -1.0
        if c.best is None or sign * value < sign * c.best:
            c.best = value
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor.state_dict(),
            "stopper": self.stopper.state_dict() if self.stopper else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state["monitor"])
        if self.stopper is not None and state.get("stopper"):
            self.stopper.load_state_dict(state["stopper"])
