"""The LM head's loss, forward + backward: F.linear + F.cross_entropy vs chunked_lm_loss.

  PYTHONPATH=src .venv/bin/python benchmarks/lm_loss.py [--quick] [--threads 2] [--repeats 3]
  PYTHONPATH=src python benchmarks/lm_loss.py --device cuda

For each size (N tokens, width C, vocabulary V): the summed cross-entropy of x (N, C) @ W.T
with 10% of the targets ignored, and the gradients of x and W. The reference materializes the
float32 logits (N x V) and their gradient; chunked_lm_loss (model/lm_loss.py, default chunk)
one chunk at a time. Every measurement runs in its own process (this script with `--worker`),
reference and chunked interleaved, so that on CPU the peak RSS (ru_maxrss) is per variant: the
table shows the peak above the process's RSS once the inputs exist. On CUDA the peak is
torch.cuda.max_memory_allocated above the memory allocated once the inputs exist, after a
warm-up run. Ratios are chunked / reference, paired per repeat, then the median. `--quick`: one
N and C, two vocabularies, two repeats (< 60 s on 2 CPU threads).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from lengthwise.model.lm_loss import chunked_lm_loss

MB = 2**20
FULL = dict(n=(8192, 16384), c=(128, 256), v=(8192, 32768, 50257))
QUICK = dict(n=(8192,), c=(128,), v=(8192, 32768))


def rss_now() -> int:
    """Resident bytes of this process now (Linux /proc; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(variant: str, n: int, c: int, v: int, device: str) -> dict:
    """One forward + backward of `variant`; its seconds and peak memory above the inputs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, generator=g).to(device).requires_grad_()
    w = (0.02 * torch.randn(v, c, generator=g)).to(device).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    t[torch.rand(n, generator=g) < 0.1] = -100
    t = t.to(device)

    def step() -> None:
        if variant == "reference":
            F.cross_entropy(F.linear(x, w), t, ignore_index=-100, reduction="sum").backward()
        else:
            chunked_lm_loss(x, w, t).backward()
        x.grad = w.grad = None

    if device == "cuda":
        step()  # warm-up: kernels, cuBLAS workspace
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = rss_now()
    start = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": time.perf_counter() - start, "peak": peak - base}


def measure(variant: str, n: int, c: int, v: int, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, str(n), str(c), str(v)]
    cmd += ["--device", args.device, "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def table_row(n: int, c: int, v: int, ref: list[dict], chk: list[dict]) -> tuple:
    def med(runs, key):
        return statistics.median(r[key] for r in runs)

    def ratio(key):  # paired per repeat (neighbours in time), then the median
        return statistics.median(b[key] / a[key] for a, b in zip(ref, chk, strict=True))

    return (n, c, v, f"{med(ref, 'seconds'):.2f}", f"{med(chk, 'seconds'):.2f}",
            f"{ratio('seconds'):.2f}", f"{med(ref, 'peak') / MB:.0f}",
            f"{med(chk, 'peak') / MB:.0f}", f"{ratio('peak'):.3f}",
            f"{2 * n * v * 4 / MB:.0f}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=None, help="default 3 (quick: 2)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--worker", nargs=4, metavar=("VARIANT", "N", "C", "V"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        variant, *dims = args.worker
        print(json.dumps(worker(variant, *map(int, dims), args.device)))
        return
    grid = QUICK if args.quick else FULL
    repeats = args.repeats or (2 if args.quick else 3)
    print(f"device {args.device}, {args.threads} threads, median of {repeats} (interleaved)")
    head = ("N", "C", "V", "ref s", "chunk s", "time x", "ref MB", "chunk MB", "mem x", "logits MB")
    print(" ".join(f"{h:>9}" for h in head))
    for n in grid["n"]:
        for c in grid["c"]:
            for v in grid["v"]:
                runs = {"reference": [], "chunked": []}
                for _ in range(repeats):
                    for variant in runs:
                        runs[variant].append(measure(variant, n, c, v, args))
                row = table_row(n, c, v, runs["reference"], runs["chunked"])
                print(" ".join(f"{x:>9}" for x in row), flush=True)
    print("time x, mem x: chunked / reference; logits MB: the reference's N x V float32 logits")
    print("plus their gradient (2 N V 4 bytes), what the chunked loss never holds at once")


if __name__ == "__main__":
    main()
