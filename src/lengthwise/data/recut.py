"""Re-cut one token stream into documents whose lengths follow web pretraining text, so the same
tokens can be batched as if they came from a web corpus (benchmarks/throughput.py `--docs web`).

Why: how much decomposition saves over concat_chunk depends on the document lengths (short
documents -> short buckets -> fewer attention FLOPs). The demo stores are technical manuals
(median ~700 tokens, most tokens in documents > 4k); web text is shorter.

The distribution, and where it comes from: document lengths in tokens are log-normal,
ln(length) ~ Normal(WEB_MU, WEB_SIGMA), median e^mu ~ 337 tokens, mean e^(mu + sigma^2 / 2)
~ 880 tokens. The two parameters were fitted to the only published per-length token counts of a
web pretraining corpus we found, by the Dataset Decomposition authors (Pouransari et al. 2024,
arXiv 2405.13226): the README of github.com/apple/ml-dataset-decomposition (commit 2c38656),
"DCLM-Baseline subset", tokens per bucket after their binary decomposition with buckets
2^8..2^13 (GPT-NeoX tokenizer) = `DCLM_BUCKET_TOKENS`. Their `scripts/make_dd_buckets.py`
decomposes each document (pieces < 256 tokens dropped; documents > 8192 cut at random sizes,
the `long_doc_rule: random` of lengthwise.data.decompose), so the counts are the decomposition
of the length distribution, not the distribution itself. Fit: least squares over the six
bucket token shares of `decompose(lengths, 8, 13, "random")` applied to 200,000 log-normal
lengths (Nelder-Mead); the fitted shares differ from the cited ones by at most 1.9 points
(10.8/18.2/22.5/19.1/15.7/13.7% cited). Documents shorter than 256 tokens leave no trace in the
cited counts, so the share of very short documents is the log-normal's extrapolation. Cross-check
(not fitted): the RefinedWeb public extract card (huggingface.co/datasets/tiiuae/falcon-refinedweb)
gives 968M documents and 500-650 G tokens, a mean of 520-670 tokens per document, the same order
as the fit's 880.
"""

from __future__ import annotations

import math

import numpy as np

WEB_MU, WEB_SIGMA = 5.82, 1.39  # ln(tokens per document); fitted as the docstring says
DCLM_BUCKET_TOKENS = {  # cited: tokens per DD bucket 2^k, DCLM-Baseline subset (see docstring)
    256: 3_732_930_560,
    512: 6_287_261_696,
    1024: 7_769_948_160,
    2048: 6_615_465_984,
    4096: 5_407_506_432,
    8192: 4_732_223_488,
}


def recut_offsets(
    n_tokens: int, seed: int, mu: float = WEB_MU, sigma: float = WEB_SIGMA
) -> np.ndarray:
    """Document boundaries for a stream of `n_tokens` tokens: int64 offsets, offsets[0] = 0,
    offsets[-1] = n_tokens, strictly increasing (every document >= 1 token, every token in
    exactly one document). Lengths are rounded log-normal draws (at least 1), in stream order;
    the last document ends at the stream's end (cut short there). Same seed, same offsets."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    rng = np.random.default_rng([seed, 0x7EC07])
    mean = math.exp(mu + sigma**2 / 2)
    parts, total = [], 0
    while total < n_tokens:
        k = int(1.1 * (n_tokens - total) / mean) + 16
        draw = np.maximum(1, np.rint(rng.lognormal(mu, sigma, k))).astype(np.int64)
        draw = np.minimum(draw, n_tokens)  # no document longer than the stream
        parts.append(draw)
        total += int(draw.sum())
    ends = np.cumsum(np.concatenate(parts))
    last = int(np.searchsorted(ends, n_tokens))  # first end at or past the stream's end
    ends = ends[: last + 1]
    ends[-1] = n_tokens
    return np.concatenate([[0], ends]).astype(np.int64)


def median_length(mu: float = WEB_MU, sigma: float = WEB_SIGMA) -> float:
    return math.exp(mu)


def mean_length(mu: float = WEB_MU, sigma: float = WEB_SIGMA) -> float:
    return math.exp(mu + sigma**2 / 2)


def token_share(edges: list[float], mu: float = WEB_MU, sigma: float = WEB_SIGMA) -> np.ndarray:
    """Share of all tokens that lie in documents with length in [edges[i], edges[i+1]): the
    token-weighted (size-biased) log-normal is log-normal(mu + sigma^2, sigma)."""
    cdf = [0.5 * (1 + math.erf((math.log(e) - mu - sigma**2) / (sigma * math.sqrt(2))))
           if e > 0 else 0.0 for e in edges]  # fmt: skip
    return np.diff(cdf)
