"""Causal attention with document masks, additive position biases and position windows.

One entry point, `attention(q, k, v, mask, bias, dropout_p)`, and several backends that must agree
with `dense_reference` (tests/model/test_attention.py checks every one of them):

- `sdpa_causal`: plain causal `F.scaled_dot_product_attention`; rows hold one document, no bias.
- `flex`: FlexAttention (CUDA) with a BlockMask (causal AND same document AND inside the window)
  and a `score_mod` adding the bias. The block mask skips whole 128x128 tiles across documents,
  so a packed row costs about what its documents cost alone.
- `per_doc`: the segments (runs of equal doc id, padding runs included) of all rows, grouped by
  length, one causal SDPA call per distinct length. CPU only.
- `dense`: one SDPA call with a (B, 1, T, T) boolean (or float, with a bias) mask. CPU, and the
  CUDA fallback for attention dropout (FlexAttention has none).

Incremental decoding with a KV cache (gpt.KVCache) takes a separate, simpler path: `kv_mask`
builds one (B, 1, T_new, T_cached + T_new) boolean mask per forward (causality against the
cache, key padding of left-padded prompts, the window), the bias is folded into it once, and
every layer makes one SDPA call with it (`masked_attention`). Training never goes there.

On CPU `choose_cpu_backend` picks between the last two with a cost model (below). Measured fwd+bwd
on the 2-core dev machine, idle, H=4, D=64, fp32 (tests/model/bench_attention_cpu.py):

    rows x T    documents per row      2 threads: per_doc  dense   1 thread: per_doc  dense
    1 x 2048    1 (plain causal SDPA)              52 ms   88 ms             100 ms  167 ms
    1 x 2048    8 of 256 tokens                    13 ms   87 ms              22 ms  159 ms
    1 x 2048    8 of random lengths                19 ms   87 ms              31 ms  160 ms
    1 x 2048    2 of random lengths, + bias       143 ms  110 ms             255 ms  195 ms
    8 x 512     32 of random lengths               17 ms   45 ms              19 ms   83 ms
    32 x 128    2 of random lengths                19 ms   15 ms              27 ms   25 ms
    32 x 128    32 of random lengths               18 ms   15 ms              17 ms   26 ms

The rule picks the faster one in 60 of 68 benchmark layouts at 2 threads; the misses are ties
(<= 1.02x) or 128-token rows (<= 1.18x slower). On a busy machine timings with 2 threads are
erratic (a second process on the other core made the 8 x 256 case 175 ms per_doc against 25 ms
with 1 thread).

FlexAttention on CPU in torch 2.13: the forward runs (eager: an unfused implementation that
materializes the scores, with a warning; compiled: an Inductor C++ kernel), but the backward
raises `NotImplementedError("FlexAttention does not support backward on CPU...")` as soon as any
input requires grad, so training on CPU uses `per_doc`/`dense`. FlexAttention has no dropout.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Backend = Literal["auto", "sdpa_causal", "flex", "per_doc", "dense"]


@dataclass
class SegmentPlan:
    """Segments of equal length share one SDPA call. Tokens are gathered once into group order
    (`order`: flat b*T + t of each gathered token), each group is a contiguous (n, L) block of
    that order, and `inverse` puts the outputs back. Gathering once (not per group) matters: the
    backward of each separate gather would allocate a zero tensor of the whole input's size."""

    order: Tensor  # (B*T,)
    inverse: Tensor  # (B*T,)
    shapes: list[tuple[int, int]]  # (n segments, length L) per group, in `order`
    T: int
    _pairs: dict[Any, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)

    @staticmethod
    def build(segments: list[tuple[int, int, int]], T: int, device: torch.device) -> SegmentPlan:
        by_len: dict[int, list[tuple[int, int]]] = {}
        for b, s, e in segments:
            by_len.setdefault(e - s, []).append((b, s))
        flat, shapes = [], []
        for L, members in sorted(by_len.items()):
            start = torch.tensor([b * T + s for b, s in members])
            flat.append((start[:, None] + torch.arange(L)).reshape(-1))
            shapes.append((len(members), L))
        order = torch.cat(flat)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        return SegmentPlan(order.to(device), inverse.to(device), shapes, T)

    def pairs(self, shared_rows: bool) -> tuple[Tensor, Tensor]:
        """(row, q*T + k) of every (query, key) pair inside each group's segments, in group
        order: one gather fetches all segments' bias blocks. Row 0 for a bias shared by rows."""
        if shared_rows not in self._pairs:
            rows, pairs, i = [], [], 0
            for n, L in self.shapes:
                tok = self.order[i : i + n * L].view(n, L)  # flat b*T + t
                i += n * L
                t = tok % self.T
                row = torch.zeros_like(tok) if shared_rows else tok // self.T
                rows.append(row[:, :1].expand(n, L * L).reshape(-1))
                pairs.append((t[:, :, None] * self.T + t[:, None, :]).reshape(-1))
            self._pairs[shared_rows] = (torch.cat(rows), torch.cat(pairs))
        return self._pairs[shared_rows]


