"""Run logging: JSONL (the source of truth), TensorBoard event files, and a progress bar.

Only the main rank logs. Each JSONL line is one event: {"event": "train", "step": ...},
{"event": "eval", ...}, {"event": "nonfinite", ...}; plots and reports read this file, never
live objects.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


class RunLog:
    def __init__(
        self,
        run_dir: Path,
        total_tokens: int,
        start_tokens: int,
        enabled: bool,
        progress: bool,
        tensorboard: bool,
        start_seconds: float = 0.0,
    ) -> None:
        """`start_seconds`: where the `time` of the records starts (a resumed run's clock at its
        checkpoint, so times keep increasing across invocations)."""
        self.enabled = enabled
        # Kept open for the whole run (closed in close()): one line per event, flushed.
        self._file = (
            open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
            if enabled
            else None
        )
        self._tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
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

    def write(self, event: str, tokens: int, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"event": event, "time": round(self.elapsed(), 3), "tokens": tokens}
        record.update({k: _plain(v) for k, v in fields.items()})
        self._file.write(json.dumps(record) + "\n")  # type: ignore[union-attr]
        self._file.flush()  # type: ignore[union-attr]
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k not in ("tokens", "time"):
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


def read_metrics(run_dir: Path, event: str | None = None) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if event is None or r["event"] == event]
