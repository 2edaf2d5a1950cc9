"""The baseline batching strategies, and the registry that builds any strategy by name.

Each strategy only decides which token ranges go where (a `StepPlan`); `assemble` reads the
step's tokens. Every per-epoch array (a permutation of documents or bins, cumulative stream
offsets) is computed once and cached for the last two epochs, so `plan(epoch, step)` costs
O(rows + segments of the step) plus an O(log n_docs) search, never O(corpus), and the token store
(a memmap) is only ever touched through the step's own gather.

Epoch order is `np.random.default_rng([seed, epoch]).permutation(...)`: the same on every rank,
different in every epoch, and reproducible without saving any RNG state.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

import numpy as np

from lengthwise.config import BatchingConfig
from lengthwise.data.curriculum import seq_len_at
from lengthwise.data.decompose import DecompositionStrategy
from lengthwise.data.plan import StepPlan
from lengthwise.data.strategy import Strategy

_EPOCHS_CACHED = 2  # the epoch being trained and the one a stats pass or prefetch may look at
_V = TypeVar("_V")


def _cached(cache: dict[Any, _V], key: Any, make: Callable[[], _V]) -> _V:
    """`make()` memoized for the last `_EPOCHS_CACHED` keys. A plain dict, so a strategy stays
    picklable (for DataLoader workers), which lru_cache around a bound method is not."""
    if key not in cache:
        if len(cache) >= _EPOCHS_CACHED:
            cache.pop(next(iter(cache)))
        cache[key] = make()
    return cache[key]


def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def _ordinals(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each count c, concatenated: the inner loop of every ragged gather here."""
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)


def _check_step(strategy: Strategy, epoch: int, step: int) -> None:
    n = strategy.steps_in_epoch(epoch)
    if not 0 <= step < n:
        raise IndexError(f"{strategy.name}: step {step} outside epoch {epoch} ({n} steps)")


# --------------------------------------------------------------------------------------- pad


class PadStrategy(Strategy):
    """One document per row, truncated to max_len, padded to the longest row of the global batch
    (so every rank sees the same shape: DDP and torch.compile see one shape per step).

    The HF default (`DataCollatorWithPadding`). Rows per step = tokens_per_step / max_len, so a
    step never exceeds the token budget, but with long-tailed lengths much of it is padding
    (a step costs rows x its longest document) and truncated tokens are never trained: 26% of
    the tokens of a lognormal corpus (1M docs, median 400 tokens) at max_len 1024. The last
    `n_docs % rows` documents of each epoch's order are dropped.
    """

    name = "pad"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rows = self.global_rows(self.cfg.max_len)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        n = len(self.lengths)
        return _cached(self._perms, epoch, lambda: _epoch_permutation(self.cfg.seed, epoch, n))

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self.lengths) // self._rows

    def plan(self, epoch: int, step: int) -> StepPlan:
        _check_step(self, epoch, step)
        rows = self._perm(epoch)[step * self._rows : (step + 1) * self._rows]
        docs = rows[self.local_rows(self._rows)]
        length = np.minimum(self.lengths[docs], self.cfg.max_len)
        n = len(docs)
        return StepPlan(
            n_rows=n,
            seq_len=int(min(self.lengths[rows].max(), self.cfg.max_len)),
            row=np.arange(n, dtype=np.int64),
            col=np.zeros(n, dtype=np.int64),
            src=self.offsets[docs],
            length=length,
            doc=docs,
            doc_mask=False,
        )

    def epoch_summary(self, epoch: int) -> dict[str, Any]:
        steps = self.steps_in_epoch(epoch)
        perm = self._perm(epoch)
        kept, dropped = perm[: steps * self._rows], perm[steps * self._rows :]
        over = np.maximum(self.lengths[kept] - self.cfg.max_len, 0)
        return {
            "steps": steps,
            "rows_per_step": self._rows,
            "truncated_docs": int((over > 0).sum()),
            "truncated_tokens": int(over.sum()),
            "dropped_tail_docs": len(dropped),
            "dropped_tail_tokens": int(self.lengths[dropped].sum()),
        }


# ------------------------------------------------------------------------------ concat_chunk


