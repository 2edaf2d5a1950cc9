"""A Hugging Face `Trainer` that trains on lengthwise's batch sequence, resume included.

What the stock Trainer would do to a `LengthwiseDataset`, and what `LengthwiseTrainerMixin`
does instead:

- `get_train_dataloader`: the stock one wraps the dataset in a DataLoader of
  `per_device_train_batch_size` items and hands it to accelerate, which on several processes
  re-shards an IterableDataset (IterableDatasetShard, or dispatch from rank 0) and on one
  process reads one batch ahead. Here: a plain `DataLoader(batch_size=None, num_workers=0)`,
  never prepared by accelerate. Each item is already one rank's share of a step (the
  strategy shards by rank), tensors reach the device through the Trainer's `_prepare_inputs`,
  and the stream is read lazily, so after N optimizer steps the loader has produced exactly N
  steps (what its saved state says).
- `get_resumed_dataloader`: the stock one skips the trained batches by reading them
  (accelerate's skip_first_batches). Here the loader was restored from the checkpoint
  (`LengthwiseDataState`, below) and continues where it stood, whatever `ignore_data_skip`.
- `LengthwiseDataState` (added by the mixin) saves the loader's state in the checkpoint's
  trainer_state.json (transformers' `ExportableState`), and loads it at train begin.

One optimizer step = one lengthwise step: `gradient_accumulation_steps` k splits each step's
rows into k micro-batches (the Trainer's count of `shift_labels` over them normalizes the loss
by the whole step's targets). `max_steps` is required (the stream has no length; the Trainer
says so); with constant tokens per step, `max_steps = total_tokens // tokens_per_step`.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

from lengthwise.errors import UserError
from lengthwise.integrations.hf_callback import GeneralizationCallback
from lengthwise.integrations.hf_data import LengthwiseDataset
from lengthwise.model.hf import HFModel, require_transformers

transformers = require_transformers("lengthwise.integrations.transformers")
from transformers import Trainer, TrainerCallback  # noqa: E402
from transformers.trainer_callback import ExportableState  # noqa: E402


class LengthwiseDataState(TrainerCallback, ExportableState):
    """The LengthwiseDataset's position, saved in every checkpoint (trainer_state.json) and
    loaded when training begins. Needs no constructor argument, so transformers' own
    `restore_callback_states_from_checkpoint` can rebuild it too."""

    def __init__(self) -> None:
        self.dataset: LengthwiseDataset | None = None
        self.data: dict[str, Any] | None = None  # the state to load (set by transformers' rebuild)

    def state(self) -> dict[str, Any]:
        data = self.dataset.state_dict() if self.dataset is not None else self.data
        return {"args": {}, "attributes": {"data": data}}

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        if not isinstance(dataset, LengthwiseDataset):
            return
        self.dataset = dataset
        saved = state.stateful_callbacks.get(type(self).__name__)
        data = (saved or {}).get("attributes", {}).get("data") if isinstance(saved, dict) else None
        data = data or self.data
        if state.global_step == 0:
            return  # a fresh run: the loader starts where it stands
        if data is None:
            raise UserError(
                f"resuming at step {state.global_step}: the checkpoint holds no lengthwise data "
                "state (it was not saved by a LengthwiseTrainer)"
            )
        dataset.load_state_dict(data)
        at = dataset.loader.global_step
        if at != state.global_step:
            raise UserError(
                f"resuming at step {state.global_step}: the checkpoint's lengthwise loader stood "
                f"at step {at}"
            )


class LengthwiseTrainerMixin:
    """Mix into any `Trainer` subclass (before it) to train on a `LengthwiseDataset`; with any
    other train_dataset the Trainer behaves as its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not hasattr(Trainer, "get_resumed_dataloader"):
            raise UserError(
                f"LengthwiseTrainer: transformers {transformers.__version__} has no "
                "Trainer.get_resumed_dataloader; it needs transformers >= 5"
            )
        self.add_callback(LengthwiseDataState())
        for cb in self.callback_handler.callbacks:
            if isinstance(cb, GeneralizationCallback) and cb.trainer is None:
                cb.trainer = self

    def _lengthwise(self) -> LengthwiseDataset | None:
        ds = self.train_dataset
        return ds if isinstance(ds, LengthwiseDataset) else None

    def get_train_dataloader(self) -> DataLoader:
        ds = self._lengthwise()
        if ds is None:
            return super().get_train_dataloader()
        self._check_lengthwise(ds)
        args = self.args
        pin = bool(args.dataloader_pin_memory and args.device.type == "cuda")
        return DataLoader(ds, batch_size=None, num_workers=0, pin_memory=pin)

    def get_resumed_dataloader(self, dataloader: DataLoader, num_batches: int) -> DataLoader:
        if self._lengthwise() is None:
            return super().get_resumed_dataloader(dataloader, num_batches)
        return dataloader  # restored by LengthwiseDataState at train begin: nothing to skip

    def _check_lengthwise(self, ds: LengthwiseDataset) -> None:
        """Everything that would silently train on other batches than lengthwise's."""
        args = self.args  # max_steps > 0: the Trainer's own check (the stream has no length)
        if args.n_gpu > 1:
            raise UserError(
                f"{args.n_gpu} GPUs in one process (torch DataParallel) would split lengthwise's "
                "rows again; launch one process per GPU (torchrun / accelerate launch)"
            )
        if (ds.rank, ds.world_size) != (args.process_index, args.world_size):
            raise UserError(
                f"the LengthwiseDataset was built for rank {ds.rank} of {ds.world_size}, this "
                f"process is {args.process_index} of {args.world_size}; build it after "
                "TrainingArguments (or pass rank= and world_size=)"
            )
        if args.world_size > 1 and not args.average_tokens_across_devices:
            raise UserError(
                "TrainingArguments.average_tokens_across_devices: set it True, so the loss is "
                "normalized by the step's targets on all ranks, as lengthwise does"
            )
        model = self.accelerator.unwrap_model(self.model)
        impl = model.config._attn_implementation
        if ds.attn_implementation is None:
            ds.attn_implementation = impl
        elif ds.attn_implementation != impl:
            raise UserError(
                f"the LengthwiseDataset makes batches for attention '{ds.attn_implementation}', "
                f"the model runs '{impl}'"
            )
        ds.check_attention(impl)
        k = args.gradient_accumulation_steps
        if k > 1 and not self.model_accepts_loss_kwargs:
            raise UserError(
                f"gradient_accumulation_steps={k}: {type(model).__name__} takes no "
                "num_items_in_batch, so its micro-batch means would not add up to the step's"
            )
        ds.micro_batches = k
        limit = HFModel(model).max_positions
        if limit is not None and ds.max_len > limit:
            raise UserError(
                f"batching.max_len: {ds.max_len} tokens, but the model's learned position "
                f"table has {limit} rows"
            )


class LengthwiseTrainer(LengthwiseTrainerMixin, Trainer):
    """`transformers.Trainer` on a `LengthwiseDataset` (see the module docstring); a
    GeneralizationCallback among its callbacks logs through it."""
