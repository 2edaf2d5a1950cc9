"""recut_offsets: the same tokens re-cut into web-like documents (lengthwise.data.recut)."""

import numpy as np
import pytest

from lengthwise.data.decompose import decompose
from lengthwise.data.recut import (
    DCLM_BUCKET_TOKENS,
    mean_length,
    median_length,
    recut_offsets,
    token_share,
)

N = 20_000_000  # ~23k documents: enough for the median and the token shares to settle


@pytest.fixture(scope="module")
def lengths():
    return np.diff(recut_offsets(N, seed=3))


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 123_457])
def test_every_token_kept_once(n):
    off = recut_offsets(n, seed=0)
    assert off.dtype == np.int64 and off[0] == 0 and off[-1] == n
    assert (np.diff(off) >= 1).all()  # strictly increasing: no empty document


def test_seeded():
    a, b, c = (recut_offsets(500_000, seed=s) for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_median_and_mean(lengths):
    assert abs(np.median(lengths) / median_length() - 1) < 0.05
    body = lengths[:-1]  # the last document is cut at the stream's end
    assert abs(body.mean() / mean_length() - 1) < 0.08  # heavy tail: a looser bound
    assert 300 < median_length() < 380 and 800 < mean_length() < 960


def test_token_share_per_bucket(lengths):
    edges = [0, 256, 512, 1024, 2048, 4096, 8192, 16384, np.inf]
    counts = np.histogram(lengths, bins=edges, weights=lengths)[0] / lengths.sum()
    want = token_share(edges)
    assert abs(want.sum() - 1) < 1e-9
    assert np.abs(counts - want).max() < 0.02, (counts.round(3), want.round(3))


def test_fit_reproduces_the_cited_bucket_counts():
    """The parameters' source: decomposing log-normal lengths as the DD reference script does
    gives the cited DCLM-Baseline tokens per bucket within 2.5 points each."""
    z = np.random.default_rng(0).standard_normal(100_000)
    docs = np.maximum(1, np.rint(median_length() * np.exp(1.39 * z))).astype(np.int64)
    pieces = decompose(docs, 8, 13, "random", seed=1)
    got = np.bincount(pieces.log2 - 8, weights=pieces.length, minlength=6)
    cited = np.array(list(DCLM_BUCKET_TOKENS.values()), dtype=float)
    assert np.abs(got / got.sum() - cited / cited.sum()).max() < 0.025


def test_bad_input():
    with pytest.raises(ValueError, match="n_tokens"):
        recut_offsets(0, seed=0)
