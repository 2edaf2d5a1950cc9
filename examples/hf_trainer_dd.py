"""Dataset Decomposition + Grow-P2 inside a Hugging Face Trainer, watched by lengthwise.

    python examples/hf_trainer_dd.py [--steps 400] [--out runs/hf_trainer_dd]

A tiny Llama (transformers' own LlamaForCausalLM: 2 layers, width 64, 0.36M parameters)
trains with the stock `Trainer` loop on a few Linux kernel documents of the bundled corpus, in
lengthwise's batches: Dataset Decomposition (every row one document piece of a power-of-two
length: no padding, no mask) with the Grow-P2 curriculum (short buckets first, in cycles), so T
changes from step to step while every step holds the same number of tokens.
`GeneralizationCallback` evaluates it every few steps on held-out kernel documents
(in-distribution) and on PostgreSQL's manual (out-of-distribution). A few documents trained for
many epochs is the overtraining setting: the in-distribution loss keeps falling after the OOD
loss has turned, so the OOD monitor alerts (5% worse than its best), early stopping ends the
run (stop_on_drop), and the weights of the best step come back. Under a minute on 2 CPU cores
(26 s measured: 160 steps, 16 evals; a first run also prepares the data, ~3 s).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, TrainingArguments  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from lengthwise.config import Config  # noqa: E402
from lengthwise.data.store import TokenStore, prepare  # noqa: E402
from lengthwise.integrations.transformers import (  # noqa: E402
    GeneralizationCallback,
    LengthwiseTrainer,
    lengthwise_dataset,
    register_attention,
)

TRAIN_DOCS = 12  # the first documents of the training split: a small set, trained many epochs


def lengthwise_config(data_dir: Path, train_docs: int, eval_tokens: int) -> Config:
    """What lengthwise decides: the data, the batching, the eval sets and the monitor."""
    kernel, postgres = ROOT / "corpus" / "linux-doc", ROOT / "corpus" / "postgres-doc"
    return Config.model_validate(
        {
            "data": {
                "out_dir": str(data_dir),
                "tokenizer": {"kind": "bpe", "vocab_size": 2048},  # trained on `train`
                "splits": {
                    "train": {
                        "kind": "jsonl",
                        "path": str(kernel / "train.jsonl.gz"),
                        "max_docs": train_docs,
                    },
                    "val": {"kind": "jsonl", "path": str(kernel / "val.jsonl.gz"), "max_docs": 100},
                    "ood": {
                        "kind": "jsonl",
                        "path": str(postgres / "ood.jsonl.gz"),
                        "max_docs": 100,
                    },
                },
            },
            "batching": {
                "strategy": "decomposition",
                "tokens_per_step": 2048,
                "max_len": 256,
                "min_bucket": 32,
                "curriculum": {"name": "grow_p2", "cycles": 2},
            },
            "eval": {
                "sets": [
                    {"name": "val", "split": "val", "tag": "id", "tokens": eval_tokens},
                    {"name": "ood", "split": "ood", "tag": "ood", "tokens": eval_tokens},
                ]
            },
            "monitor": {
                "alert_drop": 0.05,  # an OOD loss 5% worse than its best alerts
                "early_stopping": {"enabled": True, "patience": 20, "stop_on_drop": True},
                "restore_best": True,
            },
        }
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="optimizer steps at most")
    p.add_argument("--eval-every", type=int, default=10, help="steps between evals")
    p.add_argument("--eval-tokens", type=int, default=4096, help="tokens per eval set")
    p.add_argument("--train-docs", type=int, default=TRAIN_DOCS)
    p.add_argument("--data", type=Path, default=ROOT / "data" / "hf_trainer_dd")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "hf_trainer_dd")
    args = p.parse_args(argv)
    start = time.time()
    torch.set_num_threads(1)  # a tiny model: a second thread only waits on a shared core
    hf_logging.disable_progress_bar()  # the bars of save_pretrained at each best checkpoint

    cfg = lengthwise_config(args.data, args.train_docs, args.eval_tokens)
    prepare(cfg.data, progress=False)  # a no-op when the stores are up to date
    train = lengthwise_dataset(args.data / "train", cfg.batching)

    register_attention()  # "lengthwise": per-document attention (DD rows need none; packed do)
    torch.manual_seed(0)
    llama = LlamaConfig(
        vocab_size=TokenStore(args.data / "train").meta["tokenizer"]["vocab_size"],
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=cfg.batching.max_len,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(llama, attn_implementation="lengthwise")

    training = TrainingArguments(
        output_dir=str(args.out),
        max_steps=args.steps,  # one step = one lengthwise step of tokens_per_step tokens
        learning_rate=5e-3,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=10,
        weight_decay=0.0,
        logging_steps=args.eval_every,
        save_strategy="no",  # the callback saves the best step's checkpoint itself
        save_total_limit=2,  # the best one is never rotated away
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    callback = GeneralizationCallback(cfg, every_steps=args.eval_every)
    trainer = LengthwiseTrainer(
        model=model, args=training, train_dataset=train, callbacks=[callback]
    )
    trainer.train()
    summary = {
        "steps": trainer.state.global_step,
        "alerts": len(callback.alerts),
        "stop": callback.stop_reason,
        "best_step": callback.best_step,
        "restored_step": callback.restored_step,
        "seconds": round(time.time() - start, 1),
    }
    print(
        f"\n{summary['steps']} steps in {summary['seconds']} s; {summary['alerts']} alerts; "
        f"stopped: {summary['stop'] or 'no'}; best step {summary['best_step']} restored: "
        f"{summary['restored_step'] is not None}"
    )
    return summary


if __name__ == "__main__":
    main()
