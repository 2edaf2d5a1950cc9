"""lengthwise's batches as the dicts a Hugging Face causal LM takes: one step per item.

`to_hf_batch` translates the Batch contract (lengthwise.batch) key by key:

- `shift_labels` = `targets` unchanged: transformers' ForCausalLMLoss uses `shift_labels` as is
  (no shift), so the loss sees every lengthwise target, the last one of a row included, and the
  Trainer counts `num_items_in_batch` from it (`shift_labels != -100`): exactly
  `Batch.n_target_tokens`, so the loss is lengthwise's mean token loss over the step.
- `labels`: the same targets aligned the Hugging Face way (`labels[:, t + 1]` is what position t
  predicts, `labels[:, 0]` = -100). The loss does not read them while `shift_labels` is there;
  they make the model compute a loss at all, and read right for anything else that looks.
- `position_ids` unchanged (restarting at every document of a packed row).
- documents of a packed row apart, by the model's attention implementation
  (lengthwise.model.hf.document_kwargs, the same keywords `lengthwise train` passes):
  `lengthwise` (lengthwise.model.hf.register_attention) gets `doc_ids` and runs per-document
  attention; `sdpa` a (B, 1, T, T) boolean document mask, `eager` the same as 0 / -inf;
  `flash_attention_2`/`_3` the segments' cumulative lengths (varlen); `flex_attention` nothing
  (transformers finds the documents from the restarting `position_ids`). A row with one
  document (Dataset Decomposition, pad) gets nothing under `lengthwise` and an all-ones padding
  mask otherwise, so that transformers never reads causality off task position ids.

`LengthwiseDataset` is the iterable the Trainer consumes: every item is one whole lengthwise
step (rows x T, T varying per step under decomposition), or with gradient accumulation k the
step's rows in k micro-batches, so one optimizer step is always one lengthwise step.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch.utils.data import IterableDataset

from lengthwise.batch import IGNORE_INDEX, Batch
from lengthwise.config import BatchingConfig, format_validation_error
from lengthwise.data.loader import BatchLoader
from lengthwise.data.store import TokenStore
from lengthwise.data.strategies import build_strategy
from lengthwise.errors import UserError
from lengthwise.model.hf import ATTENTION, document_kwargs

# implementations that find documents from the restarting position_ids (transformers' BlockMask)
POSITION_PACKED = ("flex_attention",)
SUPPORTED = (ATTENTION, "sdpa", "eager", "flash_attention_2", "flash_attention_3", *POSITION_PACKED)


def hf_labels(targets: torch.Tensor) -> torch.Tensor:
    """lengthwise targets (already shifted) as Hugging Face `labels` (shifted by the model)."""
    labels = torch.full_like(targets, IGNORE_INDEX)
    labels[:, 1:] = targets[:, :-1]
    return labels


def check_supported(attn_implementation: str) -> None:
    if attn_implementation not in SUPPORTED:
        raise UserError(
            f"attention implementation '{attn_implementation}': lengthwise batches support "
            f"{', '.join(SUPPORTED)}"
        )


def to_hf_batch(batch: Batch, attn_implementation: str) -> dict[str, torch.Tensor]:
    """One lengthwise Batch as keyword arguments of a transformers causal LM's forward."""
    check_supported(attn_implementation)
    (B, T), device = batch.input_ids.shape, batch.input_ids.device
    return {
        "input_ids": batch.input_ids,
        "labels": hf_labels(batch.targets),
        "shift_labels": batch.targets,
        "position_ids": batch.position_ids,
        **document_kwargs(attn_implementation, batch.doc_ids, B, T, device, torch.float32),
    }


