"""GPT: packed rows equal documents alone (every position kind), loss, positions, groups."""

from __future__ import annotations

import math

import pytest
import torch

import lengthwise.model.attention as attention_mod
from lengthwise.config import ModelConfig
from lengthwise.model.gpt import GPT, ff_width

V = 23
DIGIT_IDS = list(range(10))  # tokens 0-9 are digits (abacus)
KINDS = ["learned", "sinusoidal", "rope", "nope", "alibi", "fire", "relative_bias", "abacus"]


def make(position: str = "rope", **kw) -> GPT:
    base = dict(vocab_size=V, n_layer=2, n_head=2, d_model=16, max_position=64)
    if position == "abacus":
        base["digit_token_ids"] = DIGIT_IDS
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**base, "position": position, **kw}))
    with torch.no_grad():  # zero-initialized relative biases would make the tests vacuous
        for name, p in model.named_parameters():
            if "relative" in name:
                p.normal_()
    return model.eval()


def arange_rows(*lengths: int) -> torch.Tensor:
    return torch.cat([torch.arange(n) for n in lengths])[None]


@pytest.mark.parametrize("backend", ["per_doc", "dense"])
@pytest.mark.parametrize("kind", KINDS)
def test_packed_row_equals_documents_alone(kind: str, backend: str, monkeypatch):
    monkeypatch.setattr(attention_mod, "choose_cpu_backend", lambda *args: backend)
    model = make(kind, max_distance=3, window=4 if kind == "relative_bias" else 0)
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, V, (1, 7), generator=g)
    b = torch.randint(0, V, (1, 9), generator=g)
    a[0, -3:] = torch.tensor([1, 2, 3])  # A ends in digits and B starts with digits: the abacus
    b[0, :2] = torch.tensor([4, 5])  # index must restart at the document boundary
    pad = torch.zeros(1, 3, dtype=torch.long)
    ids = torch.cat([torch.cat([a, b, pad], 1), torch.cat([b, a, pad], 1)])  # (2, 19)
    pos = torch.cat([arange_rows(7, 9, 3), arange_rows(9, 7, 3)])
    doc = torch.tensor([[0] * 7 + [1] * 9 + [-1] * 3, [0] * 9 + [1] * 7 + [-1] * 3])
    with torch.no_grad():
        packed = model(ids, pos, doc)
        alone_a, alone_b = model(a), model(b)
    for row, (x, y) in enumerate([(alone_a, alone_b), (alone_b, alone_a)]):
        n = x.shape[1]
        torch.testing.assert_close(packed[row, :n], x[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(packed[row, n:16], y[0], atol=1e-5, rtol=0)
    assert torch.isfinite(packed).all()


@pytest.mark.parametrize("kind", KINDS)
def test_shift_of_positions(kind: str):
    """Absolute encodings see a shift of every position id; relative ones do not (FIRE only
    while positions stay below its threshold L, 512 at initialization)."""
    model = make(kind)
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(12).expand(2, 12)
    with torch.no_grad():
        base, shifted = model(ids, pos), model(ids, pos + 17)
    if kind in ("learned", "sinusoidal"):
        assert (base - shifted).abs().max() > 1e-3
    else:  # abacus and nope read no position ids at all
        torch.testing.assert_close(shifted, base, atol=1e-5, rtol=0)


def test_loss_is_summed_cross_entropy_ignoring_minus_100():
    model = make("rope")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (3, 10), generator=g)
    targets = torch.randint(0, V, (3, 10), generator=g)
    targets[0, :4] = -100
    targets[2] = -100  # a row with no targets adds 0
    with torch.no_grad():
        logits = model(ids)
        loss = model(ids, targets=targets)
    logp = torch.log_softmax(logits.double(), dim=-1)
    expected = -sum(
        logp[b, t, targets[b, t]] for b in range(3) for t in range(10) if targets[b, t] != -100
    )
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    with torch.no_grad():
        assert float(model(ids[2:], targets=targets[2:])) == 0.0


def test_position_ids_default_to_arange():
    model = make("learned")
    ids = torch.randint(0, V, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model(ids, torch.arange(8).expand(2, 8)))


def test_fp32_logits_and_loss_under_autocast():
    model = make("rope").train()
    ids = torch.randint(0, V, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(ids).dtype == torch.float32
        loss = model(ids, targets=ids)
    assert loss.dtype == torch.float32
    loss.backward()


def test_window_hides_far_tokens_in_one_layer():
    """relative_bias with window W, one layer: the logits at t do not depend on tokens at
    distance >= W (in a deeper model the receptive field would grow by W per layer)."""
    model = make("relative_bias", n_layer=1, window=3, max_distance=8)
    ids = torch.randint(0, V, (1, 10), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 2] = (ids[0, 2] + 1) % V
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[0, 5:], b[0, 5:])  # distance 9 - 2 ... 5 - 2 = 3 >= W
    assert (a[0, 2:5] - b[0, 2:5]).abs().max() > 1e-4


def test_dropout_only_in_training():
    model = make("rope", attn_dropout=0.3, resid_dropout=0.3, emb_dropout=0.3)
    ids = torch.randint(0, V, (2, 8))
    doc = torch.tensor([[0] * 4 + [1] * 4] * 2)
    with torch.no_grad():
        assert torch.equal(model(ids, doc_ids=doc), model(ids, doc_ids=doc))
        model.train()
        assert not torch.equal(model(ids, doc_ids=doc), model(ids, doc_ids=doc))


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
@pytest.mark.parametrize("tie", [True, False])
def test_mlp_kinds_and_tied_weights(mlp: str, tie: bool):
    model = make("rope", mlp=mlp, tie_embeddings=tie, bias=True, d_model=48).train()
    ids = torch.randint(0, V, (2, 8))
    model(ids, targets=ids).backward()
    shared = model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    assert shared == tie
    assert model.lm_head.weight.grad is not None
    d_ff = model.blocks[0].mlp.down.in_features
    assert d_ff == (128 if mlp == "swiglu" else 192)  # 8/3 * 48 rounded up to 64; 4 * 48


def test_ff_width():
    assert ff_width(ModelConfig(vocab_size=V, d_model=256, mlp="swiglu")) == 704  # 682.7 -> 704
    assert ff_width(ModelConfig(vocab_size=V, d_model=768, mlp="swiglu")) == 2048
    assert ff_width(ModelConfig(vocab_size=V, d_model=256)) == 1024
    assert ff_width(ModelConfig(vocab_size=V, d_model=256, d_ff=100)) == 100


def test_init_scales_residual_projections():
    model = make("rope", n_layer=8, d_model=256, n_head=4)
    std = model.blocks[0].attn.proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("kind", ["learned", "fire", "relative_bias", "abacus"])
@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("decay_embeddings", [True, False])
def test_param_groups(kind: str, tie: bool, decay_embeddings: bool):
    model = make(kind, tie_embeddings=tie, bias=True)
    groups = model.param_groups(0.1, decay_embeddings)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # nothing twice, the tied matrix included
    assert set(ids) == {id(p) for p in model.parameters()}  # nothing missing
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in groups[0]["params"]}
    for name in names.values():
        is_matrix = name.startswith("blocks.") and name.endswith(".weight") and "norm" not in name
        expected = is_matrix or (name == "lm_head.weight" and not tie)
        expected |= name == "wte.weight" and decay_embeddings
        assert (name in decayed) == expected, name
    assert not any(n.startswith("positions.") for n in decayed)


