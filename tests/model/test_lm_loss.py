"""chunked_lm_loss (model/lm_loss.py) against F.linear + F.cross_entropy(reduction="sum"): the
loss and the gradients of x and W, whatever the chunking, with ignored targets, frozen inputs,
bf16 inputs, and through the GPT and HFModel training losses (every parameter's gradient)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lengthwise.config import ModelConfig
from lengthwise.model.gpt import GPT
from lengthwise.model.lm_loss import chunked_lm_loss, default_chunk_rows

N, C, V = 37, 8, 19


def inputs(dtype=torch.float64, seed=0):
    """x (N, C), W (V, C) requiring grad; targets with one ignored row and rows 10..19 ignored
    (with chunks of 5 or 10 rows, whole chunks without a target)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, generator=g, dtype=dtype).requires_grad_()
    w = torch.randn(V, C, generator=g, dtype=dtype).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    t[3] = -100
    t[10:20] = -100
    return x, w, t


def reference(x, w, t):
    """Loss and (dx, dW) of the plain path, for a loss scaled by 0.5 (a non-unit grad_output)."""
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    loss = F.cross_entropy(F.linear(x, w), t, ignore_index=-100, reduction="sum")
    (0.5 * loss).backward()
    return loss.detach(), x.grad, w.grad


def chunked(x, w, t, rows):
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    loss = chunked_lm_loss(x, w, t, rows)
    (0.5 * loss).backward()
    return loss.detach(), x.grad, w.grad


@pytest.mark.parametrize("rows", [1, 5, 10, 16, N, 100, None])
def test_float64_matches_reference(rows):
    """float64 throughout: equal to 1e-12 relative (summation order only), for chunk sizes 1,
    5 and 10 (chunks 2 and 3 have no target), 16 (N not a multiple), N and > N."""
    x, w, t = inputs()
    for got, want in zip(chunked(x, w, t, rows), reference(x, w, t), strict=True):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert (chunked(x, w, t, rows)[1][10:20] == 0).all()  # ignored rows: no gradient


def test_float32_matches_reference():
    """float32: each logit is the same length-C dot product, the chunks only reorder sums of at
    most N (dW) or V (logsumexp) float32 terms, so errors are a few ulps of the sums' magnitude:
    rtol 1e-5 (~100 ulps) with atol 1e-6 for gradient entries near zero."""
    x, w, t = inputs(torch.float32)
    for got, want in zip(chunked(x, w, t, 7), reference(x, w, t), strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_gradcheck():
    x, w, t = inputs()
    small = (x[:9].detach().requires_grad_(), w[:5].detach().requires_grad_(), t[:9] % 5)
    small[2][2] = -100
    assert torch.autograd.gradcheck(lambda a, b: chunked_lm_loss(a, b, small[2], 4), small[:2])


def test_no_grad_and_frozen_inputs():
    """Under no_grad, or with neither input requiring grad, only the loss (no autograd graph);
    a frozen W (or x) gets no gradient while the other still gets the reference's."""
    x, w, t = inputs()
    want, dx, dw = reference(x, w, t)
    with torch.no_grad():
        loss = chunked_lm_loss(x, w, t, 5)
    assert loss.grad_fn is None and torch.allclose(loss, want, rtol=1e-12)
    assert chunked_lm_loss(x.detach(), w.detach(), t, 5).grad_fn is None
    xf, wf = x.detach().requires_grad_(), w.detach()  # frozen head
    (0.5 * chunked_lm_loss(xf, wf, t, 5)).backward()
    assert wf.grad is None and torch.allclose(xf.grad, dx, rtol=1e-12)
    xf, wf = x.detach(), w.detach().requires_grad_()  # frozen input
    (0.5 * chunked_lm_loss(xf, wf, t, 5)).backward()
    assert xf.grad is None and torch.allclose(wf.grad, dw, rtol=1e-12)


def test_all_ignored_and_empty():
    x, w, t = inputs()
    x = x.detach().requires_grad_()
    loss = chunked_lm_loss(x, w, torch.full((N,), -100), 4)
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all()
    assert chunked_lm_loss(x[:0], w, t[:0]).item() == 0.0


def test_bf16_inputs_compute_in_fp32_and_return_bf16_grads():
    """bf16 x and W: the loss is the float32 reference on the same (bf16-valued) inputs, the
    gradients come back bf16, equal to the float32 reference's rounded once."""
    x, w, t = inputs(torch.float32)
    xb, wb = x.detach().bfloat16(), w.detach().bfloat16()
    loss, dx, dw = chunked(xb, wb, t, 6)
    want, rdx, rdw = reference(xb.float(), wb.float(), t)
    assert loss.dtype == torch.float32 and dx.dtype == dw.dtype == torch.bfloat16
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, rdx.bfloat16(), rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(dw, rdw.bfloat16(), rtol=1e-2, atol=1e-3)


def test_default_chunk_rows():
    """~128 MB of float32 logits per chunk, at least 256 rows, never more than N."""
    assert default_chunk_rows(10**6, 50257) == 128 * 2**20 // (4 * 50257) == 667
    assert default_chunk_rows(10**6, 256_000) == 256
    assert default_chunk_rows(100, 50257) == 100


def logits_path_loss(model, ids, targets):
    """The old training loss: full logits, then F.cross_entropy."""
    logits = model(ids, targets=None)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")


def assert_same_loss_and_grads(model, ids, targets):
    model.train()
    ref = logits_path_loss(model, ids, targets)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    loss = model(ids, targets=targets)
    loss.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("tie", [True, False])
def test_gpt_training_loss_and_every_grad_match_the_logits_path(tie):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=V, n_layer=2, n_head=2, d_model=16, tie_embeddings=tie))
    ids = torch.randint(0, V, (3, 11))
    targets = torch.randint(0, V, (3, 11))
    targets[0, :4] = -100
    assert (model.lm_head.weight is model.wte.weight) == tie
    assert_same_loss_and_grads(model, ids, targets)


def test_hf_training_loss_and_every_grad_match_the_logits_path():
    pytest.importorskip("transformers", reason="model.kind: hf needs transformers")
    from lengthwise.model.build import make_model

    torch.manual_seed(0)
    arch = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    model = make_model(ModelConfig(kind="hf", vocab_size=48, hf={"config": arch}))
    assert model._plain_head() is model.hf.lm_head  # the chunked path is taken
    ids = torch.randint(0, 48, (2, 9))
    targets = torch.randint(0, 48, (2, 9))
    targets[1, 5:] = -100
    assert_same_loss_and_grads(model, ids, targets)
