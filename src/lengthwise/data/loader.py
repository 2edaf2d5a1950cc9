"""`BatchLoader`: the only stateful part of the data pipeline, a cursor over (epoch, step).

Strategies are pure functions of (epoch, step), so the loader's whole state is three ints, and
resuming is exact by construction: a loader rebuilt from `state_dict()` yields batches that are
`torch.equal` to the ones the uninterrupted run would have yielded. The state also carries a
fingerprint of everything the batch order depends on (strategy, batching config, world size,
rank, store size), so resuming onto different data or settings fails loudly instead of silently
training on a different order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from lengthwise.batch import Batch
from lengthwise.data.strategy import Strategy
from lengthwise.errors import UserError


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


class BatchLoader:
    """Yields the strategy's batches forever: epoch e+1 starts after the last step of epoch e.

    `epoch` and `step_in_epoch` count what has been consumed: after the last step of epoch e
    they read (e, steps_in_epoch(e)) until the next batch rolls over to (e+1, 0).
    """

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self._epoch = 0
        self._step = 0
        self._global_step = 0

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def step_in_epoch(self) -> int:
        return self._step

    @property
    def global_step(self) -> int:
        return self._global_step

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        s = self.strategy
        while self._step >= s.steps_in_epoch(self._epoch):
            if s.steps_in_epoch(self._epoch + 1) == 0:
                raise UserError(
                    f"{s.name}: epoch {self._epoch + 1} has no step: {len(s.lengths)} documents "
                    f"({int(s.lengths.sum())} tokens) do not fill one step of "
                    f"batching.tokens_per_step={s.cfg.tokens_per_step}"
                )
            self._epoch, self._step = self._epoch + 1, 0
        batch = s.batch(self._epoch, self._step)
        self._step += 1
        self._global_step += 1
        return batch

    def fingerprint(self) -> str:
        """JSON of everything the batch order depends on (compared key by key on load)."""
        s = self.strategy
        return json.dumps(
            {
                "strategy": s.name,
                "batching": s.cfg.model_dump(mode="json"),
                "world_size": s.world_size,
                "rank": s.rank,
                "n_docs": len(s.lengths),
                "n_tokens": int(s.lengths.sum()),
            },
            sort_keys=True,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self._epoch,
            "step_in_epoch": self._step,
            "global_step": self._global_step,
            "fingerprint": self.fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` left off; ValueError naming every setting that changed."""
        saved = _flatten(json.loads(state["fingerprint"]))
        now = _flatten(json.loads(self.fingerprint()))
        changed = [
            f"{key}: {saved.get(key)!r} -> {now.get(key)!r}"
            for key in sorted(saved.keys() | now.keys())
            if saved.get(key) != now.get(key)
        ]
        if changed:
            raise ValueError("data loader state does not match this run: " + "; ".join(changed))
        epoch, step = int(state["epoch"]), int(state["step_in_epoch"])
        n = self.strategy.steps_in_epoch(epoch)
        if not 0 <= step <= n:
            raise ValueError(f"step_in_epoch {step} outside epoch {epoch} ({n} steps)")
        self._epoch, self._step, self._global_step = epoch, step, int(state["global_step"])
