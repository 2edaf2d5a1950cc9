"""Positional encodings: hand-checked indices, randomized positions, biases."""

from __future__ import annotations

import pytest
import torch

from lengthwise.config import ModelConfig
from lengthwise.model.positions import (
    Positions,
    abacus_indices,
    alibi_slopes,
    apply_rope,
    randomize_positions,
    rope_cos_sin,
)

CHARS = "0123456789+=abc"
DIGIT_IDS = [CHARS.index(c) for c in "0123456789"]


def encode(text: str) -> torch.Tensor:
    return torch.tensor([[CHARS.index(c) for c in text]])


def cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=len(CHARS), n_layer=1, n_head=4, d_model=32, max_position=64)
    return ModelConfig(**{**base, **kw})


def test_abacus_indices_by_hand():
    ids = encode("12+345=6")
    assert abacus_indices(ids, torch.tensor(DIGIT_IDS)).tolist() == [[1, 2, 0, 1, 2, 3, 0, 1]]


def test_abacus_runs_restart_at_document_boundaries():
    ids = encode("a12345")
    doc = torch.tensor([[0, 0, 0, 1, 1, 1]])  # "a12" | "345"
    got = abacus_indices(ids, torch.tensor(DIGIT_IDS), doc).tolist()
    assert got == [[0, 1, 2, 1, 2, 3]]
    assert abacus_indices(ids, torch.tensor(DIGIT_IDS)).tolist() == [[0, 1, 2, 3, 4, 5]]


def test_abacus_offset_only_in_training():
    pos = Positions(cfg(position="abacus", digit_token_ids=DIGIT_IDS, abacus_offset=10))
    ids = encode("12+345=6").expand(64, -1)
    plain = torch.tensor([1, 2, 0, 1, 2, 3, 0, 1])
    pos.eval()
    assert (pos.abacus_ids(ids, None) == plain).all()
    pos.train()
    torch.manual_seed(0)
    got = pos.abacus_ids(ids, None)  # (64, 8)
    offset = got[:, :1] - 1  # first digit had index 1
    assert ((offset >= 0) & (offset <= 10)).all()
    assert len(offset.unique()) > 1  # drawn per row
    assert (got == torch.where(plain > 0, plain + offset, plain)).all()


def test_abacus_too_many_digits_is_a_clear_error():
    pos = Positions(cfg(position="abacus", digit_token_ids=DIGIT_IDS, abacus_max_digits=3))
    with pytest.raises(ValueError, match="longer than abacus_max_digits"):
        pos(encode("1234"), torch.arange(4)[None], None)


def test_randomized_positions_eval_is_identity():
    pos = Positions(cfg(position="rope", random_positions_max=1000)).eval()
    given = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    assert torch.equal(pos(given, given, None).position_ids, given)


def test_randomized_positions_in_training():
    R = 50
    given = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 4, 5, 6, 7]]).repeat(8, 1)
    pos = Positions(cfg(position="rope", random_positions_max=R)).train()
    torch.manual_seed(0)
    got = pos(given, given, None).position_ids
    assert ((got >= 0) & (got < R)).all()
    doc_a, doc_b = got[0::2, :5], got[0::2, 5:]
    assert (doc_a.diff(dim=1) > 0).all() and (doc_b.diff(dim=1) > 0).all()
    assert torch.equal(doc_b, doc_a[:, :3])  # restarting documents map to the same prefix
    assert (got[1::2].diff(dim=1) > 0).all()
    assert len({tuple(r) for r in got.tolist()}) > 2  # sampled per row


def test_randomized_positions_need_room():
    with pytest.raises(ValueError, match="must exceed the largest position id"):
        randomize_positions(torch.arange(10)[None], 5)
    with pytest.raises(ValueError, match="max_position >= 100"):
        Positions(cfg(position="learned", random_positions_max=100))
    with pytest.raises(ValueError, match="no effect"):
        Positions(cfg(position="nope", random_positions_max=100))


def test_learned_positions_out_of_range_is_a_clear_error():
    pos = Positions(cfg(position="learned"))
    with pytest.raises(ValueError, match="max_position"):
        pos(torch.zeros(1, 3, dtype=torch.long), torch.tensor([[0, 1, 64]]), None)


def test_window_only_with_relative_bias():
    with pytest.raises(ValueError, match="window"):
        Positions(cfg(position="rope", window=4))


def test_rope_rotation_is_relative():
    """<rope(q, i), rope(k, j)> depends only on i - j."""
    D = 8
    inv_freq = 10000.0 ** (-torch.arange(0, D, 2).float() / D)
    q, k = torch.randn(1, 1, 1, D), torch.randn(1, 1, 1, D)

    def score(i: int, j: int) -> float:
        cq, sq = rope_cos_sin(torch.tensor([[i]]), inv_freq)
        ck, sk = rope_cos_sin(torch.tensor([[j]]), inv_freq)
        return float((apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum())

    assert score(7, 3) == pytest.approx(score(104, 100), abs=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-4)


def test_alibi_slopes():
    assert alibi_slopes(8).tolist() == pytest.approx([2.0 ** -(i + 1) for i in range(8)])
    six = alibi_slopes(6).tolist()  # 4 of the power-of-two set + 2 from the set of 8
    assert six == pytest.approx([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])


@pytest.mark.parametrize("kind", ["alibi", "fire", "relative_bias"])
def test_biases_shape_and_shift_invariance(kind: str):
    pos = Positions(cfg(position=kind, max_distance=4)).eval()
    if kind == "relative_bias":
        torch.nn.init.normal_(pos.relative.table)
    ids = torch.zeros(2, 9, dtype=torch.long)
    p = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 0, 1, 2, 3, 4, 5]])
    bias = pos(ids, p, None).bias
    assert bias is not None and bias.shape == (2, 4, 9, 9)
    torch.testing.assert_close(pos(ids, p + 13, None).bias, bias)


def test_relative_bias_clips_distances():
    pos = Positions(cfg(position="relative_bias", max_distance=2)).eval()
    torch.nn.init.normal_(pos.relative.table)
    p = torch.arange(8)[None]
    bias = pos(torch.zeros(1, 8, dtype=torch.long), p, None).bias[0, 0]  # (T, T)
    assert bias[7, 0] == bias[7, 5] == pos.relative.table[0, 4]  # distances 7 and 2 -> +2
    assert bias[7, 6] == pos.relative.table[0, 3]


def test_fire_pair_table_equals_direct_evaluation():
    """FIRE evaluates its MLP once per pair of distinct position ids; same numbers as per pair
    of tokens."""
    pos = Positions(cfg(position="fire")).eval()
    p = torch.tensor([[0, 1, 2, 3, 0, 1], [5, 6, 7, 8, 9, 10]])
    fire = pos.fire
    direct = fire._bias(p[:, :, None].float(), p[:, None, :].float()).permute(0, 3, 1, 2)
    torch.testing.assert_close(fire(p), direct)