@dataclass(eq=False)
class AttnMask:
    """Which keys each query may see beyond causality, built once per forward and shared by all
    layers, so derived structures (segments, dense masks, the BlockMask) are built once too.

    Attention from query q to key k is allowed iff k <= q, q and k lie in the same segment (a
    run of equal doc_ids; with doc ids numbered as the Batch contract says, that is
    doc_ids[q] == doc_ids[k], padding -1 attending only to padding), and
    |position_ids[q] - position_ids[k]| < window (when window > 0). With positions that grow
    along the row (text) only the lower bound matters: a sliding window over the last `window`
    positions. With task ids (position coupling) keys with *higher* ids are masked too: an
    answer digit sees the operand digits near its own significance, not every later one.
    """

    doc_ids: Tensor | None = None  # (B, T) segment index per row, -1 = padding; None: one doc
    position_ids: Tensor | None = None  # (B, T), read only when window > 0
    window: int = 0
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.window > 0 and self.position_ids is None:
            raise ValueError("a window needs position_ids")

    @property
    def causal_only(self) -> bool:
        return self.doc_ids is None and self.window == 0

    def segment_ids(self) -> Tensor:
        """(B, T) run index of each token: a new run wherever the doc id changes. Two padding
        runs of one row (padding between documents) are two segments, so every backend treats
        them alike."""
        if "segment_ids" not in self._cache:
            assert self.doc_ids is not None
            doc = self.doc_ids
            starts = torch.ones_like(doc, dtype=torch.long)
            starts[:, 1:] = (doc[:, 1:] != doc[:, :-1]).long()
            self._cache["segment_ids"] = starts.cumsum(dim=1)
        return self._cache["segment_ids"]

    def segments(self) -> list[tuple[int, int, int]]:
        """(row, start, end) of every segment, padding runs included. One host sync per
        forward, not per layer."""
        if "segments" not in self._cache:
            seg = self.segment_ids()
            T = seg.shape[1]
            segs = []
            for b, row in enumerate(seg.cpu().tolist()):
                s = [t for t in range(T) if t == 0 or row[t] != row[t - 1]] + [T]
                segs += [(b, s[i], s[i + 1]) for i in range(len(s) - 1)]
            self._cache["segments"] = segs
        return self._cache["segments"]

    def plan(self, device: torch.device) -> SegmentPlan:
        """The segments grouped by length: what `per_doc` runs (built once per forward)."""
        key = ("plan", device)
        if key not in self._cache:
            assert self.doc_ids is not None
            self._cache[key] = SegmentPlan.build(self.segments(), self.doc_ids.shape[1], device)
        return self._cache[key]

    def dense(self, T: int, device: torch.device) -> Tensor:
        """(B or 1, 1, T, T) bool, True = may attend."""
        key = ("dense", T, device)
        if key not in self._cache:
            ar = torch.arange(T, device=device)
            allowed = (ar[None, :] <= ar[:, None])[None, None]  # (1, 1, T, T)
            if self.doc_ids is not None:
                seg = self.segment_ids().to(device)
                allowed = allowed & (seg[:, None, :, None] == seg[:, None, None, :])
            if self.window > 0:
                pos = self.position_ids.to(device)  # type: ignore[union-attr]
                diff = pos[:, None, :, None] - pos[:, None, None, :]
                allowed = allowed & (diff.abs() < self.window)
            self._cache[key] = allowed
        return self._cache[key]

    def block_mask(self, T: int, device: torch.device) -> Any:
        """FlexAttention BlockMask for this layout (built on `device`, cached)."""
        from torch.nn.attention.flex_attention import create_block_mask

        key = ("block", T, device)
        if key not in self._cache:
            doc = None if self.doc_ids is None else self.segment_ids().to(device)
            pos = None if self.window == 0 else self.position_ids.to(device)  # type: ignore
            window = self.window

            def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
                ok = kv_idx <= q_idx
                if doc is not None:
                    ok = ok & (doc[b, q_idx] == doc[b, kv_idx])
                if pos is not None:
                    ok = ok & ((pos[b, q_idx] - pos[b, kv_idx]).abs() < window)
                return ok

            rows = doc if doc is not None else pos
            B = None if rows is None else rows.shape[0]
            self._cache[key] = create_block_mask(
                mask_mod, B, None, T, T, device=device, _compile=device.type == "cuda"
            )
        return self._cache[key]