@dataclass(frozen=True)
class _Schedule:
    """Step shapes of one epoch: explicit arrays for the warmup steps that fit, then a constant
    run at max_len. Step s reads stream[start_s + i*T_s : start_s + (i+1)*T_s + 1] for row i."""

    seq_len: np.ndarray  # (W,) T of each warmup step
    rows: np.ndarray  # (W,) global rows of each warmup step
    start: np.ndarray  # (W,) stream offset of each warmup step
    tail_start: int  # stream offset of the first max_len step
    tail_len: int
    tail_rows: int
    n_steps: int

    @property
    def used_tokens(self) -> int:
        """Stream tokens used as inputs in the epoch (each exactly once)."""
        return self.tail_start + (self.n_steps - len(self.seq_len)) * self.tail_rows * self.tail_len

    def shape(self, step: int) -> tuple[int, int, int]:
        """(T, global rows, stream offset) of `step`."""
        if step < len(self.seq_len):
            return int(self.seq_len[step]), int(self.rows[step]), int(self.start[step])
        k = step - len(self.seq_len)
        return self.tail_len, self.tail_rows, self.tail_start + k * self.tail_rows * self.tail_len

    def runs(self) -> list[list[int]]:
        """[first_step, seq_len, rows] for each run of equal shapes (JSON-able)."""
        tail = int(self.n_steps > len(self.seq_len))
        seq = np.r_[self.seq_len, [self.tail_len] * tail]
        rows = np.r_[self.rows, [self.tail_rows] * tail]
        first = np.flatnonzero(np.r_[True, (np.diff(seq) != 0) | (np.diff(rows) != 0)])
        return [[int(f), int(seq[f]), int(rows[f])] for f in first[: len(seq)]]


