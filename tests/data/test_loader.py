import json

import numpy as np
import pytest
import torch

from lengthwise.config import BatchingConfig
from lengthwise.data.loader import BatchLoader
from lengthwise.data.strategies import build_strategy

EOS, PAD = 2, 0
ALL = ("pad", "concat_chunk", "concat_chunk_docmask", "best_fit", "decomposition")


def make_store(lengths):
    """Document i: lengths[i] tokens, distinct ids (3 + store position), the last one EOS."""
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    tokens = np.arange(offsets[-1]) + 3
    tokens[offsets[1:] - 1] = EOS
    return tokens.astype(np.uint16), offsets


TOKENS, OFFSETS = make_store(np.random.default_rng(1).integers(2, 40, 40))


def loader(name, tokens=TOKENS, offsets=OFFSETS, **kw):
    base = dict(strategy=name, tokens_per_step=64, max_len=16, min_bucket=4, seed=5)
    if name.startswith("concat"):
        base.update(max_len=32, curriculum=dict(name="seq_len_warmup", min_len=8))
    cfg = BatchingConfig(**{**base, **kw})
    return BatchLoader(build_strategy(cfg, tokens, offsets, PAD))


def same(a, b):
    return all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
        for x, y in zip(
            (a.input_ids, a.targets, a.position_ids, a.doc_ids, a.n_target_tokens),
            (b.input_ids, b.targets, b.position_ids, b.doc_ids, b.n_target_tokens),
            strict=True,
        )
    )


@pytest.mark.parametrize("name", ALL)
def test_resume_reproduces_the_uninterrupted_run_across_an_epoch_boundary(name):
    ref = loader(name)
    n0 = ref.strategy.steps_in_epoch(0)
    expected = [next(ref) for _ in range(n0 + 3)]
    assert (ref.epoch, ref.step_in_epoch, ref.global_step) == (1, 3, n0 + 3)
    for k in (n0 - 1, n0):  # stop inside epoch 0, and right after its last step
        first = loader(name)
        for _ in range(k):
            next(first)
        state = json.loads(json.dumps(first.state_dict()))  # JSON-able, as checkpoints store it
        assert state["global_step"] == k and state["step_in_epoch"] == k
        resumed = loader(name)
        resumed.load_state_dict(state)
        for want in expected[k:]:
            assert same(next(resumed), want)
        assert resumed.global_step == n0 + 3


def test_epochs_follow_each_other_and_differ():
    ld = loader("best_fit")
    n0 = ld.strategy.steps_in_epoch(0)
    batches = [b for _, b in zip(range(2 * n0), ld, strict=False)]
    assert (ld.epoch, ld.step_in_epoch) == (1, n0)
    assert same(batches[n0], ld.strategy.batch(1, 0))
    assert not all(same(a, b) for a, b in zip(batches[:n0], batches[n0:], strict=True))


def test_fingerprint_mismatch_names_what_changed():
    state = loader("pad").state_dict()
    with pytest.raises(ValueError, match=r"batching\.seed: 5 -> 6"):
        loader("pad", seed=6).load_state_dict(state)
    with pytest.raises(ValueError, match="strategy: 'pad' -> 'best_fit'"):
        loader("best_fit").load_state_dict(state)
    tokens, offsets = make_store([5] * 30)
    with pytest.raises(ValueError, match="n_docs: 40 -> 30"):
        loader("pad", tokens, offsets).load_state_dict(state)
    cfg = loader("pad").strategy.cfg
    other_rank = BatchLoader(build_strategy(cfg, TOKENS, OFFSETS, PAD, rank=1, world_size=2))
    with pytest.raises(ValueError, match="rank: 0 -> 1.*world_size: 1 -> 2"):
        other_rank.load_state_dict(state)


def test_too_small_store_is_a_clear_error():
    from lengthwise.errors import UserError

    tokens, offsets = make_store([3, 3])
    with pytest.raises(UserError, match="do not fill one step"):
        next(loader("pad", tokens, offsets))
