"""Document-masked attention, forward + backward, per backend: FlexAttention vs per-document SDPA
vs one dense-masked SDPA, with plain causal SDPA (no documents) as the floor.

  .venv/bin/python benchmarks/attention_backends.py [--quick] [--json]          # CPU
  python benchmarks/attention_backends.py --device cuda                           (gpu_check.sh)

Why: on CUDA a document-masked row (concat_chunk_docmask, best_fit, packed HF rows) goes through
FlexAttention with a document BlockMask; on CPU through per-document SDPA calls or one dense
mask (lengthwise.model.attention picks). Which is faster, and what masking costs next to plain
causal attention, depends on the device and on how many documents share a row: this measures
the same inputs through every backend in one run. Rows of T tokens are cut into `docs`
documents at seeded random points (the layout packing produces); q, k, v (B, H, T, D) with B x T
= `--tokens` tokens. Times are medians of `--repeats` after one warm-up call (FlexAttention
compiles in it, per shape: its compile time is reported apart). fp32 on CPU, bf16 on CUDA.
Columns: milliseconds, and `vs per_doc` = per_doc ms / the backend's ms (above 1: faster).
FlexAttention has no backward on CPU (torch 2.13), so on CPU its column is `-`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

from lengthwise.model.attention import AttnMask, attention

BACKENDS = ("sdpa_causal", "flex", "per_doc", "dense")


def layout(B: int, T: int, n_docs: int, g: torch.Generator) -> torch.Tensor:
    """(B, T) document ids: each row cut into `n_docs` documents at random points."""
    doc = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        cuts = torch.randperm(T - 1, generator=g)[: n_docs - 1] + 1
        doc[b, cuts] = 1
    return doc.cumsum(1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_backend(
    backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttnMask, repeats: int
) -> tuple[float, float]:
    """(median ms of forward + backward, ms of the first call: warm-up and compilation)."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]

    def run() -> float:
        for t in leaves:
            t.grad = None
        sync(q.device)
        start = time.perf_counter()
        m = AttnMask() if backend == "sdpa_causal" else mask
        attention(*leaves, m, backend=backend).float().sum().backward()  # type: ignore[arg-type]
        sync(q.device)
        return 1e3 * (time.perf_counter() - start)

    first = run()
    return statistics.median(run() for _ in range(repeats)), first


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    rows = []
    for T in args.seq_len:
        B = max(1, args.tokens // T)
        for n_docs in args.docs:
            if n_docs > T // 8:
                continue
            mask = AttnMask(layout(B, T, n_docs, g).to(device))
            q, k, v = (
                torch.randn(B, args.n_head, T, args.head_dim, generator=g).to(device, dtype)
                for _ in range(3)
            )
            row: dict[str, Any] = {"device": args.device, "dtype": str(dtype).split(".")[1]}
            row |= {"seq_len": T, "rows": B, "docs": n_docs, "ms": {}, "first_ms": {}}
            for backend in BACKENDS:
                if backend == "flex" and device.type == "cpu":
                    continue  # no CPU backward
                ms, first = time_backend(backend, q, k, v, mask, args.repeats)
                row["ms"][backend], row["first_ms"][backend] = ms, first
            row["vs_per_doc"] = {b: row["ms"]["per_doc"] / ms for b, ms in row["ms"].items()}
            rows.append(row)
            print(format_row(row), file=sys.stderr, flush=True)
    return rows


def format_row(r: dict[str, Any]) -> str:
    cells = []
    for b in BACKENDS:
        ms = r["ms"].get(b)
        cells.append("-" if ms is None else f"{ms:,.1f} ({r['vs_per_doc'][b]:.2f}x)")
    return f"{r['seq_len']:>6}{r['rows']:>5}{r['docs']:>6}" + "".join(f"{c:>20}" for c in cells)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--quick", action="store_true", help="T 1024 only, 2 repeats (CPU: ~10 s)")
    ap.add_argument("--json", action="store_true", help="print only a JSON list of rows")
    ap.add_argument("--seq-len", type=int, nargs="+", help="default 2048 8192 (quick: 1024)")
    ap.add_argument("--docs", type=int, nargs="+", default=[1, 4, 32], help="documents per row")
    ap.add_argument("--tokens", type=int, default=16384, help="B x T per call")
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--repeats", type=int, help="timed calls per backend (default 5, quick 2)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("attention_backends: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    args.seq_len = args.seq_len or ([1024] if args.quick else [2048, 8192])
    args.repeats = args.repeats or (2 if args.quick else 5)
    if args.quick:
        args.tokens = min(args.tokens, 4096)
    rows = measure(args)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"command: {' '.join(sys.argv)}")
    print(f"{where}; torch {torch.__version__}; {rows[0]['dtype'] if rows else ''}; "
          f"H {args.n_head}, head dim {args.head_dim}; forward + backward, median of "
          f"{args.repeats}; ms (per_doc ms / ms)")  # fmt: skip
    print(f"{'T':>6}{'rows':>5}{'docs':>6}" + "".join(f"{b:>20}" for b in BACKENDS))
    for r in rows:
        print(format_row(r))
    if any("flex" in r["first_ms"] for r in rows):
        first = max(r["first_ms"]["flex"] for r in rows if "flex" in r["first_ms"])
        print(f"flex: first call per shape (compilation) up to {first / 1e3:.1f} s, not timed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
