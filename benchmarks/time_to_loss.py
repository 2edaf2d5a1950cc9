"""Wall time and tokens each batching strategy needs to reach concat_chunk's final val loss.

  .venv/bin/python benchmarks/time_to_loss.py [--quick] [--json] [--threads 2]
      [--strategies concat_chunk decomposition_grow_p2 ...] [--position-loss 2] [--plot F.png]

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
The header says how far past the first steep drop the target sits: the share of concat_chunk's
training time by which it had covered 90% of its drop from the initial to the final loss.

`--position-loss M`: each run's final weights are also scored per position out to M x max_len
on the longest held-out documents (peers.position_loss); columns `loss <L` and `loss L-2L` are
the mean loss below and beyond the training length. `--plot F.png`: the loss curves of every
seed and the per-position loss, with every run's JSON beside the PNG.
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

import numpy as np
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


def drop_share_time(curve: list[dict[str, Any]], share: float = 0.9) -> float:
    """The fraction of a run's training time by which it covered `share` of its loss drop
    (initial -> final val loss): small means the budget goes well past the steep first drop,
    so a target at the final loss measures the slow part of training, not the first fall."""
    first, last = curve[0]["val_loss"], curve[-1]["val_loss"]
    seconds = crossing(curve, first - share * (first - last))[0]
    return seconds / curve[-1]["seconds"]


def finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def length_split(positions: dict[str, Any] | None) -> tuple[float, float] | None:
    """(mean loss at positions < max_len, mean loss at positions >= max_len) of one run's
    per-position loss; None when it was not scored or does not reach past max_len."""
    if not positions or len(positions["loss"]) <= positions["max_len"]:
        return None
    loss, L = positions["loss"], positions["max_len"]
    return statistics.fmean(loss[:L]), statistics.fmean(loss[L:])


def summarize(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per strategy: medians over seeds of the time and tokens to the per-seed target
    (concat_chunk's final val loss) and of the per-seed ratios to concat_chunk."""
    targets = [m["curve"][-1]["val_loss"] for m in runs[REF]]
    ref = [crossing(m["curve"], t) for m, t in zip(runs[REF], targets, strict=True)]
    rows = []
    for name, ms in runs.items():
        hits = [crossing(m["curve"], t) for m, t in zip(ms, targets, strict=True)]
        ratio = [[h[i] / r[i] for h, r in zip(hits, ref, strict=True)] for i in (0, 1)]
        splits = [length_split(m.get("position_loss")) for m in ms]
        within = beyond = None
        if all(splits):
            within = statistics.median(s[0] for s in splits)  # type: ignore[index]
            beyond = statistics.median(s[1] for s in splits)  # type: ignore[index]
        first = ms[0]["curve"][0]["val_loss"]
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
                "initial_val_loss": first,
                "drop90_time_share": statistics.median(drop_share_time(m["curve"]) for m in ms),
                "loss_within_max_len": within,
                "loss_beyond_max_len": beyond,
                "seeds": [m["seed"] for m in ms],
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    f = peers.fmt
    head = (
        f"{'strategy':<24}{'s to target':>13}{'vs cc':>8}{'tokens to target':>18}{'vs cc':>8}"
        f"{'reached':>9}{'final val':>11}{'tok/s':>9}{'loss <L':>9}{'loss L-2L':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        n = len(r["seeds"])
        lines.append(
            f"{r['name']:<24}{f(r['seconds_to_target'], ',.1f'):>13}"
            f"{f(r['ratio_seconds'], '.2f', 'x'):>8}{f(r['tokens_to_target'], ',.0f'):>18}"
            f"{f(r['ratio_tokens'], '.2f', 'x'):>8}{r['seeds_reached']:>7}/{n}"
            f"{r['final_val_loss']:>11.3f}{r['real_tokens_per_s']:>9,.0f}"
            f"{f(r['loss_within_max_len'], '.3f'):>9}{f(r['loss_beyond_max_len'], '.3f'):>11}"
        )
    return "\n".join(lines)


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Val loss against training seconds (every seed) and, where scored, the final weights'
    loss per position (mean over seeds, in bins of 1/64 of the range) with max_len marked; the
    runs' JSON beside the PNG."""
    from lengthwise.eval.plots import plt, save_figure
    from lengthwise.io import atomic_write_text

    scored = [ms for ms in runs.values() if all(m.get("position_loss") for m in ms)]
    fig, axes = plt.subplots(1, 2 if scored else 1, figsize=(12 if scored else 6.5, 4.5))
    axes = list(np.atleast_1d(axes))
    for color, (name, ms) in enumerate(runs.items()):
        for k, m in enumerate(ms):
            xs = [p["seconds"] for p in m["curve"]]
            axes[0].plot(xs, [p["val_loss"] for p in m["curve"]], color=f"C{color}", alpha=0.8,
                         label=name if k == 0 else None)  # fmt: skip
        if scored and all(m.get("position_loss") for m in ms):
            n = min(len(m["position_loss"]["loss"]) for m in ms)
            mean = np.mean([m["position_loss"]["loss"][:n] for m in ms], axis=0)
            width = max(1, n // 64)
            binned = mean[: n // width * width].reshape(-1, width).mean(axis=1)
            axes[1].plot(np.arange(len(binned)) * width + width / 2, binned, color=f"C{color}",
                         label=name)  # fmt: skip
            axes[1].axvline(ms[0]["position_loss"]["max_len"], color="gray", ls="--", lw=1)
    axes[0].set(xlabel="training seconds", ylabel="val loss (nats)", title="time to loss")
    axes[0].legend()
    if scored:
        axes[1].set(xlabel="position in document", ylabel="loss (nats)",
                    title="final weights: loss per position (dashed: max_len)")  # fmt: skip
        axes[1].legend()
    save_figure(fig, path)
    atomic_write_text(path.with_suffix(".json"), json.dumps(compact(runs), indent=1))


def compact(runs: dict[str, list[dict[str, Any]]], bins: int = 256) -> dict[str, Any]:
    """The runs with each per-position loss averaged into `bins` equal bins of positions (its
    `bin_width` said): 2 x 8192 positions x 6 runs would be megabytes of JSON beside a PNG."""
    out: dict[str, Any] = {}
    for name, ms in runs.items():
        out[name] = []
        for m in ms:
            pos = m.get("position_loss")
            if pos:
                loss = np.asarray(pos["loss"])
                width = max(1, len(loss) // bins)
                n = len(loss) // width * width
                pos = {
                    "max_len": pos["max_len"],
                    "bin_width": width,
                    "loss": np.round(loss[:n].reshape(-1, width).mean(axis=1), 4).tolist(),
                    "docs_at": pos["docs_at"][:n:width],
                }
            out[name].append({**m, "position_loss": pos})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    peers.run_options(ap)
    ap.add_argument("--strategies", nargs="+", choices=NAMES, default=list(NAMES))
    ap.add_argument("--plot", type=Path, help="PNG of the loss curves (the JSON beside it)")
    args = ap.parse_args()
    if REF not in args.strategies:
        ap.error(f"--strategies must include {REF}: it sets the target")
    args.strategies = [REF, *(s for s in args.strategies if s != REF)]
    peers.fill_defaults(args, FULL, QUICK)
    try:
        wall = time.perf_counter()
        cfg = peers.run_config(args, REF, args.seed, Path(tempfile.gettempdir()))
        prepare(cfg.data, progress=False)
        runs = peers.interleaved(args, list(args.strategies), args.model_overrides)
        rows = summarize(runs)
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
    cc = rows[0]
    print(
        f"target: concat_chunk's final val loss, per seed (median {cc['target_val_loss']:.3f}, "
        f"from {cc['initial_val_loss']:.3f} at step 0); concat_chunk covered 90% of that drop "
        f"by {100 * cc['drop90_time_share']:.0f}% of its training time"
    )
    print(format_table(rows))
    if args.position_loss:
        print(
            f"loss <L / L-2L: the final weights' mean loss at positions below max_len "
            f"{cfg.batching.max_len} / from max_len to {args.position_loss:g}x, over the "
            f"{peers.POSITION_DOCS} longest '{args.val_split}' documents (median over seeds)"
        )
    if args.plot:
        plot(runs, args.plot)
        print(f"plot: {args.plot} (rows and runs: {Path(args.plot).with_suffix('.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
