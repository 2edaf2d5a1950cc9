"""One HF Trainer run on a LengthwiseDataset (best_fit rows, evals every 3 steps), dumped for
test_transformers.py's two-rank test:

    torchrun --nproc_per_node=2 hf_ddp_worker.py DATA_JSON OUT   # OUT/rank0.pt, OUT/rank1.pt

and called in-process (`run`) for the one-process reference."""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, TrainingArguments

from lengthwise.config import Config
from lengthwise.data.store import TokenStore
from lengthwise.integrations.transformers import (
    GeneralizationCallback,
    LengthwiseTrainer,
    lengthwise_dataset,
    register_attention,
)

BATCHING = {"strategy": "best_fit", "tokens_per_step": 512, "max_len": 64}


class Recording(LengthwiseTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[torch.Tensor, int]] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen.append((inputs["input_ids"].clone(), int(num_items_in_batch)))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def run(data: dict, out: Path, steps: int = 6) -> Path:
    args = TrainingArguments(  # first: it joins the process group torchrun set up
        output_dir=str(out),
        max_steps=steps,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_pin_memory=False,
    )
    store = TokenStore(Path(data["out_dir"]) / "train")
    register_attention()
    config = LlamaConfig(
        vocab_size=store.meta["tokenizer"]["vocab_size"],
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="lengthwise")
    sets = [
        {"name": "val", "split": "val", "tag": "id", "tokens": 512},
        {"name": "ood", "split": "ood", "tag": "ood", "tokens": 512},
    ]
    cfg = Config.model_validate({"data": data, "batching": BATCHING, "eval": {"sets": sets}})
    trainer = Recording(
        model=model,
        args=args,
        train_dataset=lengthwise_dataset(store, BATCHING),  # this rank's rows
        callbacks=[GeneralizationCallback(cfg, every_steps=3)],
    )
    trainer.train()
    path = out / f"rank{args.process_index}.pt"
    dump = {
        "seen": trainer.seen,
        "weights": {k: v.clone() for k, v in trainer.model.state_dict().items()},
        "log": trainer.state.log_history,
    }
    torch.save(dump, path)
    return path


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(json.loads(sys.argv[1]), Path(sys.argv[2]))
