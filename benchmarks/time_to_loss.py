"""Wall time and tokens each batching strategy needs to reach concat_chunk's final val loss.

  .venv/bin/python benchmarks/time_to_loss.py [--quick] [--json] [--threads 2]

Rows: concat_chunk, decomposition (natural and grow_p2), best_fit; the demo model as configured
(`configs/demo_text.yaml`), the same budget of real tokens, tokens per step, optimizer and
schedule for each. Every (strategy, seed) trains in its own process through benchmarks/peers.py
(`--_one`, see its docstring for the clock, the real-token count and the val loss), seeds
`--seed`, `--seed + 1`, `--seed + 2`, strategies interleaved (A B C D, D C B A, ...).

The target of seed s is the val loss concat_chunk reaches at the end of its budget with seed s.
A run reaches it at its first snapshot at or below the target; time and tokens are interpolated
linearly in loss between that snapshot and the one before (`--snapshots` per run, plus the
initial weights). A run that never gets there within the budget has not reached it (`-`).
Columns: medians over seeds of seconds and real tokens to the target, the median of per-seed
ratios to concat_chunk (below 1: faster), seeds that reached it, final val loss and tok/s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import peers

from lengthwise.data.store import prepare
from lengthwise.errors import UserError

NAMES = ("concat_chunk", "decomposition_natural", "decomposition_grow_p2", "best_fit")
REF = "concat_chunk"
FULL = {**peers.FULL, "repeats": 3, "snapshots": 16}  # repeats are seeds here
QUICK = {**peers.QUICK, "repeats": 3, "snapshots": 8}


def crossing(curve: list[dict[str, Any]], target: float) -> tuple[float, float]:
    """(seconds, real tokens) at which the val loss first reaches `target`, interpolated
    between snapshots; (inf, inf) if it never does."""
    for prev, p in itertools.pairwise(curve):
        if p["val_loss"] <= target:
            drop = prev["val_loss"] - p["val_loss"]
            w = min(max((prev["val_loss"] - target) / drop, 0.0), 1.0) if drop > 0 else 1.0
            at = {k: prev[k] + w * (p[k] - prev[k]) for k in ("seconds", "tokens")}
            return at["seconds"], at["tokens"]
    return math.inf, math.inf


def finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def summarize(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per strategy: medians over seeds of the time and tokens to the per-seed target
    (concat_chunk's final val loss) and of the per-seed ratios to concat_chunk."""
    targets = [m["curve"][-1]["val_loss"] for m in runs[REF]]
    ref = [crossing(m["curve"], t) for m, t in zip(runs[REF], targets, strict=True)]
    rows = []
    for name, ms in runs.items():
        hits = [crossing(m["curve"], t) for m, t in zip(ms, targets, strict=True)]
        ratio = [[h[i] / r[i] for h, r in zip(hits, ref, strict=True)] for i in (0, 1)]
        rows.append(
            {
                "name": name,
                "target_val_loss": statistics.median(targets),
                "seconds_to_target": finite(statistics.median(h[0] for h in hits)),
                "tokens_to_target": finite(statistics.median(h[1] for h in hits)),
                "ratio_seconds": finite(statistics.median(ratio[0])),
                "ratio_tokens": finite(statistics.median(ratio[1])),
                "seeds_reached": sum(math.isfinite(h[0]) for h in hits),
                "final_val_loss": statistics.median(m["curve"][-1]["val_loss"] for m in ms),
                "real_tokens_per_s": statistics.median(m["real_tokens_per_s"] for m in ms),
                "train_seconds": statistics.median(m["train_seconds"] for m in ms),
                "seeds": [m["seed"] for m in ms],
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    f = peers.fmt
    head = (
        f"{'strategy':<24}{'s to target':>13}{'vs cc':>8}{'tokens to target':>18}{'vs cc':>8}"
        f"{'reached':>9}{'final val':>11}{'tok/s':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        n = len(r["seeds"])
        lines.append(
            f"{r['name']:<24}{f(r['seconds_to_target'], ',.1f'):>13}"
            f"{f(r['ratio_seconds'], '.2f', 'x'):>8}{f(r['tokens_to_target'], ',.0f'):>18}"
            f"{f(r['ratio_tokens'], '.2f', 'x'):>8}{r['seeds_reached']:>7}/{n}"
            f"{r['final_val_loss']:>11.3f}{r['real_tokens_per_s']:>9,.0f}"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    peers.run_options(ap)
    args = ap.parse_args()
    peers.fill_defaults(args, FULL, QUICK)
    try:
        wall = time.perf_counter()
        cfg = peers.run_config(args, REF, args.seed, Path(tempfile.gettempdir()))
        prepare(cfg.data, progress=False)
        rows = summarize(peers.interleaved(args, list(NAMES), args.model_overrides))
    except UserError as e:
        print(f"time_to_loss: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a child failed; its stderr is above
        print(f"time_to_loss: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    m = cfg.model
    print(f"command: {peers.command_line()}")
    print(
        f"model: {m.d_model} x {m.n_layer} layers, {m.n_head} heads, {m.position}, {m.mlp}; "
        f"{cfg.batching.tokens_per_step:,} tokens/step, max_len {cfg.batching.max_len}; budget "
        f"{args.budget:,} real tokens; {args.threads} thread(s); {args.snapshots} snapshots; "
        f"val ~{args.eval_tokens:,} tokens of '{args.val_split}'; seeds "
        f"{args.seed}..{args.seed + args.repeats - 1}; wall {time.perf_counter() - wall:.0f} s"
    )
    target = rows[0]["target_val_loss"]
    print(f"target: concat_chunk's final val loss, per seed (median {target:.3f})")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
