"""Term frequency vs accuracy (Razeghi et al. 2022, "Impact of Pretraining Term Frequencies on
Few-Shot Reasoning", arXiv 2202.07206).

If a model answers items whose terms (operands, words) are frequent in its training data much
better than items with rare terms, part of its accuracy is memorization rather than a general
algorithm. This module counts terms in a stream of training texts, turns the counts into one
frequency per item, and measures the association with per-item correctness:

- :func:`count_terms` streams texts once (never holding them all) and counts the given terms.
- :func:`item_frequency` reduces each item's term counts to one number (min by default: an item
  is only as familiar as its rarest term).
- :func:`correlations`: Pearson r and Spearman rho (average ranks for ties), each with a
  percentile bootstrap CI over items, in plain numpy.
- :func:`decile_gap`: accuracy of the most frequent 10% of items minus the least frequent 10%
  (Razeghi et al.'s headline "performance gap" between top and bottom frequency deciles).
- :func:`memorization_report` / :func:`format_memorization`: all of it as a JSON-able dict and a
  text summary.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

MODES = ("numbers", "ngrams", "exact")
REDUCE = ("min", "mean", "sum")

_NUMBER = re.compile(r"[0-9]+")  # maximal ASCII digit runs
_WORD = re.compile(r"\w+")  # runs between whitespace/punctuation
_BOOT_CHUNK_ELEMS = 2_000_000  # resampled values held at once during the bootstrap


# ---------------------------------------------------------------------- counting


def _tokens(text: str, mode: str) -> list[str]:
    return (_NUMBER if mode == "numbers" else _WORD).findall(text)


def count_terms(
    texts: Iterable[str], terms: set[str], mode: str = "numbers", n: int = 1
) -> Counter:
    """How often each of ``terms`` occurs in ``texts`` (streamed once, one text at a time).

    - ``"numbers"``: texts are split into maximal ASCII digit runs, so "123" counts in "a 123+7"
      and "x123y" but not inside "41234"; "3.14" holds "3" and "14"; "007" is not "7". With
      ``n > 1`` a term is ``n`` consecutive numbers of one text joined by single spaces
      ("12 34" counts in "12+34").
    - ``"ngrams"``: texts are split into word tokens (``\\w+`` runs, so whitespace and punctuation
      separate words; case-sensitive) and every run of ``n`` consecutive tokens is one n-gram.
      Terms are tokenized the same way, so "new, york" and "new york" are one 2-gram term.
    - ``"exact"``: non-overlapping substring occurrences (``str.count``), no tokenization; ``n``
      must be 1. Costs one scan per term per text.

    N-grams never cross text boundaries. Every term is a key of the result (0 when absent).
    In the token modes, a term that is not exactly ``n`` tokens raises ``ValueError``.
    """
    if mode not in MODES:
        raise ValueError(f"count_terms: mode must be one of {MODES}, got {mode!r}")
    if isinstance(texts, str):
        raise TypeError("count_terms: texts must be an iterable of strings, not one string")
    if n < 1:
        raise ValueError(f"count_terms: n must be >= 1, got {n}")
    terms = set(terms)
    counts: Counter = Counter(dict.fromkeys(terms, 0))
    if not terms:
        return counts
    if mode == "exact":
        if n != 1:
            raise ValueError("count_terms: mode 'exact' matches whole strings; n must be 1")
        if "" in terms:
            raise ValueError("count_terms: the empty string is not a term")
        ordered = sorted(terms)
        for text in texts:
            for t in ordered:
                counts[t] += text.count(t)
        return counts

    by_key: dict[str, list[str]] = {}
    for t in terms:
        toks = _tokens(t, mode)
        if len(toks) != n:
            raise ValueError(
                f"count_terms: term {t!r} is {len(toks)} {mode} token(s) {toks}, expected n={n}"
            )
        by_key.setdefault(" ".join(toks), []).append(t)
    for text in texts:
        toks = _tokens(text, mode)
        grams = toks if n == 1 else (" ".join(toks[i : i + n]) for i in range(len(toks) - n + 1))
        for key, c in Counter(grams).items():
            for t in by_key.get(key, ()):
                counts[t] += c
    return counts


def item_frequency(
    item_terms: Sequence[tuple[str, ...] | str],
    counts: Mapping[str, int],
    reduce: str = "min",
) -> np.ndarray:
    """One frequency per item: ``reduce`` ("min", "mean" or "sum") over the counts of its terms.

    A term missing from ``counts`` counts 0; a plain string is one term; an item with no terms
    gets NaN (:func:`memorization_report` drops such items and says how many)."""
    if reduce not in REDUCE:
        raise ValueError(f"item_frequency: reduce must be one of {REDUCE}, got {reduce!r}")
    fn = {"min": min, "sum": sum, "mean": lambda v: sum(v) / len(v)}[reduce]
    out = np.empty(len(item_terms), dtype=np.float64)
    for i, ts in enumerate(item_terms):
        ts = (ts,) if isinstance(ts, str) else tuple(ts)
        out[i] = fn([counts.get(t, 0) for t in ts]) if ts else np.nan
    return out


# ---------------------------------------------------------------------- statistics


def _pair(freq: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(freq, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"need two 1-D arrays of one length, got shapes {x.shape}, {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("frequencies and correctness must be finite (drop NaN items first)")
    return x, y


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson r of 2-D arrays; NaN for rows where either side is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.clip(r, -1.0, 1.0)


def _avg_ranks(codes: np.ndarray, k: int) -> np.ndarray:
    """Average ranks (1-based, ties share the mean rank) of each row of ``codes``, where codes are
    dense ranks 0..k-1 of the original values (so equal values have equal codes)."""
    rows, n = codes.shape
    flat = (np.arange(rows)[:, None] * k + codes).ravel()
    cnt = np.bincount(flat, minlength=rows * k).reshape(rows, k).astype(np.float64)
    below = np.cumsum(cnt, axis=1) - cnt
    return np.take_along_axis(below + (cnt + 1.0) / 2.0, codes, axis=1)


def rankdata(x: Any) -> np.ndarray:
    """Average ranks with ties (as ``scipy.stats.rankdata(method="average")``)."""
    x = np.asarray(x, dtype=np.float64)
    _, codes = np.unique(x, return_inverse=True)
    return _avg_ranks(codes.reshape(1, -1), int(codes.max()) + 1 if len(x) else 0)[0]


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) (continued fraction, modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(log_front + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(10_000):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -((a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-15:
            break
    return front * (f - 1.0)


def corr_pvalue(r: float | None, n: int) -> float | None:
    """Two-sided p-value of a correlation under the null of independence (t test with n-2
    degrees of freedom; for Pearson this equals scipy's exact beta form)."""
    if r is None or n < 3:
        return None
    if abs(r) >= 1.0:
        return 0.0
    return _betainc((n - 2) / 2.0, 0.5, 1.0 - r * r)


def _opt(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def correlations(
    freq: Any, correct: Any, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> dict[str, Any]:
    """Pearson r and Spearman rho (Pearson of average ranks, ties averaged) between ``freq`` and
    ``correct`` (0/1 or per-item accuracies), each with a percentile bootstrap CI.

    The bootstrap resamples items with replacement (the same resamples for both statistics,
    from ``np.random.default_rng(seed)``); a resample where either side is constant has no
    correlation and is skipped, and the number skipped is reported as ``degenerate_resamples``.
    A statistic that is undefined on the full data (a constant side, n < 2) is ``None``, as are
    p-values for n < 3 and a CI with no usable resample.
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"correlations: ci must be in (0, 1), got {ci}")
    if n_boot < 0:
        raise ValueError(f"correlations: n_boot must be >= 0, got {n_boot}")
    x, y = _pair(freq, correct)
    n = len(x)
    _, xc = np.unique(x, return_inverse=True)
    _, yc = np.unique(y, return_inverse=True)
    kx, ky = (int(xc.max()) + 1, int(yc.max()) + 1) if n else (0, 0)
    r = rho = float("nan")
    if n >= 2:
        r = float(_pearson_rows(x[None], y[None])[0])
        rho = float(
            _pearson_rows(_avg_ranks(xc.reshape(1, -1), kx), _avg_ranks(yc.reshape(1, -1), ky))[0]
        )

    boots: dict[str, list[np.ndarray]] = {"pearson": [], "spearman": []}
    if n >= 2 and n_boot > 0:
        rng = np.random.default_rng(seed)
        chunk = max(1, _BOOT_CHUNK_ELEMS // n)
        done = 0
        while done < n_boot:
            b = min(chunk, n_boot - done)
            idx = rng.integers(0, n, size=(b, n))
            xs, ys = x[idx], y[idx]
            boots["pearson"].append(_pearson_rows(xs, ys))
            boots["spearman"].append(
                _pearson_rows(_avg_ranks(xc[idx], kx), _avg_ranks(yc[idx], ky))
            )
            done += b
    alpha = (1.0 - ci) / 2.0
    out: dict[str, Any] = {"n": n}
    for name, key, point in (("pearson", "r", r), ("spearman", "rho", rho)):
        vals = np.concatenate(boots[name]) if boots[name] else np.empty(0)
        ok = vals[np.isfinite(vals)]
        interval = None
        if len(ok):
            lo, hi = np.quantile(ok, [alpha, 1.0 - alpha])
            interval = [float(lo), float(hi)]
        out[name] = {
            key: _opt(point),
            "p": corr_pvalue(_opt(point), n),
            "ci": interval,
            "degenerate_resamples": int(len(vals) - len(ok)),
        }
    out["bootstrap"] = {"n_boot": int(n_boot), "seed": seed, "ci": ci, "method": "percentile"}
    return out


def _group(x: np.ndarray, y: np.ndarray, sel: np.ndarray) -> dict[str, Any]:
    return {
        "n": int(len(sel)),
        "acc": float(y[sel].mean()),
        "freq_min": float(x[sel].min()),
        "freq_max": float(x[sel].max()),
    }


def decile_gap(freq: Any, correct: Any, frac: float = 0.1) -> dict[str, Any]:
    """Mean correctness of the ``frac`` most frequent items minus the ``frac`` least frequent.

    Each group holds exactly ``k = max(1, floor(frac * n))`` items. Items are ranked by
    frequency with ties broken by item order (earlier items first), for both groups: the bottom
    group is the first k by (freq, index), the top group the first k by (-freq, index). So the
    result does not depend on a sort's tie handling, and ``ties_at_cut`` reports, per group, how
    many items with the cut frequency were left out (0 means the cut was clean).
    """
    x, y = _pair(freq, correct)
    n = len(x)
    if n < 2:
        raise ValueError(f"decile_gap: need at least 2 items, got {n}")
    if not 0.0 < frac <= 0.5:
        raise ValueError(f"decile_gap: frac must be in (0, 0.5], got {frac}")
    k = max(1, math.floor(frac * n + 1e-9))
    index = np.arange(n)
    bottom = np.lexsort((index, x))[:k]
    top = np.lexsort((index, -x))[:k]
    lo, hi = _group(x, y, bottom), _group(x, y, top)
    lo["ties_at_cut"] = int((x == lo["freq_max"]).sum() - (x[bottom] == lo["freq_max"]).sum())
    hi["ties_at_cut"] = int((x == hi["freq_min"]).sum() - (x[top] == hi["freq_min"]).sum())
    return {"frac": frac, "n": n, "k": k, "top": hi, "bottom": lo, "gap": hi["acc"] - lo["acc"]}


def frequency_bins(freq: Any, correct: Any, n_bins: int = 10) -> list[dict[str, Any]]:
    """Equal-count bins over items ordered by (frequency, item index): per bin the frequency
    range and median, the item count and the mean correctness (for the binned accuracy line;
    items of one frequency may straddle two bins)."""
    x, y = _pair(freq, correct)
    if not len(x):
        return []
    order = np.lexsort((np.arange(len(x)), x))
    bins = []
    for part in np.array_split(order, min(n_bins, len(x))):
        bins.append({**_group(x, y, part), "freq_median": float(np.median(x[part]))})
    return bins


def memorization_report(
    freq: Any,
    correct: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    frac: float = 0.1,
    n_bins: int = 10,
    log_pearson: bool = True,
) -> dict[str, Any]:
    """Everything in one JSON-able dict: item and frequency summary, Pearson/Spearman with
    bootstrap CIs, the top-vs-bottom decile gap and equal-count frequency bins.

    Items with a non-finite frequency (no terms) are dropped (``n_dropped``). Term counts are
    heavy-tailed, so by default Pearson is computed on log10(1 + frequency) (``freq_transform``;
    Razeghi et al. also read accuracy against log frequency); Spearman, the decile gap and the
    bins use the raw counts (rank-based, unaffected by a monotone transform).
    """
    x = np.asarray(freq, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"memorization_report: shapes differ: {x.shape} vs {y.shape}")
    keep = np.isfinite(x)
    x, y = x[keep], y[keep]
    n = len(x)
    report: dict[str, Any] = {"n": n, "n_dropped": int((~keep).sum())}
    report["accuracy"] = float(y.mean()) if n else None
    report["frequency"] = {
        "min": float(x.min()) if n else None,
        "median": float(np.median(x)) if n else None,
        "max": float(x.max()) if n else None,
        "zero_frac": float((x == 0).mean()) if n else None,
    }
    report["freq_transform"] = "log10(1+f)" if log_pearson else "none"
    px = np.log10(1.0 + np.maximum(x, 0.0)) if log_pearson else x
    # log10(1 + f) is strictly increasing, so Spearman on px equals Spearman on the raw counts
    c = correlations(px, y, n_boot=n_boot, seed=seed, ci=ci)
    report["pearson"] = c["pearson"]
    report["spearman"] = c["spearman"]
    report["bootstrap"] = c["bootstrap"]
    report["decile"] = decile_gap(x, y, frac) if n >= 2 else None
    report["bins"] = frequency_bins(x, y, n_bins)
    return report


def _ci(c: Mapping[str, Any], key: str) -> str:
    val = "n/a" if c[key] is None else f"{c[key]:+.3f}"
    lo_hi = "" if c["ci"] is None else f" [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]"
    p = "" if c["p"] is None else f" p={c['p']:.3g}"
    skip = c["degenerate_resamples"]
    return f"{val}{lo_hi}{p}" + (f" ({skip} degenerate resamples skipped)" if skip else "")


def format_memorization(report: Mapping[str, Any]) -> str:
    """A short text summary of :func:`memorization_report`."""
    b = report["bootstrap"]
    acc = "n/a" if report["accuracy"] is None else f"{report['accuracy']:.3f}"
    lines = [
        f"items: {report['n']} (dropped without terms: {report['n_dropped']}), accuracy {acc}",
    ]
    f = report["frequency"]
    if f["min"] is not None:
        lines.append(
            f"term frequency: min {f['min']:g}, median {f['median']:g}, max {f['max']:g}, "
            f"zero {f['zero_frac']:.1%}"
        )
    level = f"{b['ci']:.0%} CI, {b['n_boot']} bootstrap resamples"
    t = report["freq_transform"]
    lines.append(f"pearson r ({t}):  {_ci(report['pearson'], 'r')}  ({level})")
    lines.append(f"spearman rho:       {_ci(report['spearman'], 'rho')}")
    d = report.get("decile")
    if d:
        lines.append(
            f"top {d['frac']:.0%} vs bottom {d['frac']:.0%} by frequency (k={d['k']} each): "
            f"acc {d['top']['acc']:.3f} vs {d['bottom']['acc']:.3f}, gap {d['gap']:+.3f}"
        )
    if report.get("bins"):
        lines.append(f"{'freq range':>24}{'n':>7}{'acc':>8}")
        for bn in report["bins"]:
            rng = f"{bn['freq_min']:g}-{bn['freq_max']:g}"
            lines.append(f"{rng:>24}{bn['n']:>7}{bn['acc']:>8.3f}")
    return "\n".join(lines)
