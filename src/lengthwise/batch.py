"""`Batch`: the single contract between the data pipeline and the model.

Every batching strategy produces this, and the model and trainer read nothing else. Conventions:

- `targets[b, t]` is the token that `input_ids[b, t]` should predict, or -100 (no loss) for
  padding, task prompt tokens, and the last token of a segment whose successor lies in another
  document (so the first token of a packed document is never predicted from its neighbour).
- `position_ids` restart at 0 at the start of every segment of a row (a document, or the part of a
  document that a row holds). `concat_chunk`, the classic baseline, is the one exception: it uses
  0..T-1 like nanoGPT, because cross-document attention is what that baseline means. A store with
  task position ids (the `coupled` format's positions.bin) overrides both: every token carries
  its stored id, plus in training one random offset per row (`batching.position_offset_max`).
- `doc_ids` is None when each row holds one document (plain causal attention suffices); otherwise it
  numbers the segments of each row 0, 1, 2, ... and padding is -1, so attention is allowed exactly
  where `doc_ids[q] == doc_ids[k]` and `k <= q` (padding attends only to padding: no empty rows).
- `n_target_tokens` counts targets != -100, so a trainer can normalize the summed loss by the whole
  step's count across micro-batches and ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

IGNORE_INDEX = -100


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64, IGNORE_INDEX = no loss
    position_ids: torch.Tensor  # (B, T) int64
    doc_ids: torch.Tensor | None  # (B, T) int64 segment index per row, -1 = padding; or None
    n_target_tokens: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[return-value]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        moved = {
            f.name: (
                getattr(self, f.name).to(device, non_blocking=non_blocking)
                if isinstance(getattr(self, f.name), torch.Tensor)
                else getattr(self, f.name)
            )
            for f in fields(self)
        }
        return Batch(**moved)

    def split_rows(self, n: int) -> list[Batch]:
        """Split into `n` micro-batches of whole rows (gradient accumulation)."""
        if self.input_ids.shape[0] % n:
            raise ValueError(f"cannot split {self.input_ids.shape[0]} rows into {n} micro-batches")
        parts = []
        for i in range(n):
            sl = slice(i * self.input_ids.shape[0] // n, (i + 1) * self.input_ids.shape[0] // n)
            targets = self.targets[sl]
            parts.append(
                Batch(
                    input_ids=self.input_ids[sl],
                    targets=targets,
                    position_ids=self.position_ids[sl],
                    doc_ids=None if self.doc_ids is None else self.doc_ids[sl],
                    n_target_tokens=int((targets != IGNORE_INDEX).sum()),
                )
            )
        return parts
