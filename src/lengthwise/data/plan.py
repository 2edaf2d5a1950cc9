"""A step's layout as arrays of segments, and the one function that turns it into a `Batch`.

Every strategy only decides *which* token ranges go *where*: a `StepPlan` lists segments
(row, first column, offset into the token store, length). `assemble` then gathers the tokens and
derives targets, positions and document ids the same way for everyone, and `plan_counts` derives
the statistics (padding, targets, attention pairs) from the plan alone, without reading tokens.

A row spans at most `seq_len + 1` columns: column `seq_len` is never an input, only the target of
column `seq_len - 1` (chunking strategies read T+1 tokens per row, nanoGPT style). Strategies that
place whole segments (pad, best_fit, decomposition) fill at most `seq_len` columns, so a segment of
n tokens trains n - 1 predictions: its last token's successor is not in the segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lengthwise.batch import IGNORE_INDEX, Batch


@dataclass
class StepPlan:
    n_rows: int  # B: rows on this rank
    seq_len: int  # T
    row: np.ndarray  # (S,) int64, sorted by (row, col)
    col: np.ndarray  # (S,) int64 first column of the segment
    src: np.ndarray  # (S,) int64 offset of the first token in the token store
    length: np.ndarray  # (S,) int64 tokens (columns) the segment occupies, <= seq_len + 1 - col
    doc: np.ndarray  # (S,) int64 document index in the store (for statistics and tests)
    doc_mask: bool  # emit doc_ids: segments of a row do not attend to each other
    cross_doc_targets: bool = False  # concat_chunk: a segment's last token predicts the next one
    restart_positions: bool = True  # position ids restart at 0 in each segment

    @property
    def n_segments(self) -> int:
        return int(self.row.shape[0])


def _segment_ordinals(row: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each row, for segments sorted by row."""
    if row.size == 0:
        return row.copy()
    first = np.r_[0, np.flatnonzero(np.diff(row)) + 1]
    run = np.diff(np.r_[first, row.size])
    return np.arange(row.size) - np.repeat(first, run)


def assemble(
    tokens: np.ndarray,
    plan: StepPlan,
    pad_id: int,
    prompt_end: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    position_offset: np.ndarray | None = None,
) -> Batch:
    """Gather a plan's tokens into a `Batch` (see `lengthwise.batch` for the conventions).

    `prompt_end[d]`: store offset where document d's completion starts (task data); tokens
    before it are prompt and are never targets. `positions`: a position id per store token
    (positions.bin of a coupled task store), used instead of ids counted from each segment's
    start (or the row's start); `position_offset` (n_rows,) is then added to every real token
    of each row (padding keeps id 0)."""
    B, T = plan.n_rows, plan.seq_len
    width = T + 1
    buf = np.full((B, width), pad_id, dtype=np.int64)
    seg = np.full((B, width), -1, dtype=np.int64)
    pos = np.zeros((B, width), dtype=np.int64)
    prompt = np.zeros((B, width), dtype=bool)
    length = plan.length.astype(np.int64)
    if length.size:
        seg_of_token = np.repeat(np.arange(length.size), length)
        first_token = np.cumsum(length) - length
        within = np.arange(int(length.sum()), dtype=np.int64) - np.repeat(first_token, length)
        col = plan.col[seg_of_token] + within
        flat = plan.row[seg_of_token] * width + col
        buf.flat[flat] = np.asarray(tokens[plan.src[seg_of_token] + within], dtype=np.int64)
        seg.flat[flat] = _segment_ordinals(plan.row)[seg_of_token]
        if positions is not None:
            ids = np.asarray(positions[plan.src[seg_of_token] + within], dtype=np.int64)
            if position_offset is not None:
                ids += np.asarray(position_offset, dtype=np.int64)[plan.row[seg_of_token]]
            pos.flat[flat] = ids
        else:
            pos.flat[flat] = within if plan.restart_positions else col
        if prompt_end is not None:
            at = plan.src[seg_of_token] + within
            prompt.flat[flat] = at < prompt_end[plan.doc[seg_of_token]]
    real_in, real_out = seg[:, :-1] >= 0, seg[:, 1:] >= 0
    valid = real_in & real_out & ~prompt[:, 1:]
    if not plan.cross_doc_targets:
        valid &= seg[:, 1:] == seg[:, :-1]
    targets = np.where(valid, buf[:, 1:], IGNORE_INDEX)
    return Batch(
        input_ids=torch.from_numpy(np.ascontiguousarray(buf[:, :T])),
        targets=torch.from_numpy(targets),
        position_ids=torch.from_numpy(np.ascontiguousarray(pos[:, :T])),
        doc_ids=torch.from_numpy(np.ascontiguousarray(seg[:, :T])) if plan.doc_mask else None,
        n_target_tokens=int(valid.sum()),
    )


@dataclass
class PlanCounts:
    """What one step costs and trains, from the plan alone (no token reads)."""

    rows: int
    seq_len: int
    input_tokens: int  # real (non-pad) tokens in the B x T inputs
    pad_tokens: int  # B*T - input_tokens
    target_tokens: int  # == Batch.n_target_tokens
    attn_pairs: int  # (query, key) pairs the attention kernel computes (causal, incl. self)
    cross_doc_pairs: int  # pairs whose query and key come from different documents


def plan_counts(plan: StepPlan) -> PlanCounts:
    """Counts that `assemble` would produce, derived arithmetically.

    Attention pairs: a row without doc_ids computes the full causal triangle T(T+1)/2 (padding
    included, as a dense kernel does); with doc_ids, a block-sparse kernel ideally computes only
    l(l+1)/2 per segment of l input tokens.
    """
    B, T = plan.n_rows, plan.seq_len
    col, length = plan.col.astype(np.int64), plan.length.astype(np.int64)
    end = col + length  # exclusive, may be T + 1
    eff = np.clip(np.minimum(end, T) - col, 0, None)  # input tokens of each segment
    input_tokens = int(eff.sum())
    # A segment's inputs all have targets, except its last token when nothing follows it in the
    # row (segment ends at or before column T), or when the successor is another segment.
    has_successor_in_seg = end > T  # the row's extra column belongs to this segment
    seg_targets = eff - np.where(has_successor_in_seg, 0, 1)
    seg_targets = np.clip(seg_targets, 0, None)
    target_tokens = int(seg_targets.sum())
    if plan.cross_doc_targets and length.size:
        # The last input of a segment also predicts the first token of the next segment of the
        # same row when that segment starts right after it.
        same_row_next = np.r_[plan.row[1:] == plan.row[:-1], False]
        adjacent = same_row_next & np.r_[col[1:] == end[:-1], False] & (end <= T) & (eff > 0)
        target_tokens += int(adjacent.sum())
    seg_pairs = int((eff * (eff + 1) // 2).sum())
    full = B * T * (T + 1) // 2
    if plan.doc_mask:
        attn_pairs, cross = seg_pairs, 0
    else:
        attn_pairs = full
        # Pairs between real tokens of different segments of one row (padding excluded).
        per_row_tokens = np.bincount(plan.row, weights=eff, minlength=B).astype(np.int64)
        per_row_seg = np.bincount(plan.row, weights=eff * (eff + 1) // 2, minlength=B)
        cross = int((per_row_tokens * (per_row_tokens + 1) // 2).sum() - per_row_seg.sum())
    return PlanCounts(
        rows=B,
        seq_len=T,
        input_tokens=input_tokens,
        pad_tokens=B * T - input_tokens,
        target_tokens=target_tokens,
        attn_pairs=attn_pairs,
        cross_doc_pairs=cross,
    )
