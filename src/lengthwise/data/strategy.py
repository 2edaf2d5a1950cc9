"""The interface every batching strategy implements.

A strategy is a pure function of (epoch, step): it never keeps a cursor. The stateful part
(which epoch and step comes next) lives in `lengthwise.data.loader`, so resuming is exact by
construction, and stats can walk an epoch without disturbing training.

Sharding: `tokens_per_step` is global. At every step all ranks plan the same global batch
(same bucket or sequence length, same rows); rank r keeps rows [r*B/W, (r+1)*B/W). The union of
the ranks' rows is therefore exactly the single-process batch with the same global size.

Task position ids (coupled stores): `positions` replaces the ids counted from each document
start with the stored ones, and in training each row is shifted by a random offset (see
`Strategy.position_offsets`). The offset lives here, in the data, rather than in the model:
it is then a pure function of (seed, epoch, step, row) like everything else a strategy
produces, so resume stays exact, and it is a shift, which keeps both what coupling means
(equal ids stay equal) and the id differences that relative biases and windows read. The
model's `random_positions_max` (Ruoss et al.) maps each id p to the p-th element of a sorted
random subset: equal ids stay equal and order is kept, but differences are stretched at
random, so a `relative_bias` window over ids loses its meaning; it suits learned tables only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from lengthwise.batch import Batch
from lengthwise.config import BatchingConfig
from lengthwise.data.plan import StepPlan, assemble
from lengthwise.errors import UserError

_OFFSET_STREAM = 0x0FF5E7  # keeps the offset draws apart from every other (seed, epoch) stream


class Strategy(ABC):
    name: str = ""

    def __init__(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        cfg: BatchingConfig,
        pad_id: int,
        rank: int = 0,
        world_size: int = 1,
        prompt_lens: np.ndarray | None = None,
        positions: np.ndarray | None = None,
    ) -> None:
        """`tokens`: the flat token array (a memmap in practice); document i is
        tokens[offsets[i]:offsets[i+1]] and already ends with EOS. `prompt_lens[i]`: leading
        tokens of document i that are a task's prompt (no loss), or None for plain text.
        `positions`: a position id per token, parallel to `tokens` (TokenStore.positions of a
        coupled task store), or None: batches then count positions from each document start."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.tokens = tokens
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.diff(self.offsets)
        self.cfg = cfg
        self.pad_id = pad_id
        self.rank = rank
        self.world_size = world_size
        self.prompt_end = None
        self.positions = positions
        if positions is not None and len(positions) != len(tokens):
            raise ValueError(f"{len(positions)} position ids for {len(tokens)} tokens")
        if prompt_lens is not None:
            self.prompt_end = self.offsets[:-1] + np.asarray(prompt_lens, dtype=np.int64)
        if len(self.lengths) == 0:
            raise UserError("the token store holds no documents")

    def global_rows(self, seq_len: int) -> int:
        """Rows per global step for a sequence length: tokens_per_step / seq_len, as a multiple
        of the world size (so every rank gets the same number of rows)."""
        rows = self.cfg.tokens_per_step // seq_len
        rows -= rows % self.world_size
        if rows == 0:
            raise UserError(
                f"batching.tokens_per_step={self.cfg.tokens_per_step} is too small for "
                f"{self.world_size} ranks at sequence length {seq_len}"
            )
        return rows

    def local_rows(self, global_rows: int) -> slice:
        per = global_rows // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    @abstractmethod
    def steps_in_epoch(self, epoch: int) -> int:
        """Number of optimizer steps in `epoch` (the same on every rank)."""

    @abstractmethod
    def plan(self, epoch: int, step: int) -> StepPlan:
        """This rank's rows for `step` of `epoch` (0 <= step < steps_in_epoch(epoch))."""

    def epoch_summary(self, epoch: int) -> dict[str, Any]:
        """Strategy-specific facts for `data-stats` (bucket histogram, truncated docs, ...)."""
        return {}

    def position_offsets(self, epoch: int, step: int, n_rows: int) -> np.ndarray | None:
        """This rank's per-row shift of the stored position ids at (epoch, step): uniform in
        [0, position_offset_max], drawn for the global rows from (seed, epoch, step) alone, so
        a resumed run and any world size see the same offsets per global row. None without
        stored positions or with position_offset_max 0."""
        top = self.cfg.position_offset_max
        if self.positions is None or not top:
            return None
        rng = np.random.default_rng([self.cfg.seed, epoch, step, _OFFSET_STREAM])
        drawn = rng.integers(0, top + 1, size=n_rows * self.world_size, dtype=np.int64)
        return drawn[self.rank * n_rows : (self.rank + 1) * n_rows]

    def batch(self, epoch: int, step: int) -> Batch:
        plan = self.plan(epoch, step)
        return assemble(
            self.tokens,
            plan,
            self.pad_id,
            self.prompt_end,
            positions=self.positions,
            position_offset=self.position_offsets(epoch, step, plan.n_rows),
        )
