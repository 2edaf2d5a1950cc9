"""Every attention backend equals the float64 dense reference, forward and backward.

LENGTHWISE_TEST_DEVICE=cuda runs the backend, causal and automatic-choice tests on the GPU
(scripts/gpu_check.sh does); the default is the CPU.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from lengthwise.model.attention import (
    AttnMask,
    attention,
    choose_cpu_backend,
    dense_reference,
    kv_mask,
)


def random_layout(B: int, T: int, g: torch.Generator) -> torch.Tensor:
    """(B, T) doc ids: random runs of documents 0, 1, 2, ... with padding (-1) runs mixed in
    (at the end of a row as the strategies make them, and in the middle to be safe)."""
    doc = torch.empty(B, T, dtype=torch.long)
    for b in range(B):
        t, next_id = 0, 0
        while t < T:
            L = int(torch.randint(1, max(2, T // 2), (1,), generator=g))
            pad = torch.rand(1, generator=g).item() < 0.25
            doc[b, t : t + L] = -1 if pad else next_id
            next_id += 0 if pad else 1
            t += L
    return doc


def restarting_positions(doc: torch.Tensor) -> torch.Tensor:
    """Position ids restarting at 0 at every segment start (the Batch contract)."""
    B, T = doc.shape
    pos = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        for t in range(1, T):
            pos[b, t] = 0 if doc[b, t] != doc[b, t - 1] else pos[b, t - 1] + 1
    return pos


DEVICE = torch.device(os.environ.get("LENGTHWISE_TEST_DEVICE", "cpu"))
TOL = 1e-5 if DEVICE.type == "cpu" else 1e-4  # GPU kernels reduce in a different order


def on_device(q, k, v, mask: AttnMask, bias):
    """The case moved to DEVICE (tensors are generated on the CPU so cases match everywhere)."""
    moved = AttnMask(
        None if mask.doc_ids is None else mask.doc_ids.to(DEVICE),
        None if mask.position_ids is None else mask.position_ids.to(DEVICE),
        mask.window,
    )
    return (
        q.to(DEVICE),
        k.to(DEVICE),
        v.to(DEVICE),
        moved,
        None if bias is None else bias.to(DEVICE),
    )


def make_case(seed: int, bias_kind: str, window: int, B: int = 3, H: int = 2, T: int = 37):
    g = torch.Generator().manual_seed(seed)
    D = 8
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    doc = random_layout(B, T, g)
    pos = restarting_positions(doc)
    mask = AttnMask(doc, pos if window else None, window)
    bias = None
    if bias_kind == "batched":
        bias = torch.randn(B, H, T, T, generator=g)
    elif bias_kind == "shared":
        bias = torch.randn(1, H, T, T, generator=g)
    return q, k, v, mask, bias


def grads(fn, *tensors: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, list]:
    """Output and d(sum(out * w))/d(tensors) for a fixed random weighting w."""
    leaves = [t.detach().to(dtype).requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    w = torch.randn(tuple(out.shape), generator=torch.Generator().manual_seed(1))
    w = w.to(out.device, out.dtype)
    (out * w).sum().backward()
    return out, [t.grad for t in leaves]


CASES = [
    (seed, bias_kind, window)
    for seed in range(3)
    for bias_kind in ("none", "batched", "shared")
    for window in (0, 5)
]


@pytest.mark.parametrize("backend", ["per_doc", "dense"])
@pytest.mark.parametrize("seed,bias_kind,window", CASES)
def test_backend_matches_reference(backend: str, seed: int, bias_kind: str, window: int):
    q, k, v, mask, bias = on_device(*make_case(seed, bias_kind, window))
    tensors = (q, k, v) if bias is None else (q, k, v, bias)

    def run(q, k, v, bias=None):
        return attention(q, k, v, mask, bias, backend=backend)  # type: ignore[arg-type]

    def ref(q, k, v, bias=None):
        return dense_reference(q, k, v, mask, bias)

    out, g = grads(run, *tensors, dtype=torch.float32)
    out_ref, g_ref = grads(ref, *tensors, dtype=torch.float64)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), out_ref, atol=TOL, rtol=TOL)
    for name, a, b in zip("qkvb", g, g_ref, strict=False):
        torch.testing.assert_close(a.double(), b, atol=TOL, rtol=TOL, msg=f"grad {name}")


@pytest.mark.parametrize("seed", range(2))
def test_sdpa_causal_matches_reference(seed: int):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, 29, 8, generator=g).to(DEVICE) for _ in range(3))
    out, gr = grads(lambda q, k, v: attention(q, k, v), q, k, v, dtype=torch.float32)
    out_ref, gr_ref = grads(lambda q, k, v: dense_reference(q, k, v), q, k, v, dtype=torch.float64)
    torch.testing.assert_close(out.double(), out_ref, atol=TOL, rtol=TOL)
    for a, b in zip(gr, gr_ref, strict=True):
        torch.testing.assert_close(a.double(), b, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("seed,bias_kind,window", CASES)
def test_auto_backend_matches_reference(seed: int, bias_kind: str, window: int):
    """The automatic choice (per_doc/dense on CPU, FlexAttention on CUDA)."""
    q, k, v, mask, bias = on_device(*make_case(seed, bias_kind, window))
    out = attention(q, k, v, mask, bias)
    torch.testing.assert_close(out.double(), dense_reference(q, k, v, mask, bias), atol=TOL, rtol=0)


@pytest.mark.parametrize("seed,bias_kind,window", CASES)
def test_flex_forward_on_cpu_matches_reference(seed: int, bias_kind: str, window: int):
    """FlexAttention runs forward on CPU in eager mode (unfused; it warns about that)."""
    q, k, v, mask, bias = make_case(seed, bias_kind, window)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = attention(q, k, v, mask, bias, backend="flex")
    torch.testing.assert_close(
        out.double(), dense_reference(q, k, v, mask, bias), atol=1e-5, rtol=0
    )


def test_flex_has_no_backward_on_cpu():
    """Pins the torch 2.13 limitation that makes CPU training use per_doc/dense: if this starts
    failing, FlexAttention gained a CPU backward and the backend rule can be revisited."""
    q, k, v, mask, bias = make_case(0, "none", 0)
    q.requires_grad_(True)
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        attention(q, k, v, mask, bias, backend="flex")


def test_window_gives_zero_weight_beyond_window():
    """With v = identity, the output rows are the attention weights."""
    B, H, T, W = 2, 2, 16, 4
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(B, H, T, T, generator=g), torch.randn(B, H, T, T, generator=g)
    v = torch.eye(T).expand(B, H, T, T)
    doc = torch.tensor([[0] * 10 + [1] * 6, [0] * 16])
    pos = restarting_positions(doc)
    mask = AttnMask(doc, pos, W)
    bias = torch.randn(B, H, T, T, generator=g)
    for backend in ("per_doc", "dense", "flex"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            weights = attention(q, k, v, mask, bias, backend=backend)  # (B, H, T, T)
        dist = pos[:, :, None] - pos[:, None, :]
        same = doc[:, :, None] == doc[:, None, :]
        visible = same & (dist >= 0) & (dist < W)
        assert (weights[~visible[:, None].expand_as(weights)] == 0).all(), backend
        assert (weights[visible[:, None].expand_as(weights)] > 0).all(), backend
        torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, T))


def test_window_over_task_ids_masks_both_directions():
    """Coupled ids (321+54=861<eos>) do not grow along the row: a key with a much *higher* id
    than its query is out of the window too, in every backend and in the KV-cache mask."""
    pos = torch.tensor([[1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 0]])
    T, W = pos.shape[1], 2
    idx = torch.arange(T)
    visible = (idx[None, :] <= idx[:, None]) & ((pos[0][:, None] - pos[0][None, :]).abs() < W)
    assert not visible[4, 2] and visible[4, 3] and visible[4, 0]  # id 1 sees ids 0..2, not 3
    assert not visible[7, 2]  # the first answer digit (id 1) does not see operand digit id 3
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, T, T, generator=g), torch.randn(1, 1, T, T, generator=g)
    v = torch.eye(T).expand(1, 1, T, T)
    mask = AttnMask(torch.zeros(1, T, dtype=torch.long), pos, W)
    for backend in ("per_doc", "dense", "flex"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            weights = attention(q, k, v, mask, None, backend=backend)[0, 0]
        assert torch.equal(weights > 0, visible), backend
    assert torch.equal(kv_mask(pos[:, 7:], pos, None, W)[0, 0], visible[7:])


def test_padding_rows_stay_finite():
    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
    doc = torch.tensor([[0, 0, 0, -1, -1, -1, -1, -1]])
    for backend in ("per_doc", "dense"):
        assert torch.isfinite(attention(q, k, v, AttnMask(doc), backend=backend)).all()


def test_cpu_rule():
    """per_doc for long documents; dense for short rows (gathering tokens into segment order
    costs ~85 scores a token) and for one long document under a bias (float masks either way,
    and per_doc pays for the gather)."""
    T = 2048
    eight_docs = AttnMask((torch.arange(T) * 8 // T)[None])
    assert choose_cpu_backend(eight_docs, (1, 4, T, 64)) == "per_doc"
    assert choose_cpu_backend(eight_docs, (1, 4, T, 64), has_bias=True) == "per_doc"
    two_short = AttnMask(torch.tensor([[0] * 40 + [1] * 24] * 16))
    assert choose_cpu_backend(two_short, (16, 4, 64, 64)) == "dense"
    one_long = AttnMask(torch.zeros(1, T, dtype=torch.long))
    assert choose_cpu_backend(one_long, (1, 4, T, 64)) == "per_doc"  # = causal SDPA
    assert choose_cpu_backend(one_long, (1, 4, T, 64), has_bias=True) == "dense"


def test_unmasked_backend_rejects_a_mask():
    q, k, v, mask, _ = make_case(0, "none", 0)
    with pytest.raises(ValueError, match="plain causal"):
        attention(q, k, v, mask, backend="sdpa_causal")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("seed,bias_kind,window", CASES)
def test_flex_on_cuda_matches_reference_with_gradients(seed: int, bias_kind: str, window: int):
    """Compiled FlexAttention (the CUDA backend), forward and backward, bias gradients included."""
    q, k, v, mask, bias = make_case(seed, bias_kind, window, T=300)
    dev = torch.device("cuda")
    q, k, v = q.to(dev), k.to(dev), v.to(dev)
    bias = None if bias is None else bias.to(dev)
    mask = AttnMask(
        mask.doc_ids.to(dev),  # type: ignore[union-attr]
        None if mask.position_ids is None else mask.position_ids.to(dev),
        mask.window,
    )
    tensors = (q, k, v) if bias is None else (q, k, v, bias)
    out, g = grads(
        lambda q, k, v, b=None: attention(q, k, v, mask, b), *tensors, dtype=torch.float32
    )
    out_ref, g_ref = grads(
        lambda q, k, v, b=None: dense_reference(q, k, v, mask, b), *tensors, dtype=torch.float64
    )
    torch.testing.assert_close(out.double(), out_ref, atol=2e-3, rtol=2e-3)
    for name, a, b in zip("qkvb", g, g_ref, strict=False):
        torch.testing.assert_close(a.double(), b, atol=2e-3, rtol=2e-3, msg=f"grad {name}")