class LengthwiseDataset(IterableDataset):
    """lengthwise's loader as a stream of ready batch dicts (DataLoader with batch_size=None).

    Iterating continues the loader's cursor (it never restarts): the stream is lengthwise's
    step sequence, and `state_dict()` is where it stands after the items consumed so far.
    `tokens` counts input slots of all ranks (rows x T x world size, lengthwise's `tokens`),
    `target_tokens` this rank's real targets.

    `attn_implementation` None: taken from the model by `LengthwiseTrainer`; `micro_batches`:
    set from the Trainer's gradient_accumulation_steps.
    """

    def __init__(
        self,
        loader: BatchLoader,
        attn_implementation: str | None = None,
        micro_batches: int = 1,
    ) -> None:
        super().__init__()
        self.loader = loader
        self.attn_implementation = attn_implementation
        self.micro_batches = micro_batches
        self.tokens = 0
        self.target_tokens = 0
        self.has_positions = loader.strategy.positions is not None

    @property
    def rank(self) -> int:
        return self.loader.strategy.rank

    @property
    def world_size(self) -> int:
        return self.loader.strategy.world_size

    @property
    def max_len(self) -> int:
        return self.loader.strategy.cfg.max_len

    def check_attention(self, attn_implementation: str) -> None:
        """Stored task position ids (coupled stores) do not grow by one along a document, so an
        implementation that finds documents from position_ids would cut them wrong."""
        check_supported(attn_implementation)
        if self.has_positions and attn_implementation in POSITION_PACKED:
            raise UserError(
                f"attention implementation '{attn_implementation}' finds documents from "
                "position_ids, which this store's task position ids (positions.bin) do not "
                f"mark; use '{ATTENTION}' or 'sdpa'"
            )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        impl = self.attn_implementation
        if impl is None:
            raise UserError(
                "LengthwiseDataset: no attn_implementation (pass the model's, "
                "model.config._attn_implementation, or train with LengthwiseTrainer)"
            )
        self.check_attention(impl)
        while True:
            batch = next(self.loader)
            rows, T = batch.input_ids.shape
            if rows % self.micro_batches:
                raise UserError(
                    f"gradient_accumulation_steps={self.micro_batches}: a step of {rows} rows "
                    f"of {T} tokens does not split into that many micro-batches; use a divisor "
                    f"of batching.tokens_per_step / batching.max_len (per rank)"
                )
            self.tokens += rows * T * self.world_size
            self.target_tokens += batch.n_target_tokens
            parts = batch.split_rows(self.micro_batches) if self.micro_batches > 1 else [batch]
            for part in parts:
                yield to_hf_batch(part, impl)

    def state_dict(self) -> dict[str, Any]:
        return {
            "loader": self.loader.state_dict(),
            "tokens": self.tokens,
            "target_tokens": self.target_tokens,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.loader.load_state_dict(state["loader"])
        except ValueError as e:
            raise UserError(f"resuming the lengthwise data: {e}") from None
        self.tokens, self.target_tokens = int(state["tokens"]), int(state["target_tokens"])


def lengthwise_dataset(
    store: str | Path | TokenStore,
    batching: BatchingConfig | dict[str, Any],
    attn_implementation: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> LengthwiseDataset:
    """A token store (a prepared split folder, e.g. data/demo_text/train) and a batching
    config (`strategy`, `tokens_per_step` across all ranks, `max_len`, `curriculum`, ...) as
    the dataset a Trainer consumes. `rank`/`world_size` default to torch.distributed's."""
    if not isinstance(store, TokenStore):
        store = TokenStore(store)
    if not isinstance(batching, BatchingConfig):
        try:
            batching = BatchingConfig.model_validate(batching)
        except ValidationError as e:
            raise UserError(format_validation_error("batching", e)) from None
    if rank is None or world_size is None:
        dist = torch.distributed
        on = dist.is_available() and dist.is_initialized()
        rank = (dist.get_rank() if on else 0) if rank is None else rank
        world_size = (dist.get_world_size() if on else 1) if world_size is None else world_size
    strategy = build_strategy(
        batching,
        store.tokens,
        store.offsets,
        store.meta["tokenizer"]["pad_id"],
        rank,
        world_size,
        prompt_lens=store.prompt_lens,
        positions=store.positions,
    )
    return LengthwiseDataset(BatchLoader(strategy), attn_implementation)
