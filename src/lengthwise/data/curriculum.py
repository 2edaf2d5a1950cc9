"""Which bucket (decomposition) or sequence-length cap (chunking) each step of an epoch uses.

Pure functions of (seed, epoch): a resumed run, a stats pass and every rank compute the same
schedule without talking to each other.

Bucket curricula follow the Dataset Decomposition reference implementation (Pouransari et al.
2024, arXiv 2405.13226; apple/ml-dataset-decomposition, `scripts/get_dd_params.py` and the
`MyRandomMix` sampler in `open_lm.patch`):

- An epoch is split into `cycles` cycles (the reference's example run uses 8); each cycle holds
  an even share of every bucket's batches.
- Within a cycle a bucket is drawn at every step with odds `bucket_odds(name)[k] * c_k`, where
  `c_k` is bucket k's batch count in the cycle (the reference weights by tokens per bucket, which
  is the same thing because every step holds `tokens_per_step` tokens). The odds stay fixed
  during the cycle; a bucket that runs out is removed and the rest renormalized.
- So grow_p2 (odds 2^(n-1), ..., 2, 1 over natural) does not need a time-varying formula: short
  buckets are drawn faster than their share and run out first, and the cycle ends on long ones.
  With 8 buckets a batch of the shortest is 128x as likely to be drawn as one of the longest.
- `natural` is a uniform shuffle of the whole epoch (odds = remaining batches), as in OLMo-core.

`seq_len_at` is Composer's `SeqLengthWarmup` for the chunking strategies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BUCKET_CURRICULA = ("natural", "grow_p2", "grow_linear", "shrink")


def rng_for(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """Independent generator per (seed, epoch, stream); negative seeds are folded into uint64."""
    return np.random.default_rng([seed % 2**64, epoch % 2**64, stream])


def bucket_odds(name: str, n_buckets: int) -> np.ndarray:
    """Curriculum odds per bucket (index 0 = shortest), multiplied onto each bucket's batch count.

    natural: 1, ..., 1. grow_p2: 2^(n-1), ..., 2, 1 (the reference's `[32, 16, 8, 4, 2, 1]` for
    6 buckets). grow_linear: n, ..., 2, 1. shrink: grow_p2 mirrored, 1, 2, ..., 2^(n-1), so a cycle
    starts on long buckets and ends on short ones.
    """
    i = np.arange(n_buckets, dtype=np.float64)
    if name == "natural":
        return np.ones(n_buckets)
    if name == "grow_p2":
        return 2.0 ** (n_buckets - 1 - i)
    if name == "grow_linear":
        return n_buckets - i
    if name == "shrink":
        return 2.0**i
    raise ValueError(f"unknown bucket curriculum '{name}', expected one of {BUCKET_CURRICULA}")


def _draw_cycle(counts: np.ndarray, odds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bucket sequence of one cycle: i.i.d. draws with fixed `odds`, a bucket leaving the draw the
    moment its `counts` are used up.

    Until the first bucket runs out the draws are i.i.d., so each round draws all remaining steps
    at once, keeps them up to the first exhaustion and renormalizes: at most n_buckets vectorized
    rounds instead of a Python loop over steps.
    """
    left = counts.astype(np.int64).copy()
    parts = []
    while (m := int(left.sum())) > 0:
        active = np.flatnonzero(left)
        cum = np.cumsum(odds[active])
        pick = np.searchsorted(cum, rng.random(m) * cum[-1], side="right")
        draws = active[np.minimum(pick, active.size - 1)]  # u * total may round up to total
        # The draw that uses up a bucket first; one always does, since m is the batches left.
        end = m
        for k in active:
            hits = np.flatnonzero(draws == k)
            if hits.size >= left[k]:
                end = min(end, int(hits[left[k] - 1]))
        kept = draws[: end + 1]
        parts.append(kept)
        left -= np.bincount(kept, minlength=left.size)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def bucket_schedule(
    batches_per_bucket: Sequence[int],
    name: str,
    cycles: int,
    seed: int,
    epoch: int,
    longest_first: bool = False,
) -> np.ndarray:
    """Bucket index of every step of one epoch; bucket k appears batches_per_bucket[k] times.

    natural: a uniform shuffle (`cycles` is ignored). Otherwise each bucket's batches are split
    evenly over `cycles` (remainders to the first cycles) and each cycle is drawn by `_draw_cycle`
    with odds `bucket_odds(name) * batches of the bucket in the cycle`. `longest_first` moves the
    first step of the longest non-empty bucket to step 0 (the rest shift right by one), so an
    out-of-memory shape fails at step 0 rather than hours in.
    """
    counts = np.asarray(batches_per_bucket, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"batches_per_bucket must be non-negative counts, got {counts}")
    if cycles < 1:
        raise ValueError(f"cycles must be >= 1, got {cycles}")
    odds = bucket_odds(name, counts.size)
    rng = rng_for(seed, epoch, stream=1)
    if name == "natural":
        schedule = rng.permutation(np.repeat(np.arange(counts.size), counts))
    else:
        per_cycle = counts[None, :] // cycles + (np.arange(cycles)[:, None] < counts % cycles)
        schedule = np.concatenate(
            [np.zeros(0, dtype=np.int64)] + [_draw_cycle(c, odds * c, rng) for c in per_cycle]
        )
    if longest_first and schedule.size:
        longest = np.flatnonzero(counts)[-1]
        first = int(np.argmax(schedule == longest))
        schedule[: first + 1] = np.roll(schedule[: first + 1], 1)
    return schedule.astype(np.int64)


def seq_len_at(step: int, min_len: int, max_len: int, warmup_steps: int, multiple: int) -> int:
    """Sequence length at `step` of a Composer-style warmup: min_len + (max_len - min_len) *
    step / warmup_steps, rounded down to a multiple of `multiple` (so kernels see few shapes),
    clipped to [min_len, max_len]; max_len from step warmup_steps on. Integer arithmetic only,
    so every rank computes the same length."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return max_len
    raw = min_len + (max_len - min_len) * max(step, 0) // warmup_steps
    return int(min(max(raw // multiple * multiple, min_len), max_len))
