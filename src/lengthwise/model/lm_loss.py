"""The LM head's summed cross-entropy without the (tokens x vocab) logits: chunked, fused.

`F.linear` + `F.cross_entropy` keeps the float32 logits (N, V) for the backward and then builds
their gradient, another (N, V): at 16k tokens and a 50k vocabulary that is 2 x 3.3 GB, often more
than the whole model. `chunked_lm_loss` walks the rows in chunks and, for each chunk, computes the
logits, the loss and, when a gradient is wanted, the gradients of x and W right away (softmax
minus one-hot is the logits' gradient), so only one chunk's logits ever exist. The backward just
scales the stored gradients by the incoming one. This is the idea of Liger-kernel's "fused linear
cross entropy", written here in plain torch.

Everything is computed in float32 for bf16/fp16/fp32 inputs (as the model's own fp32 head:
bf16 logits lose the small probabilities the loss is made of; float64 inputs stay float64, for
exact tests); the gradients come back in the inputs' dtypes. No double backward (nothing in
lengthwise needs one).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lengthwise.batch import IGNORE_INDEX

CHUNK_BYTES = 128 * 2**20  # one chunk's logits in float32 (see default_chunk_rows)
MIN_CHUNK_ROWS = 256


def default_chunk_rows(n: int, vocab: int) -> int:
    """Rows per chunk: as many as make one chunk's float32 logits ~128 MB, at least 256.

    Small chunks cost time: every chunk reads and writes the whole float32 dW (V x C) once, and
    the dW matmul's inner dimension is the chunk's rows. Measured (CPU, 2 threads, a shared and
    loaded machine, N=4096, C=256, V=50257, forward+backward seconds, 3 repeats): reference
    7.4-12.5; chunks of 16 MB 13.8-16.1, 32 MB 10.1-10.9, 64 MB 9.1-10.1, 128 MB 8.2-9.1,
    256 MB 7.8-9.1, 512 MB 8.1-8.8. 128 MB is where the time flattens out; its memory (the chunk's
    logits, turned into their gradient in place, plus dW and dX) is still a small fraction of the
    reference's at training sizes: benchmarks/lm_loss.py at N=16384, C=256, V=50257 measured a
    peak of 206 MB vs 9434 MB, in 0.63x the time (CPU, 2 threads). The 256-row floor
    keeps the matmuls efficient at huge vocabularies (256 x 256k x 4 B = 256 MB)."""
    rows = max(MIN_CHUNK_ROWS, CHUNK_BYTES // (4 * vocab))
    return max(1, min(n, rows))


def compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """float32, or float64 when an input is float64."""
    return torch.promote_types(torch.promote_types(x.dtype, weight.dtype), torch.float32)


def _chunk(xc: Tensor, w: Tensor, tc: Tensor, want_grad: bool) -> tuple[Tensor, Tensor | None]:
    """The summed loss of one chunk and, if `want_grad`, d(loss)/d(logits) (rows of ignored
    targets zero), computed in place in the logits' buffer."""
    logits = xc @ w.T  # (n, V) in the compute dtype
    valid = tc != IGNORE_INDEX
    safe = torch.where(valid, tc, 0).unsqueeze(1)
    picked = logits.gather(1, safe).squeeze(1)
    top = logits.amax(dim=1, keepdim=True)
    e = logits.sub_(top).exp_()  # logsumexp by hand, in place: no second (n, V) buffer
    total = e.sum(dim=1, keepdim=True)
    lse = (top + total.log()).squeeze(1)
    loss = torch.where(valid, lse - picked, 0.0).sum()
    if not want_grad:
        return loss, None
    g = e.div_(total)  # softmax
    g.scatter_add_(1, safe, torch.full_like(picked, -1.0).unsqueeze(1))  # minus one-hot
    g.mul_(valid.unsqueeze(1))
    return loss, g


def _walk(
    x: Tensor, w: Tensor, targets: Tensor, rows: int, dx: Tensor | None, dw: Tensor | None
) -> Tensor:
    """The summed loss, `rows` rows of x at a time in w's dtype; with a dx (dw) buffer, also
    d(loss)/dx written into it (d(loss)/dW added to it), chunk by chunk."""
    want_grad = dx is not None or dw is not None
    loss = torch.zeros((), dtype=w.dtype, device=x.device)
    for s in range(0, x.shape[0], rows):
        xc = x[s : s + rows].to(w.dtype)
        part, g = _chunk(xc, w, targets[s : s + rows], want_grad)
        loss += part
        if dx is not None:
            torch.mm(g, w, out=dx[s : s + rows])
        if dw is not None:
            dw.addmm_(g.T, xc)
        del g  # free this chunk's buffer before the next one is allocated
    return loss


class _FusedLMLoss(torch.autograd.Function):
    """Forward: loss and gradients chunk by chunk; backward: the stored gradients, scaled."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, targets: Tensor, chunk_rows: int) -> Tensor:
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dt = compute_dtype(x, weight)
        w = weight.to(dt)
        dx = torch.empty(x.shape, dtype=dt, device=x.device) if need_x else None  # every row set
        dw = torch.zeros(w.shape, dtype=dt, device=w.device) if need_w else None
        loss = _walk(x, w, targets, chunk_rows, dx, dw)
        ctx.save_for_backward(dx, dw)
        ctx.dtypes = (x.dtype, weight.dtype)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        # compute dtype until scaled, then one rounding to the inputs' dtypes (as autograd through
        # F.linear on `.float()` copies would do)
        dx, dw = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        gx = None if dx is None else (dx * grad_out).to(x_dtype)
        gw = None if dw is None else (dw * grad_out).to(w_dtype)
        return gx, gw, None, None


def chunked_lm_loss(
    x: Tensor, weight: Tensor, targets: Tensor, chunk_rows: int | None = None
) -> Tensor:
    """sum over targets != -100 of cross_entropy(x @ weight.T, targets), a float32 scalar
    (float64 if an input is float64).

    x (N, C) the final hidden states (after the final norm), weight (V, C) the bias-free output
    head (a tied embedding is fine: its gradient flows into the shared parameter), targets (N,)
    with -100 for no target. `chunk_rows` None: default_chunk_rows. Gradients, when autograd
    wants any, are computed during this call (see the module docstring); under no_grad, or when
    neither x nor weight requires grad, only the loss."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x (N, C) and weight (V, C), got {tuple(x.shape)}, {tuple(weight.shape)}")
    targets = targets.reshape(-1)
    if targets.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} rows of x, {targets.shape[0]} targets")
    rows = chunk_rows or default_chunk_rows(x.shape[0], weight.shape[0])
    with torch.autocast(device_type=x.device.type, enabled=False):
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            return _FusedLMLoss.apply(x, weight, targets, rows)
        return _walk(x, weight.to(compute_dtype(x, weight)), targets, rows, None, None)
