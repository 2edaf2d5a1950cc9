"""Run logging: JSONL (the source of truth), TensorBoard event files, and a progress bar.

Only the main rank logs. Each JSONL line is one event with `event`, `time`, `tokens` and `step`
(lengthwise.rundir lists the kinds); plots and reports read this file, never live objects. A
resumed run first trims the file back to its checkpoint (`RunDir.trim_metrics`), and TensorBoard
hides the events past it (`purge_step`), so both read as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from tqdm import tqdm

from lengthwise.rundir import RunDir


class RunLog:
    def __init__(
        self,
        run: RunDir,
        total_tokens: int,
        start_tokens: int,
        enabled: bool,
        progress: bool,
        tensorboard: bool,
        start_seconds: float = 0.0,
    ) -> None:
        """`start_tokens`/`start_seconds`: where a resumed run's budget and clock stood at its
        checkpoint, so the bar, the TensorBoard steps and the `time` of the records continue."""
        self.enabled = enabled
        # Kept open for the whole run (closed in close()): one line per event, flushed.
        self._file = (
            open(run.metrics_path, "a", encoding="utf-8")  # noqa: SIM115
            if enabled
            else None
        )
        self._tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imports TensorFlow stubs: slow

            # events logged past the checkpoint by an interrupted attempt are hidden
            self._tb = SummaryWriter(log_dir=str(run.tensorboard_dir), purge_step=start_tokens + 1)
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
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k not in ("tokens", "time", "step"):
                    self._tb.add_scalar(f"{event}/{k}" if "/" not in k else k, v, tokens)

    def advance(self, tokens: int, **postfix: Any) -> None:
        self._bar.update(tokens)
        if postfix:
            self._bar.set_postfix({k: _short(v) for k, v in postfix.items()}, refresh=False)

    def message(self, text: str) -> None:
        """A console line that does not break the progress bar."""
        if self.enabled:
            tqdm.write(text)

    def close(self) -> None:
        self._bar.close()
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf
    return v


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
