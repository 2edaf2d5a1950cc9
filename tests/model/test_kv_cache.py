"""KV cache: prefill + cached steps give the logits of one full forward, for every position kind;
left padding changes nothing for the real tokens; abacus counts digits across steps."""

from __future__ import annotations

import pytest
import torch

from lengthwise.config import ModelConfig
from lengthwise.model.gpt import GPT, KVCache
from lengthwise.model.positions import abacus_indices

V = 23
DIGIT_IDS = list(range(10))  # tokens 0-9 are digits (abacus); 0 is also the padding token here

# (id, ModelConfig overrides): every position kind, windows, randomized positions (eval mode:
# no randomization), both MLPs, with and without biases, tied and untied heads.
CASES = [
    ("learned", dict(position="learned")),
    ("sinusoidal", dict(position="sinusoidal")),
    ("rope", dict(position="rope")),
    ("nope", dict(position="nope")),
    ("alibi", dict(position="alibi")),
    ("fire", dict(position="fire")),
    ("relative_bias", dict(position="relative_bias", max_distance=5)),
    ("relative_bias_window", dict(position="relative_bias", max_distance=8, window=3)),
    ("abacus", dict(position="abacus")),
    ("abacus_offset", dict(position="abacus", abacus_offset=3)),
    ("rope_random_positions", dict(position="rope", random_positions_max=64)),
    ("learned_random_positions", dict(position="learned", random_positions_max=64)),
    ("rope_swiglu_bias", dict(position="rope", mlp="swiglu", bias=True)),
    ("alibi_gelu_bias_untied", dict(position="alibi", bias=True, tie_embeddings=False)),
    ("fire_swiglu", dict(position="fire", mlp="swiglu")),
    ("learned_gelu_bias", dict(position="learned", mlp="gelu", bias=True)),
]
IDS = [c[0] for c in CASES]


def make(**kw) -> GPT:
    base = dict(vocab_size=V, n_layer=2, n_head=4, d_model=32, max_position=64, init_std=0.2)
    if kw.get("position") == "abacus":
        base["digit_token_ids"] = DIGIT_IDS
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**base, **kw}))
    with torch.no_grad():  # zero-initialized relative biases would make the tests vacuous
        for name, p in model.named_parameters():
            if "relative" in name:
                p.normal_()
    return model.eval()


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    """Random tokens, about half digits, so abacus runs cross the prefill/step boundaries."""
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_prefill_and_steps_equal_full_forward(name: str, kw: dict):
    model = make(**kw)
    ids = tokens(3, 14)
    with torch.no_grad():
        full = model(ids)
        cache = KVCache()  # capacity 0: the buffers grow while decoding
        chunks = [model(ids[:, :5], cache=cache)]
        chunks += [model(ids[:, t : t + 1], cache=cache) for t in range(5, 10)]
        chunks.append(model(ids[:, 10:14], cache=cache))  # a multi-token chunk after the cache
    assert cache.length == 14
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=0)
    assert (full.std(dim=-1) > 0.5).all()  # init_std 0.2: logits far from uniform


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_left_padding_changes_nothing(name: str, kw: dict):
    """Rows of a left-padded batch (positions from 0 at the first real token, padding masked as
    keys) get the logits they get alone, in the prefill and in the cached steps after it."""
    model = make(**kw)
    a, b = tokens(1, 9, seed=1), tokens(1, 4, seed=2)
    b[0, :2] = torch.tensor([7, 8])  # digits right after digit padding (pad id 0)
    steps = tokens(2, 3, seed=3)
    pad = 5
    ids = torch.cat([a, torch.cat([torch.zeros(1, pad, dtype=torch.long), b], 1)])
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :pad] = False
    pos = torch.stack([torch.arange(9), (torch.arange(9) - pad).clamp(min=0)])
    with torch.no_grad():
        cache = KVCache(capacity=12)
        pre = model(ids, pos, cache=cache, token_mask=mask)
        nocache = model(ids, pos, token_mask=mask)  # the same mask without a cache
        step_logits = [model(steps[:, t : t + 1], cache=cache) for t in range(3)]
        alone_a = model(torch.cat([a, steps[:1]], 1))
        alone_b = model(torch.cat([b, steps[1:]], 1))
    assert torch.isfinite(pre).all()
    torch.testing.assert_close(nocache, pre, atol=1e-6, rtol=0)
    got = torch.cat([pre, *step_logits], dim=1)  # (2, 12, V)
    torch.testing.assert_close(got[0], alone_a[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1, pad:], alone_b[0], atol=1e-5, rtol=0)


def test_default_positions_continue_the_cache():
    cache = KVCache()
    model = make(position="learned")
    ids = tokens(2, 6)
    pos = torch.tensor([[0, 1, 2, 3], [0, 0, 1, 2]])
    with torch.no_grad():
        model(ids[:, :4], pos, cache=cache)
    assert cache.next_positions(2, 2, ids.device).tolist() == [[4, 5], [3, 4]]


def test_abacus_indices_continue_across_steps():
    digits = torch.tensor(DIGIT_IDS)
    # "12" cached (last index 2), then "34+5": 3, 4, 0, 1; after a non-digit (last 0): restart
    ids = torch.tensor([[3, 4, 12, 5], [3, 4, 12, 5]])
    last = torch.tensor([2, 0])
    assert abacus_indices(ids, digits, last=last).tolist() == [[3, 4, 0, 1], [1, 2, 0, 1]]
    valid = torch.tensor([[False, True, True, True]])  # padding is never a digit
    assert abacus_indices(ids[:1], digits, valid=valid).tolist() == [[0, 1, 0, 1]]


def test_cache_refuses_training_mode_and_doc_ids():
    model = make(position="rope")
    ids = tokens(1, 4)
    with pytest.raises(ValueError, match="inference"):
        model.train()(ids, cache=KVCache())
    with pytest.raises(ValueError, match="doc_ids"):
        model.eval()(ids, doc_ids=torch.zeros(1, 4, dtype=torch.long), cache=KVCache())


def test_learned_positions_past_the_table_raise_with_a_cache():
    model = make(position="learned", max_position=8)
    cache = KVCache()
    with torch.no_grad():
        model(tokens(1, 8), cache=cache)
        with pytest.raises(ValueError, match="max_position"):
            model(tokens(1, 1), cache=cache)


def test_logits_to_keep():
    model = make(position="alibi")
    ids = tokens(2, 7)
    with torch.no_grad():
        full = model(ids)
        last = model(ids, cache=KVCache(), logits_to_keep=1)
    assert last.shape == (2, 1, V)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-5, rtol=0)