def test_num_params_and_flops():
    model = make("learned", tie_embeddings=False)
    total = sum(p.numel() for p in model.parameters())
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - V * 16 - 64 * 16  # token and position tables
    tied = make("learned")
    assert tied.num_params() == sum(p.numel() for p in tied.parameters()) - 64 * 16
    N = model.num_params()
    assert model.flops_per_token(32) == 6 * N + 12 * 2 * 16 * 32 / 2


def test_vocab_size_required():
    with pytest.raises(ValueError, match="vocab_size"):
        GPT(ModelConfig())


def test_packed_training_step_matches_documents_alone():
    """Gradients too: the summed loss of a packed row equals the sum over its documents."""
    model = make("rope")
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, V, (1, 6), generator=g), torch.randint(0, V, (1, 5), generator=g)
    ids = torch.cat([a, b], 1)
    tgt = torch.cat([a[:, 1:], torch.tensor([[-100]]), b[:, 1:], torch.tensor([[-100]])], 1)
    doc = torch.tensor([[0] * 6 + [1] * 5])
    packed = model(ids, arange_rows(6, 5), doc, tgt)
    packed.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    alone = model(a, targets=tgt[:, :6]) + model(b, targets=tgt[:, 6:])
    alone.backward()
    assert packed.item() == pytest.approx(alone.item(), rel=1e-5)
    for g1, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g1, p.grad, atol=1e-5, rtol=1e-4)
