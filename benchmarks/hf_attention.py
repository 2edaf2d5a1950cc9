"""Packed rows of a transformers Llama: lengthwise's per-document attention against
transformers' own SDPA and eager paths with a dense document mask, side by side.

  .venv/bin/python benchmarks/hf_attention.py [--threads 2] [--repeats 5] [--quick]

One row of T tokens packs documents of `--doc-len` tokens (the layout of a padding-free
flattened batch, `DataCollatorWithFlattening`, or of a packed row of best_fit at long context).
Every implementation gets what `lengthwise train` passes it (lengthwise.model.hf.HFModel):
`lengthwise` the document layout (per-document SDPA: one causal SDPA call per segment length,
never a T x T mask), `sdpa` and `eager` a (1, 1, T, T) document mask. Timed: forward + backward
of the whole model (d_model 256, 4 layers, 4 heads, the demo's size), median of `--repeats`
after one warm-up; the logits of every implementation are checked against `sdpa`'s first.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lengthwise.config import ModelConfig
from lengthwise.model.build import make_model

LLAMA = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 16384,
    "tie_word_embeddings": True,
}
IMPLEMENTATIONS = ("sdpa", "eager", "lengthwise")


def packed_row(T: int, doc_len: int, vocab: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, T), generator=gen)
    doc = (torch.arange(T) // doc_len)[None]
    pos = (torch.arange(T) % doc_len)[None]
    targets = torch.roll(ids, -1, 1)
    return ids, pos, doc, targets


def time_one(impl: str, T: int, doc_len: int, repeats: int) -> tuple[float, torch.Tensor]:
    cfg = ModelConfig(kind="hf", vocab_size=8192, hf={"config": LLAMA, "attention": impl})
    torch.manual_seed(0)
    model = make_model(cfg).train()
    ids, pos, doc, targets = packed_row(T, doc_len, 8192)
    times = []
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        loss = model(ids, pos, doc, targets)
        loss.backward()
        if i:  # the first one warms up kernels and allocators
            times.append(time.perf_counter() - t)
    with torch.no_grad():
        logits = model.eval()(ids, pos, doc)[0, -doc_len:]
    return statistics.median(times), logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--doc-len", type=int, default=512)
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--quick", action="store_true", help="T 1024 and 2048, 2 repeats")
    args = ap.parse_args()
    if args.quick:
        args.lengths, args.repeats = [1024, 2048], 2
    torch.set_num_threads(args.threads)
    print(
        f"transformers LlamaForCausalLM, d_model 256, 4 layers, 4 heads; one packed row of T "
        f"tokens, documents of {args.doc_len}; fwd+bwd, median of {args.repeats}; "
        f"{args.threads} threads; torch {torch.__version__}"
    )
    head = f"{'T':>6}{'docs':>6}" + "".join(f"{name + ' ms':>16}" for name in IMPLEMENTATIONS)
    head += f"{'lengthwise vs sdpa':>20}{'max |dlogit|':>14}"
    print(head)
    print("-" * len(head))
    for T in args.lengths:
        ms, logits = {}, {}
        for impl in IMPLEMENTATIONS:
            seconds, logits[impl] = time_one(impl, T, args.doc_len, args.repeats)
            ms[impl] = 1000 * seconds
        diff = max(float((logits[i] - logits["sdpa"]).abs().max()) for i in IMPLEMENTATIONS)
        print(
            f"{T:>6}{T // args.doc_len:>6}"
            + "".join(f"{ms[i]:>16,.0f}" for i in IMPLEMENTATIONS)
            + f"{ms['sdpa'] / ms['lengthwise']:>19.2f}x{diff:>14.1e}"
        )


if __name__ == "__main__":
    main()
