"""Dataset Decomposition (Pouransari et al. 2024, arXiv 2405.13226): documents -> power-of-two
pieces -> one bucket per optimizer step.

Each document is cut, from its start, into pieces of 2^k tokens following the binary
representation of its length, largest first (100 tokens -> 64 + 32, 4 dropped). Pieces shorter
than the smallest bucket are dropped and counted. Every row of a step is one piece of one
document, so attention is plain causal (no document mask) and costs exactly L^2 / 2 per row.

Long documents (longer than the largest bucket 2^max), two rules:

- "repeat": as many 2^max pieces as fit, then the binary split of the rest (the deterministic
  `randomize=False` branch of the reference `get_binary` in apple/ml-dataset-decomposition,
  `scripts/make_dd_buckets.py`).
- "random": the reference's default (`randomize=True`). While at least 2 * 2^max tokens remain,
  the next piece's size is drawn from 2^max, 2^(max-1), ..., 2^min with odds 1 : 2 : 4 : ...
  (P(2^k) proportional to 2^-k), so each draw adds the same expected number of tokens to every
  bucket: long documents feed all buckets evenly instead of only the longest. The last
  2^max..2^(max+1)-1 tokens are split as in "repeat" (one 2^max piece, then binary). Seeded by
  `seed`; pieces are laid out in draw order from the document start.

A piece of 2^k tokens trains 2^k - 1 predictions: its last token's successor is not in the row.
The reference stores 2^k + 1 tokens per piece instead (2^k targets); we keep rows at exactly L
tokens so every step holds exactly `tokens_per_step` tokens and every shape is a power of two,
at a cost of one target per piece (3% of a 32-token piece, 0.1% of a 1024-token one).

Per step: bucket L from `curriculum.bucket_schedule`, global rows = tokens_per_step / L, each
bucket's pieces in a fresh seeded order every epoch; pieces left over after whole batches are
not trained that epoch (`dropped_tokens_remainder`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from lengthwise.data.curriculum import bucket_schedule, rng_for
from lengthwise.data.plan import StepPlan
from lengthwise.data.strategy import Strategy
from lengthwise.errors import UserError

LONG_DOC_RULES = ("repeat", "random")
_RANDOM_CHUNK = 32  # size draws per long document per vectorized round (bounds memory)


@dataclass
class Pieces:
    """Power-of-two pieces of a corpus, sorted by (doc, start)."""

    doc: np.ndarray  # (P,) int64 document index
    start: np.ndarray  # (P,) int64 offset of the piece within its document
    log2: np.ndarray  # (P,) int64 the piece has 2**log2 tokens
    dropped_per_doc: np.ndarray  # (D,) int64 tokens of each document that are in no piece

    @property
    def length(self) -> np.ndarray:
        return np.left_shift(np.int64(1), self.log2)

    @property
    def dropped_tokens(self) -> int:
        return int(self.dropped_per_doc.sum())


def _binary_pieces(
    doc: np.ndarray, length: np.ndarray, base: np.ndarray, min_log2: int, max_log2: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The "repeat" rule for `length` tokens starting at `base` in each `doc`: full 2^max pieces,
    then one piece per set bit of the rest, down to 2^min. Loops over bits, never documents."""
    top = np.int64(1) << max_log2
    n_top = length >> max_log2
    rest = length & (top - 1)
    run_start = np.cumsum(n_top) - n_top
    j = np.arange(int(n_top.sum()), dtype=np.int64) - np.repeat(run_start, n_top)
    docs = [np.repeat(doc, n_top)]
    starts = [np.repeat(base, n_top) + j * top]
    logs = [np.full(j.size, max_log2, dtype=np.int64)]
    tail_base = base + n_top * top
    for b in range(max_log2 - 1, min_log2 - 1, -1):
        has = ((rest >> b) & 1).astype(bool)
        docs.append(doc[has])
        starts.append(tail_base[has] + (rest[has] >> (b + 1) << (b + 1)))
        logs.append(np.full(int(has.sum()), b, dtype=np.int64))
    return np.concatenate(docs), np.concatenate(starts), np.concatenate(logs)


