"""CPU timings behind `choose_cpu_backend`: per-document SDPA vs one dense-masked SDPA.

Run: `.venv/bin/python tests/model/bench_attention_cpu.py [threads]` (not collected by pytest).
Prints fwd+bwd milliseconds (median of 5) for rows of equal-length documents ("equal": one SDPA
call per distinct length, so one call) and documents cut at random points ("random": nearly
every segment length differs, so one call per segment), and which backend the rule picks.
Timings are only meaningful on an otherwise idle machine: on a busy one each intra-op parallel
region can wait milliseconds for the second core (the load average is printed first).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

from lengthwise.model.attention import AttnMask, attention, choose_cpu_backend


def layout(B: int, T: int, n_docs: int, random: bool, g: torch.Generator) -> torch.Tensor:
    if not random:
        return (torch.arange(T) * n_docs // T).expand(B, T).contiguous()
    doc = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        cuts = torch.randperm(T - 1, generator=g)[: n_docs - 1] + 1
        doc[b, cuts] = 1
        doc[b] = doc[b].cumsum(0)
    return doc


def median_ms(fn, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    if len(sys.argv) > 1:
        torch.set_num_threads(int(sys.argv[1]))
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    H, D = 4, 64
    print(
        f"{'B':>3} {'T':>5} {'docs':>5} {'layout':>7} {'bias':>5} {'causal':>7} "
        f"{'per_doc':>8} {'dense':>7}  rule"
    )
    for B, T in ((1, 2048), (4, 1024), (8, 512), (32, 128)):
        for n_docs in (1, 2, 8, 32, 128):
            if n_docs > T // 4:
                continue
            for random in (False, True):
                if random and n_docs == 1:
                    continue
                for with_bias in (False, True):
                    q, k, v = (torch.randn(B, H, T, D, requires_grad=True) for _ in range(3))
                    bias = torch.randn(B, H, T, T) if with_bias else None
                    mask = AttnMask(layout(B, T, n_docs, random, g))

                    def run(backend, mask=mask, q=q, k=k, v=v, bias=bias):
                        attention(q, k, v, mask, bias, backend=backend).sum().backward()

                    causal = float("nan")
                    if bias is None:
                        causal = median_ms(lambda: run("sdpa_causal", AttnMask()))
                    pd = median_ms(lambda: run("per_doc"))
                    dn = median_ms(lambda: run("dense"))
                    rule = choose_cpu_backend(mask, tuple(q.shape), with_bias)
                    best = "per_doc" if pd < dn else "dense"
                    flag = "" if rule == best else f"  <-- {max(pd, dn) / min(pd, dn):.2f}x slower"
                    print(
                        f"{B:>3} {T:>5} {n_docs:>5} {'random' if random else 'equal':>7} "
                        f"{int(with_bias):>5} {causal:7.1f} {pd:8.1f} {dn:7.1f}  {rule}{flag}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
