"""Data pipeline throughput, measured side by side in one run.

  .venv/bin/python benchmarks/data_pipeline.py [--config configs/demo_text.yaml] [--steps 64]

Rows: `prepare` (tokenizer-bound encoding of the train split into a fresh store), then for each
batching strategy the index build (decomposition / packing / permutation of one epoch) and batch
production (plans + token gather + Batch assembly). The last column divides each throughput by
the training throughput of a demo-sized model measured in the same run: batch production must be
at least 20x faster than training so it never bounds a training run.

The training reference is the config's model (lengthwise GPT), one AdamW step on a full-length
batch of the config's tokens per step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from lengthwise.config import STRATEGY_NAMES, ModelConfig, load_config
from lengthwise.data.sources import SourceStats, iter_documents
from lengthwise.data.stats import config_for
from lengthwise.data.store import TokenStore, prepare, write_store
from lengthwise.data.strategies import build_strategy
from lengthwise.data.tokenizer import load_tokenizer
from lengthwise.model.gpt import GPT


def reference_train_tokens_per_s(
    model_cfg: ModelConfig, vocab: int, seq_len: int, rows: int, steps: int = 3
) -> float:
    """Tokens/s of one training step (forward, backward, AdamW) of the config's model."""
    torch.manual_seed(0)
    model = GPT(model_cfg.model_copy(update={"vocab_size": vocab}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, vocab, (rows, seq_len))

    def step() -> None:
        model(x, targets=x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return rows * seq_len * steps / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/demo_text.yaml")
    ap.add_argument("--steps", type=int, default=64, help="batches produced per strategy")
    args = ap.parse_args()
    cfg = load_config(args.config)
    prepare(cfg.data, progress=False)
    store = TokenStore(cfg.data.out_dir / "train")
    tok = load_tokenizer(cfg.data.out_dir / "tokenizer.json")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        docs = iter_documents(cfg.data.splits["train"], SourceStats())
        start = time.perf_counter()
        meta = write_store(Path(tmp) / "train", docs, tok, {}, progress=False)
        secs = time.perf_counter() - start
    rows.append(("prepare (encode + write)", "-", meta["n_tokens"] / secs))

    pad_id = store.meta["tokenizer"]["pad_id"]
    for name in STRATEGY_NAMES:
        bcfg = config_for(cfg.batching, name)
        if bcfg is None:
            continue
        start = time.perf_counter()
        strategy = build_strategy(bcfg, store.tokens, store.offsets, pad_id=pad_id)
        n_steps = min(args.steps, strategy.steps_in_epoch(0))
        strategy.plan(0, 0)
        index_secs = time.perf_counter() - start
        start = time.perf_counter()
        tokens = 0
        for step in range(n_steps):
            tokens += strategy.batch(0, step).input_ids.numel()
        rows.append(
            (
                f"batches: {name} ({bcfg.curriculum.name})",
                f"{index_secs:.3f}",
                tokens / (time.perf_counter() - start),
            )
        )

    train = reference_train_tokens_per_s(
        cfg.model,
        tok.vocab_size,
        cfg.batching.max_len,
        cfg.batching.tokens_per_step // cfg.batching.max_len,
    )
    print(
        f"store: {store.n_docs:,} docs, {store.n_tokens:,} tokens; "
        f"{cfg.batching.tokens_per_step:,} tokens/step; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    head = f"{'stage':<44}{'index s':>9}{'tokens/s':>14}{'x training':>12}"
    print(head)
    print("-" * len(head))
    for stage, index, tps in rows:
        print(f"{stage:<44}{index:>9}{tps:>14,.0f}{tps / train:>11.1f}x")
    m = cfg.model
    ref = f"training reference ({m.n_layer}x{m.d_model} GPT, fwd+bwd+AdamW)"
    print(f"{ref:<44}{'-':>9}{train:>14,.0f}{1:>11.1f}x")
    slow = [stage for stage, _, tps in rows[1:] if tps < 20 * train]
    if slow:
        print(f"FAIL: batch production < 20x training throughput for: {', '.join(slow)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