class ConcatChunkStrategy(Strategy):
    """nanoGPT: the epoch's documents, in a seeded order, form one stream cut into rows of T+1.

    Row i of a step reads stream[p + i*T : p + i*T + T + 1], so every one of its T inputs has a
    target; consecutive rows share that one token (inputs never repeat). No padding and nothing
    truncated: only the stream's tail shorter than the next step is dropped (< tokens_per_step + 1
    tokens per epoch). The price is cross-document attention, positions 0..T-1 that ignore
    document starts, and documents cut at row boundaries (55% of the lognormal corpus above at
    T = 1024), each continuation losing its context: the classic baseline.

    `seq_len_warmup` grows T during epoch 0 (Composer `SeqLengthWarmup`); rows =
    tokens_per_step // T rounded down to a multiple of the world size, so a step leaves
    < world_size * T tokens of the budget unused.
    """

    name = "concat_chunk"
    doc_mask = False  # the docmask variant flips this one flag; rows and order stay identical

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._n_stream = int(self.lengths.sum())
        self._streams: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._schedules: dict[bool, _Schedule] = {}

    def _stream(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(permutation, exclusive end of each permuted document in the stream)."""

        def make() -> tuple[np.ndarray, np.ndarray]:
            perm = _epoch_permutation(self.cfg.seed, epoch, len(self.lengths))
            return perm, np.cumsum(self.lengths[perm])

        return _cached(self._streams, epoch, make)

    def _warmup(self, epoch: int) -> bool:
        # Warmup happens once, at the start of training (Composer), not in every epoch.
        return self.cfg.curriculum.name == "seq_len_warmup" and epoch == 0

    def _schedule(self, warmup: bool) -> _Schedule:
        n, max_len = self._n_stream, self.cfg.max_len
        rows_max = self.global_rows(max_len)
        cur = self.cfg.curriculum
        n_warm = math.ceil(cur.warmup_fraction * ((n - 1) // (rows_max * max_len))) if warmup else 0
        seq_len = np.array(
            [seq_len_at(s, cur.min_len, max_len, n_warm, cur.multiple) for s in range(n_warm)],
            dtype=np.int64,
        )
        lens, inverse = np.unique(seq_len, return_inverse=True)
        rows = np.array([self.global_rows(int(t)) for t in lens], dtype=np.int64)[inverse]
        tokens = rows * seq_len
        end = np.cumsum(tokens)
        fits = end + 1 <= n  # a step needs its R*T inputs plus the last row's extra target
        n_fit = n_warm if fits.all() else int(np.argmin(fits))
        tail_start = int(end[n_fit - 1]) if n_fit else 0
        n_tail = (n - 1 - tail_start) // (rows_max * max_len) if n_fit == n_warm else 0
        return _Schedule(
            seq_len=seq_len[:n_fit],
            rows=rows[:n_fit],
            start=(end - tokens)[:n_fit],
            tail_start=tail_start,
            tail_len=max_len,
            tail_rows=rows_max,
            n_steps=n_fit + n_tail,
        )

    def schedule(self, epoch: int) -> _Schedule:
        warmup = self._warmup(epoch)
        return _cached(self._schedules, warmup, lambda: self._schedule(warmup))

    def steps_in_epoch(self, epoch: int) -> int:
        return self.schedule(epoch).n_steps

    def plan(self, epoch: int, step: int) -> StepPlan:
        _check_step(self, epoch, step)
        T, rows, p = self.schedule(epoch).shape(step)
        perm, ends = self._stream(epoch)
        local = self.local_rows(rows)
        row_start = p + np.arange(local.start, local.stop, dtype=np.int64) * T
        row_end = row_start + T + 1  # exclusive
        first = np.searchsorted(ends, row_start, side="right")  # document holding the row start
        last = np.searchsorted(ends, row_end - 1, side="right")
        count = last - first + 1
        row = np.repeat(np.arange(len(row_start), dtype=np.int64), count)
        k = np.repeat(first, count) + _ordinals(count)  # position in the permuted order
        doc = perm[k]
        doc_start = ends[k] - self.lengths[doc]
        seg_start = np.maximum(doc_start, row_start[row])
        seg_end = np.minimum(ends[k], row_end[row])
        return StepPlan(
            n_rows=len(row_start),
            seq_len=T,
            row=row,
            col=seg_start - row_start[row],
            src=self.offsets[doc] + (seg_start - doc_start),
            length=seg_end - seg_start,
            doc=doc,
            doc_mask=self.doc_mask,
            cross_doc_targets=not self.doc_mask,
            restart_positions=self.doc_mask,
        )

    def epoch_summary(self, epoch: int) -> dict[str, Any]:
        sched = self.schedule(epoch)
        perm, ends = self._stream(epoch)
        n_tail_rows = (sched.n_steps - len(sched.seq_len)) * sched.tail_rows
        # Every row start after the first is a boundary; a document is split when one falls
        # strictly inside it (its tokens then sit in two rows, the second without its prefix).
        warm = np.repeat(sched.start, sched.rows)
        warm += _ordinals(sched.rows) * np.repeat(sched.seq_len, sched.rows)
        tail = sched.tail_start + np.arange(n_tail_rows, dtype=np.int64) * sched.tail_len
        boundaries = np.r_[warm, tail][1:]
        k = np.searchsorted(ends, boundaries, side="right")
        inside = ends[k] - self.lengths[perm[k]] < boundaries
        return {
            "steps": sched.n_steps,
            "seq_len_schedule": sched.runs(),
            "warmup_steps": len(sched.seq_len),
            "split_docs": int(np.unique(k[inside]).size),
            "dropped_tail_tokens": self._n_stream - sched.used_tokens,
        }


class ConcatChunkDocMaskStrategy(ConcatChunkStrategy):
    """`concat_chunk` rows, with document-masked attention, positions restarting at every
    document, and no target across documents: the same tokens, none of the cross-talk."""

    name = "concat_chunk_docmask"
    doc_mask = True


# --------------------------------------------------------------------------------- best_fit


def _best_fit_decreasing(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-fit decreasing in O(n log n): (pieces grouped by bin, CSR bin bounds).

    Open bins live in one stack per remaining capacity (0..capacity), and `open_caps` is the
    sorted list of capacities whose stack is non-empty: at most capacity + 1 values, so a bisect
    finds the tightest bin that fits without scanning bins. Ties between equally full bins go to
    the most recently filled (the top of the stack). Pieces in a bin keep packing order.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 1 or lengths.max() > capacity):
        raise ValueError(f"piece lengths must be in [1, {capacity}]")
    order = np.argsort(-lengths, kind="stable")  # longest first, ties by index
    size = lengths.tolist()
    bin_of = np.empty(len(size), dtype=np.int64)
    stacks: list[list[int]] = [[] for _ in range(capacity + 1)]
    open_caps: list[int] = []
    n_bins = 0
    for i in order.tolist():
        j = bisect_left(open_caps, size[i])
        if j < len(open_caps):
            rem = open_caps[j]
            b = stacks[rem].pop()
            if not stacks[rem]:
                del open_caps[j]
        else:
            rem, b = capacity, n_bins
            n_bins += 1
        bin_of[i] = b
        rem -= size[i]
        if rem:  # a full bin takes nothing more: leave it out of the search
            if not stacks[rem]:
                insort(open_caps, rem)
            stacks[rem].append(b)
    pieces = order[np.argsort(bin_of[order], kind="stable")]
    bounds = np.r_[0, np.cumsum(np.bincount(bin_of, minlength=n_bins))].astype(np.int64)
    return pieces, bounds


def pack_best_fit(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Bins (in opening order) of piece indices (in packing order), best-fit decreasing."""
    pieces, bounds = _best_fit_decreasing(lengths, capacity)
    return [pieces[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class BestFitStrategy(Strategy):
    """Best-fit decreasing packing of document pieces (Ding et al. 2024, arXiv 2404.10830).

    Documents longer than max_len are cut into max_len pieces plus a remainder, the only
    truncation; pieces are packed into max_len rows with document masking, so no document loses
    context except at those cuts (vs. concat_chunk, which cuts ~every document that straddles a
    row). On the lognormal corpus above (1M docs, max_len 1024) 1.28M pieces pack in 0.7 s into
    bins 99.99% full. The packing depends only on document lengths, so it is computed once (on
    first use); each epoch shuffles whole bins.
    """

    name = "best_fit"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rows = self.global_rows(self.cfg.max_len)
        self._perms: dict[int, np.ndarray] = {}

    @cached_property
    def _bins(self) -> dict[str, np.ndarray]:
        """Segments of all bins, bin by bin, with their column inside the bin."""
        cap = self.cfg.max_len
        n_pieces = -(-self.lengths // cap)
        doc = np.repeat(np.arange(len(self.lengths), dtype=np.int64), n_pieces)
        skip = _ordinals(n_pieces) * cap
        length = np.minimum(cap, self.lengths[doc] - skip)
        pieces, bounds = _best_fit_decreasing(length, cap)
        seg_len = length[pieces]
        end = np.cumsum(seg_len)
        col = end - seg_len - np.repeat(np.r_[0, end][bounds[:-1]], np.diff(bounds))
        return {
            "bounds": bounds,
            "col": col,
            "len": seg_len,
            "src": self.offsets[doc[pieces]] + skip[pieces],
            "doc": doc[pieces],
            "n_pieces": n_pieces,
        }

    @property
    def n_bins(self) -> int:
        return len(self._bins["bounds"]) - 1

    def _perm(self, epoch: int) -> np.ndarray:
        n = self.n_bins
        return _cached(self._perms, epoch, lambda: _epoch_permutation(self.cfg.seed, epoch, n))

    def steps_in_epoch(self, epoch: int) -> int:
        return self.n_bins // self._rows

    def plan(self, epoch: int, step: int) -> StepPlan:
        _check_step(self, epoch, step)
        bins = self._perm(epoch)[step * self._rows : (step + 1) * self._rows]
        bins = bins[self.local_rows(self._rows)]
        b = self._bins
        count = b["bounds"][bins + 1] - b["bounds"][bins]
        idx = np.repeat(b["bounds"][bins], count) + _ordinals(count)
        return StepPlan(
            n_rows=len(bins),
            seq_len=self.cfg.max_len,
            row=np.repeat(np.arange(len(bins), dtype=np.int64), count),
            col=b["col"][idx],
            src=b["src"][idx],
            length=b["len"][idx],
            doc=b["doc"][idx],
            doc_mask=True,
        )

    def epoch_summary(self, epoch: int) -> dict[str, Any]:
        b = self._bins
        steps = self.steps_in_epoch(epoch)
        bin_tokens = np.add.reduceat(b["len"], b["bounds"][:-1]) if self.n_bins else b["len"]
        perm = self._perm(epoch)
        kept = int(bin_tokens[perm[: steps * self._rows]].sum())
        return {
            "steps": steps,
            "rows_per_step": self._rows,
            "n_bins": self.n_bins,
            "n_pieces": int(b["n_pieces"].sum()),
            "split_docs": int((b["n_pieces"] > 1).sum()),
            "fill": float(bin_tokens.sum() / max(1, self.n_bins * self.cfg.max_len)),
            "pad_tokens": steps * self._rows * self.cfg.max_len - kept,
            "dropped_tail_bins": self.n_bins - steps * self._rows,
            "dropped_tail_tokens": int(bin_tokens.sum()) - kept,
        }


# --------------------------------------------------------------------------------- registry

STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        PadStrategy,
        ConcatChunkStrategy,
        ConcatChunkDocMaskStrategy,
        BestFitStrategy,
        DecompositionStrategy,
    )
}


def build_strategy(
    cfg: BatchingConfig,
    tokens: np.ndarray,
    offsets: np.ndarray,
    pad_id: int,
    rank: int = 0,
    world_size: int = 1,
    prompt_lens: np.ndarray | None = None,
    positions: np.ndarray | None = None,
) -> Strategy:
    """The strategy `cfg.strategy` names, over one token store, for one rank. `prompt_lens`
    and `positions`: the store's (TokenStore.prompt_lens, TokenStore.positions)."""
    return STRATEGY_CLASSES[cfg.strategy](
        tokens,
        offsets,
        cfg,
        pad_id,
        rank=rank,
        world_size=world_size,
        prompt_lens=prompt_lens,
        positions=positions,
    )