# CPU cost model behind `choose_cpu_backend`, in units of one score of the dense masked SDPA at
# H*D = 256 (~40 ns fwd+bwd on the 2-core dev machine, 1 thread, torch 2.13, fp32), fitted to
# per_doc timings over 64 layouts (tests/model/bench_attention_cpu.py), then the per-token term
# lowered from the fitted 85 to 50, which the T = 128 rows of the benchmark preferred:
#   dense   = B T^2                (x 1.2 with a bias: the float mask is built and read)
#   per_doc = 50 B T               (gathering q, k, v into segment order and back)
#           + 2500 * 256/(H D) per SDPA call (one call per distinct segment length)
#           + 0.75 sum(L^2)        (causal kernel on each segment skips the upper triangle)
#             or 1.5 sum(L^2)      (with a bias or window: a float mask per segment, no skipping)
PER_TOKEN, PER_CALL = 50.0, 2500.0
PER_SCORE = {False: 0.75, True: 1.5}  # keyed by "has a bias or window"
DENSE_BIAS = 1.2


def choose_cpu_backend(
    mask: AttnMask, shape: tuple[int, ...], has_bias: bool = False
) -> Literal["per_doc", "dense"]:
    """The faster of `per_doc` and `dense` for this layout (cost model above); shape = q.shape
    (B, H, T, D)."""
    B, H, T, D = shape
    segs = mask.segments()
    calls = len({e - s for _, s, e in segs})
    masked = has_bias or mask.window > 0
    per_doc = (
        PER_TOKEN * B * T
        + PER_CALL * 256 / (H * D) * calls
        + PER_SCORE[masked] * sum((e - s) ** 2 for _, s, e in segs)
    )
    dense = B * T * T * (DENSE_BIAS if has_bias else 1.0)
    return "per_doc" if per_doc < dense else "dense"


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: AttnMask | None = None,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
    backend: Backend = "auto",
) -> Tensor:
    """Causal softmax(q k^T / sqrt(D) + bias) v under `mask`. q, k, v: (B, H, T, D); bias: an
    additive (B or 1, H, T, T) float tensor or None; mask None = plain causal. Returns
    (B, H, T, D) in q's dtype. Pass dropout_p > 0 only in training."""
    mask = mask if mask is not None else AttnMask()
    if backend == "auto":
        backend = _auto_backend(q, mask, bias, dropout_p)
    if backend == "sdpa_causal":
        if not mask.causal_only or bias is not None:
            raise ValueError("sdpa_causal handles plain causal attention only")
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if backend == "flex":
        if dropout_p > 0:
            raise ValueError("FlexAttention has no dropout; use the dense backend")
        return _flex(q, k, v, mask, bias)
    if backend == "per_doc":
        return _per_doc(q, k, v, mask, bias, dropout_p)
    if backend == "dense":
        return _dense(q, k, v, mask, bias, dropout_p)
    raise ValueError(f"unknown attention backend {backend!r}")


