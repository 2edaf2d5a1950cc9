"""lengthwise inside the Hugging Face `Trainer`, for people who keep their loop.

    from lengthwise.integrations.transformers import (
        GeneralizationCallback, LengthwiseTrainer, lengthwise_dataset, register_attention)

    register_attention()  # per-document attention for packed rows: attn_implementation="lengthwise"
    model = AutoModelForCausalLM.from_config(config, attn_implementation="lengthwise")
    train = lengthwise_dataset("data/demo_text/train", cfg.batching)
    trainer = LengthwiseTrainer(model=model, args=args, train_dataset=train,
                                callbacks=[GeneralizationCallback(cfg)])
    trainer.train()

- `lengthwise_dataset` / `LengthwiseDataset` (hf_data): a token store and a batching config as
  the batches the model takes (input_ids, labels, shift_labels, position_ids, and doc_ids or an
  attention mask only for packed rows), one lengthwise step per item, with its state_dict.
- `LengthwiseTrainer` / `LengthwiseTrainerMixin` (hf_trainer): the Trainer's data loading,
  resume and checks for that stream; the same batches as lengthwise's own loader, in the same
  order, across a resume.
- `GeneralizationCallback` (hf_callback): eval sets, OOD alerts, early stopping and the best
  checkpoint, by lengthwise's own EvalRound.
"""

from lengthwise.integrations.hf_callback import GeneralizationCallback
from lengthwise.integrations.hf_data import (
    LengthwiseDataset,
    document_kwargs,
    hf_labels,
    lengthwise_dataset,
    to_hf_batch,
)
from lengthwise.integrations.hf_trainer import (
    LengthwiseDataState,
    LengthwiseTrainer,
    LengthwiseTrainerMixin,
)
from lengthwise.model.hf import HFModel, register_attention

__all__ = [
    "GeneralizationCallback",
    "HFModel",
    "LengthwiseDataState",
    "LengthwiseDataset",
    "LengthwiseTrainer",
    "LengthwiseTrainerMixin",
    "document_kwargs",
    "hf_labels",
    "lengthwise_dataset",
    "register_attention",
    "to_hf_batch",
]
