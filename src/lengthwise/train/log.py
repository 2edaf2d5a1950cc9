"""Run logging: JSONL (the source of truth), the trackers of `train.loggers`, a progress bar.

Only the main rank logs. Each JSONL line is one event with `event`, `time`, `tokens` and `step`
(lengthwise.rundir lists the kinds); plots and reports read this file, never live objects. A
resumed run first trims the file back to its checkpoint (`RunDir.trim_metrics`), so it reads as
one uninterrupted run. Every record also goes to the trackers (lengthwise.train.trackers): its
numeric fields as scalars, and the kinds in EVENTS as events. A tracker that fails mid-run
(a tracking server gone) is dropped with one warning line: the run and its JSONL go on.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from lengthwise.rundir import RunDir
from lengthwise.train.trackers import EVENTS, Tracker, first_line

_HEADER = ("tokens", "time", "step")  # numbers every record has: not scalars


class RunLog:
    def __init__(
        self,
        run: RunDir,
        total_tokens: int,
        start_tokens: int,
        enabled: bool,
        progress: bool,
        trackers: Sequence[Tracker] = (),
        start_seconds: float = 0.0,
    ) -> None:
        """`start_tokens`/`start_seconds`: where a resumed run's budget and clock stood at its
        checkpoint, so the bar and the `time` of the records continue. `trackers`: opened by
        the caller (lengthwise.train.trackers.open_trackers), closed here."""
        self.enabled = enabled
        # Kept open for the whole run (closed in close()): one line per event, flushed.
        self._file = (
            open(run.metrics_path, "a", encoding="utf-8")  # noqa: SIM115
            if enabled
            else None
        )
        self._trackers = list(trackers) if enabled else []
        self._closed = False
        self._bar = tqdm(
            total=total_tokens,
            initial=start_tokens,
            unit="tok",
            unit_scale=True,
            disable=not (enabled and progress),
            dynamic_ncols=True,
        )
        self.start_time = time.time() - start_seconds

    def elapsed(self) -> float:
        """Seconds on the run's clock (across resumes)."""
        return time.time() - self.start_time

    def write(self, event: str, tokens: int, step: int, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"event": event, "time": round(self.elapsed(), 3), "tokens": tokens, "step": step}
        record.update({k: _plain(v) for k, v in fields.items()})
        self._file.write(json.dumps(record) + "\n")  # type: ignore[union-attr]
        self._file.flush()  # type: ignore[union-attr]
        if not self._trackers:
            return
        scalars = {
            k if "/" in k else f"{event}/{k}": v
            for k, v in record.items()
            if isinstance(v, int | float) and k not in _HEADER  # NaN/inf are strings by now
        }
        for tracker in list(self._trackers):
            try:
                if scalars:
                    tracker.log_scalars(tokens, scalars)
                if event in EVENTS:
                    tracker.log_event(event, record)
            except Exception as e:  # a dashboard must not end a long run
                self._trackers.remove(tracker)
                self.message(
                    f"warning: {type(tracker).__name__} failed ({first_line(e)}); it is off "
                    "for the rest of this run (metrics.jsonl has every record)"
                )

    def advance(self, tokens: int, **postfix: Any) -> None:
        self._bar.update(tokens)
        if postfix:
            self._bar.set_postfix({k: _short(v) for k, v in postfix.items()}, refresh=False)

    def message(self, text: str) -> None:
        """A console line that does not break the progress bar."""
        if self.enabled:
            tqdm.write(text)

    def close(self, failed: bool = False) -> None:
        """Once (later calls do nothing); `failed`: the run ended by an exception, which the
        W&B and MLflow runs record."""
        if self._closed:
            return
        self._closed = True
        self._bar.close()
        if self._file is not None:
            self._file.close()
        for tracker in self._trackers:
            try:
                tracker.close(failed=failed)
            except Exception as e:
                self.message(f"warning: {type(tracker).__name__} did not close ({first_line(e)})")


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf
    return v


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