def _auto_backend(q: Tensor, mask: AttnMask, bias: Tensor | None, dropout_p: float) -> Backend:
    if mask.causal_only and bias is None:
        return "sdpa_causal"
    if q.is_cuda:
        return "dense" if dropout_p > 0 else "flex"
    if mask.doc_ids is None:  # bias or window without documents: one mask, nothing to split
        return "dense"
    return choose_cpu_backend(mask, tuple(q.shape), bias is not None)


def _dense(
    q: Tensor, k: Tensor, v: Tensor, mask: AttnMask, bias: Tensor | None, dropout_p: float
) -> Tensor:
    T = q.shape[2]
    allowed = mask.dense(T, q.device)  # (B or 1, 1, T, T)
    attn_mask: Tensor = allowed
    if bias is not None:  # SDPA takes one mask: fold the boolean one into the bias
        attn_mask = bias.to(q.dtype).masked_fill(~allowed, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


class _Permute(torch.autograd.Function):
    """x[perm] for a permutation, whose backward is a gather as well (grad[inverse]) rather than
    a scatter into a zero tensor: saves a fill and a scatter per tensor and call on CPU."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, perm: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x[perm]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return grad[inverse], None, None


def _per_doc(
    q: Tensor, k: Tensor, v: Tensor, mask: AttnMask, bias: Tensor | None, dropout_p: float
) -> Tensor:
    """One SDPA call per segment length, the segments of that length (from any rows) gathered
    into one batch. A padding run is a segment too (padding attends to padding), so every output
    stays finite."""
    B, H, T, D = q.shape
    if mask.doc_ids is None:  # one segment per row
        mask = AttnMask(torch.zeros(B, T, dtype=torch.long), mask.position_ids, mask.window)
    plan = mask.plan(q.device)
    if plan.shapes == [(B, T)] and mask.window == 0 and bias is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    sizes = [n * L for n, L in plan.shapes]
    # (B*T, H, D) in group order, then one contiguous block per group
    qs, ks, vs = (
        _Permute.apply(x.transpose(1, 2).reshape(B * T, H, D), plan.order, plan.inverse).split(
            sizes
        )
        for x in (q, k, v)
    )
    pos = None
    if mask.window > 0:
        pos = mask.position_ids.to(q.device).reshape(B * T)[plan.order].split(sizes)  # type: ignore
    biases = None
    if bias is not None:
        rows, pairs = plan.pairs(shared_rows=bias.shape[0] == 1)
        per_pair = bias.to(q.dtype).flatten(2)[rows, :, pairs]  # (sum n L^2, H)
        biases = per_pair.split([n * L * L for n, L in plan.shapes])
    outs = []
    for i, (n, L) in enumerate(plan.shapes):
        qg, kg, vg = (x[i].view(n, L, H, D).transpose(1, 2) for x in (qs, ks, vs))  # (n, H, L, D)
        seg_mask: Tensor | None = None
        if pos is not None:  # causal & window, from the segment's own positions
            p = pos[i].view(n, L)
            causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
            seg_mask = (((p[:, :, None] - p[:, None, :]).abs() < mask.window) & causal)[:, None]
        if biases is not None:
            if seg_mask is None:
                seg_mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
            seg_bias = biases[i].view(n, L, L, H).permute(0, 3, 1, 2)  # (n, H, L, L)
            seg_mask = seg_bias.masked_fill(~seg_mask, float("-inf"))
        if seg_mask is None:
            out = F.scaled_dot_product_attention(qg, kg, vg, dropout_p=dropout_p, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(
                qg, kg, vg, attn_mask=seg_mask, dropout_p=dropout_p
            )
        outs.append(out.transpose(1, 2).reshape(n * L, H, D))
    out = _Permute.apply(torch.cat(outs), plan.inverse, plan.order)  # (B*T, H, D), row-major
    return out.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)


@functools.cache
def _compiled_flex() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(q: Tensor, k: Tensor, v: Tensor, mask: AttnMask, bias: Tensor | None) -> Tensor:
    """FlexAttention; compiled on CUDA (the eager version materializes the scores)."""
    from torch.nn.attention.flex_attention import flex_attention

    T = q.shape[2]
    block_mask = mask.block_mask(T, q.device)
    score_mod = None
    if bias is not None:
        bias_ = bias.to(q.dtype)
        if bias_.shape[0] == 1:

            def score_mod(score: Tensor, b: Tensor, h: Tensor, qi: Tensor, ki: Tensor) -> Tensor:
                return score + bias_[0, h, qi, ki]
        else:

            def score_mod(score: Tensor, b: Tensor, h: Tensor, qi: Tensor, ki: Tensor) -> Tensor:
                return score + bias_[b, h, qi, ki]

    fn = _compiled_flex() if q.is_cuda else flex_attention
    return fn(q, k, v, score_mod=score_mod, block_mask=block_mask)


def kv_mask(q_pos: Tensor, k_pos: Tensor, key_valid: Tensor | None, window: int = 0) -> Tensor:
    """(B, 1, Tq, Tk) bool, True = may attend, for Tq new queries that are the last Tq of Tk keys
    (a KV cache holds the first Tk - Tq): query i sees key j iff j <= Tk - Tq + i, the key is not
    padding (`key_valid` (B, Tk), None = all real), and |q_pos[i] - k_pos[j]| < window when
    window > 0. A padding query always sees itself: a row with no key is 0 in CPU SDPA of torch
    2.13 but NaN in other kernels, and 0 x NaN in the next layer would reach the real tokens."""
    B, Tq = q_pos.shape
    Tk = k_pos.shape[1]
    qi = torch.arange(Tk - Tq, Tk, device=q_pos.device)[:, None]  # key index of each query
    kj = torch.arange(Tk, device=q_pos.device)[None, :]
    allowed = (kj <= qi)[None, None]  # (1, 1, Tq, Tk)
    if key_valid is not None:
        allowed = allowed & (key_valid[:, None, None, :] | (kj == qi)[None, None])
    if window > 0:
        diff = q_pos[:, None, :, None] - k_pos[:, None, None, :]
        allowed = allowed & (diff.abs() < window)
    return allowed.expand(B, 1, Tq, Tk)


def fold_bias(allowed: Tensor, bias: Tensor | None) -> Tensor:
    """The one SDPA mask of `allowed` (bool) and an additive bias: -inf where not allowed."""
    if bias is None:
        return allowed
    return bias.masked_fill(~allowed, float("-inf"))


def masked_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(D) + mask) v for q (B, H, Tq, D) against k, v (B, H, Tk, D), the mask
    from `fold_bias(kv_mask(...), bias)` (bool, or float with the bias). Inference only."""
    if attn_mask.dtype != torch.bool:
        attn_mask = attn_mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def dense_reference(
    q: Tensor, k: Tensor, v: Tensor, mask: AttnMask | None = None, bias: Tensor | None = None
) -> Tensor:
    """The definition every backend is tested against: explicit float64
    softmax(q k^T / sqrt(D) + bias + mask) v. Returns (B, H, T, D) float64."""
    mask = mask if mask is not None else AttnMask()
    q64, k64, v64 = q.double(), k.double(), v.double()
    T, D = q.shape[2], q.shape[3]
    scores = q64 @ k64.transpose(-1, -2) / math.sqrt(D)  # (B, H, T, T)
    if bias is not None:
        scores = scores + bias.double()
    scores = scores.masked_fill(~mask.dense(T, q.device), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v64