def _random_heads(
    length: np.ndarray, min_log2: int, max_log2: int, rng: np.random.Generator
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """The random part of the "random" rule: pieces drawn from the front of every document while
    at least 2 * 2^max tokens remain. Returns those pieces and the tokens they consume per doc.
    Vectorized over documents; each round draws `_RANDOM_CHUNK` sizes per still-long document."""
    exps = np.arange(max_log2, min_log2 - 1, -1, dtype=np.int64)  # longest first
    p = 2.0 ** np.arange(exps.size)  # odds 1 : 2 : 4 ... -> equal expected tokens per bucket
    stop = np.int64(2) << max_log2
    consumed_all = np.zeros(length.size, dtype=np.int64)
    doc = np.flatnonzero(length >= stop)
    consumed = np.zeros(doc.size, dtype=np.int64)
    docs, starts, logs = [], [], []
    while doc.size:
        k = exps[rng.choice(exps.size, size=(doc.size, _RANDOM_CHUNK), p=p / p.sum())]
        size = np.left_shift(np.int64(1), k)
        before = np.cumsum(size, axis=1) - size  # tokens this round drew before each draw
        ok = consumed[:, None] + before <= (length[doc] - stop)[:, None]  # a True prefix
        r, c = np.nonzero(ok)
        docs.append(doc[r])
        starts.append(consumed[r] + before[r, c])
        logs.append(k[r, c])
        last = ok.sum(axis=1) - 1  # >= 0: a document is only here while a draw is allowed
        rows = np.arange(doc.size)
        consumed = consumed + before[rows, last] + size[rows, last]
        consumed_all[doc] = consumed
        more = (last == _RANDOM_CHUNK - 1) & (length[doc] - consumed >= stop)
        doc, consumed = doc[more], consumed[more]
    if not docs:
        docs = starts = logs = [np.zeros(0, dtype=np.int64)]
    return (np.concatenate(docs), np.concatenate(starts), np.concatenate(logs)), consumed_all


def decompose(
    lengths: np.ndarray,
    min_log2: int,
    max_log2: int,
    long_doc_rule: str = "repeat",
    seed: int = 0,
) -> Pieces:
    """Split every document into power-of-two pieces of 2^min_log2 .. 2^max_log2 tokens.

    `lengths` include the EOS token. See the module docstring for the two long-document rules.
    Vectorized over documents: "repeat" takes ~0.6 s for a million documents of 1..20000 tokens
    (5.4 M pieces) on 2 CPU cores.
    """
    if not 0 <= min_log2 <= max_log2 <= 40:
        raise ValueError(f"need 0 <= min_log2 <= max_log2 <= 40, got {min_log2}, {max_log2}")
    if long_doc_rule not in LONG_DOC_RULES:
        raise ValueError(f"long_doc_rule must be one of {LONG_DOC_RULES}, got '{long_doc_rule}'")
    lengths = np.asarray(lengths, dtype=np.int64)
    if (lengths < 0).any():
        raise ValueError("document lengths must be >= 0")
    all_docs = np.arange(lengths.size, dtype=np.int64)
    if long_doc_rule == "random":
        heads, base = _random_heads(lengths, min_log2, max_log2, rng_for(seed, 0, stream=0))
    else:
        heads, base = (all_docs[:0], all_docs[:0], all_docs[:0]), np.zeros_like(lengths)
    tail = _binary_pieces(all_docs, lengths - base, base, min_log2, max_log2)
    doc, start, log2 = (np.concatenate([h, t]) for h, t in zip(heads, tail, strict=True))
    # Each document's pieces already appear in start order (heads round by round, then full
    # pieces, then bits high to low), so a stable sort by document suffices (6x a lexsort).
    order = np.argsort(doc, kind="stable")
    doc, start, log2 = doc[order], start[order], log2[order]
    kept = np.bincount(doc, weights=np.left_shift(1, log2), minlength=lengths.size)
    return Pieces(doc, start, log2, lengths - kept.astype(np.int64))


_PIECES_CACHE: dict[tuple[Any, ...], Pieces] = {}
_PIECES_CACHE_SIZE = 4


def _cached_decompose(
    offsets: np.ndarray, min_log2: int, max_log2: int, rule: str, seed: int
) -> Pieces:
    """`decompose` once per store and settings, shared by every strategy built on that store
    (training, stats, evaluation). Keyed by a hash of the offsets: ~10 ms per million docs."""
    digest = hashlib.blake2b(np.ascontiguousarray(offsets).view(np.uint8)).hexdigest()
    key = (digest, min_log2, max_log2, rule, seed)
    if key not in _PIECES_CACHE:
        if len(_PIECES_CACHE) >= _PIECES_CACHE_SIZE:
            _PIECES_CACHE.pop(next(iter(_PIECES_CACHE)))
        _PIECES_CACHE[key] = decompose(np.diff(offsets), min_log2, max_log2, rule, seed)
    return _PIECES_CACHE[key]


class DecompositionStrategy(Strategy):
    """One bucket per step, one piece per row (see the module docstring)."""

    name = "decomposition"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.cfg
        self.min_log2 = cfg.min_bucket.bit_length() - 1
        self.max_log2 = cfg.max_len.bit_length() - 1
        self.bucket_lens = np.left_shift(1, np.arange(self.min_log2, self.max_log2 + 1))
        self.pieces = _cached_decompose(
            self.offsets, self.min_log2, self.max_log2, cfg.long_doc_rule, cfg.seed
        )
        bucket = self.pieces.log2 - self.min_log2
        by_bucket = np.argsort(bucket, kind="stable")
        self._src = (self.offsets[self.pieces.doc] + self.pieces.start)[by_bucket]
        self._doc = self.pieces.doc[by_bucket]
        # Bucket k's pieces are _src[_first[k]:_first[k + 1]].
        self._first = np.searchsorted(bucket[by_bucket], np.arange(self.bucket_lens.size + 1))
        self.pieces_per_bucket = np.diff(self._first)
        self.rows_per_bucket = np.array([self.global_rows(int(n)) for n in self.bucket_lens])
        self.batches_per_bucket = self.pieces_per_bucket // self.rows_per_bucket
        if self.pieces_per_bucket.sum() == 0:
            raise UserError(
                f"decomposition: no document has a piece of >= {cfg.min_bucket} tokens "
                f"(batching.min_bucket); the longest document has {int(self.lengths.max())} tokens"
            )
        if self.batches_per_bucket.sum() == 0:
            counts = ", ".join(
                f"{n}: {c}" for n, c in zip(self.bucket_lens, self.pieces_per_bucket, strict=True)
            )
            raise UserError(
                f"decomposition: no bucket has enough pieces for one step of "
                f"batching.tokens_per_step={cfg.tokens_per_step} (pieces per bucket {counts})"
            )
        self._epochs: dict[int, tuple[list[np.ndarray], np.ndarray, np.ndarray]] = {}

    def _epoch(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Per-epoch piece orders, bucket schedule, and which batch of its bucket each step is.
        Cached (last two epochs) so `plan` is O(rows)."""
        if epoch not in self._epochs:
            cfg, cur = self.cfg, self.cfg.curriculum
            rng = rng_for(cfg.seed, epoch, stream=2)
            used = self.batches_per_bucket * self.rows_per_bucket
            perms = [
                rng.permutation(int(n))[:u]
                for n, u in zip(self.pieces_per_bucket, used, strict=True)
            ]
            name = "natural" if cur.name == "none" else cur.name
            schedule = bucket_schedule(
                self.batches_per_bucket, name, cur.cycles, cfg.seed, epoch, cur.longest_first
            )
            # Batch j of bucket k at the step that is the (j+1)-th use of k: rank within bucket.
            order = np.argsort(schedule, kind="stable")
            group_start = np.cumsum(self.batches_per_bucket) - self.batches_per_bucket
            batch_index = np.empty_like(schedule)
            batch_index[order] = np.arange(schedule.size) - group_start[schedule[order]]
            if len(self._epochs) >= 2:
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[epoch] = (perms, schedule, batch_index)
        return self._epochs[epoch]

    def steps_in_epoch(self, epoch: int) -> int:
        return int(self.batches_per_bucket.sum())

    def plan(self, epoch: int, step: int) -> StepPlan:
        perms, schedule, batch_index = self._epoch(epoch)
        if not 0 <= step < schedule.size:
            raise IndexError(f"step {step} outside epoch of {schedule.size} steps")
        k, j = int(schedule[step]), int(batch_index[step])
        rows, seq_len = int(self.rows_per_bucket[k]), int(self.bucket_lens[k])
        piece = self._first[k] + perms[k][j * rows : (j + 1) * rows][self.local_rows(rows)]
        n = piece.size
        return StepPlan(
            n_rows=n,
            seq_len=seq_len,
            row=np.arange(n, dtype=np.int64),
            col=np.zeros(n, dtype=np.int64),
            src=self._src[piece],
            length=np.full(n, seq_len, dtype=np.int64),
            doc=self._doc[piece],
            doc_mask=False,
            cross_doc_targets=False,
            restart_positions=True,
        )

    def epoch_summary(self, epoch: int) -> dict[str, Any]:
        _, schedule, _ = self._epoch(epoch)
        lens = self.bucket_lens
        used = self.batches_per_bucket * self.rows_per_bucket
        return {
            "bucket_lengths": lens.tolist(),
            "pieces_per_bucket": self.pieces_per_bucket.tolist(),
            "tokens_per_bucket": (self.pieces_per_bucket * lens).tolist(),
            "rows_per_bucket": self.rows_per_bucket.tolist(),
            "batches_per_bucket": self.batches_per_bucket.tolist(),
            "dropped_tokens_short": self.pieces.dropped_tokens,
            "dropped_tokens_remainder": int(((self.pieces_per_bucket - used) * lens).sum()),
            "split_docs": int((self.lengths > self.cfg.max_len).sum()),
            "schedule": lens[schedule].tolist(),
        }
