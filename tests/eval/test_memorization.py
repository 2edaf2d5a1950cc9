import json
import math

import numpy as np
import pytest
from scipy import stats

from lengthwise.eval.memorization import (
    corr_pvalue,
    correlations,
    count_terms,
    decile_gap,
    format_memorization,
    frequency_bins,
    item_frequency,
    memorization_report,
    rankdata,
)

# ---------------------------------------------------------------------- count_terms


def test_numbers_are_maximal_digit_runs():
    texts = ["41234 and 123", "123+123=246", "x123y 1234", "3.14 007"]
    counts = count_terms((t for t in texts), {"123", "1234", "246", "4", "14", "7"})
    # "123" is not inside 41234 or 1234; it is in "x123y" (letters end a digit run)
    assert counts == {"123": 4, "1234": 1, "246": 1, "4": 0, "14": 1, "7": 0}
    assert set(counts) == {"123", "1234", "246", "4", "14", "7"}  # zero counts are keys


def test_numbers_bigrams():
    counts = count_terms(iter(["12+34, 34 12", "12", "34"]), {"12 34", "34 12"}, n=2)
    assert counts == {"12 34": 1, "34 12": 1}  # no n-gram across the 2nd/3rd text


def test_word_ngrams():
    texts = ["the cat sat. The cat!", "cat sat", "a b", "c d"]
    terms = {"the cat", "The cat", "cat sat", "cat,  sat", "b c"}
    counts = count_terms((t for t in texts), terms, mode="ngrams", n=2)
    assert counts["the cat"] == 1 and counts["The cat"] == 1  # case-sensitive
    assert counts["cat sat"] == 2 and counts["cat,  sat"] == 2  # terms tokenized too
    assert counts["b c"] == 0  # never across texts
    unigrams = count_terms(iter(["cat-cat cat_x"]), {"cat", "cat_x"}, mode="ngrams")
    assert unigrams == {"cat": 2, "cat_x": 1}


def test_exact_substrings():
    counts = count_terms(iter(["abab", "aaa x"]), {"ab", "aa", "a x"}, mode="exact")
    assert counts == {"ab": 2, "aa": 1, "a x": 1}  # non-overlapping


def test_count_terms_streams_once():
    consumed = []

    def gen():
        for i in range(1000):
            consumed.append(i)
            yield f"value {i % 7}"

    counts = count_terms(gen(), {"3"})
    assert counts["3"] == len([i for i in range(1000) if i % 7 == 3])
    assert consumed == list(range(1000))


def test_count_terms_errors():
    with pytest.raises(ValueError, match="expected n=1"):
        count_terms(["1 2"], {"1 2"})
    with pytest.raises(ValueError, match="expected n=2"):
        count_terms(["a b"], {"a"}, mode="ngrams", n=2)
    with pytest.raises(ValueError, match="mode"):
        count_terms(["a"], {"a"}, mode="regex")
    with pytest.raises(TypeError):
        count_terms("123", {"123"})
    assert count_terms(["1"], set()) == {}


def test_item_frequency():
    counts = {"1": 10, "2": 4, "3": 0}
    items = [("1", "2"), ("1", "3"), "2", ("9",), ()]
    np.testing.assert_array_equal(item_frequency(items, counts)[:4], [4, 0, 4, 0])
    np.testing.assert_array_equal(item_frequency(items, counts, "sum")[:4], [14, 10, 4, 0])
    np.testing.assert_array_equal(item_frequency(items, counts, "mean")[:4], [7, 5, 4, 0])
    assert math.isnan(item_frequency(items, counts)[4])
    with pytest.raises(ValueError):
        item_frequency(items, counts, "max")


# ---------------------------------------------------------------------- correlations


def fixed_data(n=200, seed=1):
    rng = np.random.default_rng(seed)
    freq = rng.integers(0, 25, n).astype(float)  # many ties
    correct = (rng.random(n) < 0.2 + 0.6 * freq / 25).astype(float)
    return freq, correct


def test_matches_scipy_with_ties():
    freq, correct = fixed_data()
    out = correlations(freq, correct, n_boot=0)
    pr = stats.pearsonr(freq, correct)
    sr = stats.spearmanr(freq, correct)
    assert out["n"] == 200
    assert abs(out["pearson"]["r"] - pr.statistic) < 1e-12
    assert abs(out["spearman"]["rho"] - sr.statistic) < 1e-12
    assert out["pearson"]["p"] == pytest.approx(pr.pvalue, rel=1e-9)
    assert out["spearman"]["p"] == pytest.approx(sr.pvalue, rel=1e-9)
    # continuous accuracies instead of 0/1
    acc = np.round(np.random.default_rng(2).random(200), 1)
    out = correlations(freq, acc, n_boot=0)
    assert abs(out["pearson"]["r"] - stats.pearsonr(freq, acc).statistic) < 1e-12
    assert abs(out["spearman"]["rho"] - stats.spearmanr(freq, acc).statistic) < 1e-12


def test_rankdata_and_pvalue_match_scipy():
    x = np.array([3.0, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5])
    np.testing.assert_allclose(rankdata(x), stats.rankdata(x), rtol=0, atol=1e-12)
    for r, n in [(0.05, 10), (0.3, 50), (-0.7, 8), (0.2, 1000), (0.0, 5)]:
        tval = r * math.sqrt((n - 2) / (1 - r * r))
        assert corr_pvalue(r, n) == pytest.approx(2 * stats.t.sf(abs(tval), n - 2), rel=1e-9)
    assert corr_pvalue(1.0, 10) == 0.0 and corr_pvalue(0.5, 2) is None


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    freq, correct = fixed_data()
    a = correlations(freq, correct, n_boot=500, seed=3)
    b = correlations(freq, correct, n_boot=500, seed=3)
    c = correlations(freq, correct, n_boot=500, seed=4)
    assert a == b
    assert a["pearson"]["ci"] != c["pearson"]["ci"]
    for name, key in (("pearson", "r"), ("spearman", "rho")):
        lo, hi = a[name]["ci"]
        assert lo < a[name][key] < hi
        assert a[name]["degenerate_resamples"] == 0
    assert a["bootstrap"] == {"n_boot": 500, "seed": 3, "ci": 0.95, "method": "percentile"}
    wide = correlations(freq, correct, n_boot=500, ci=0.99)["pearson"]["ci"]
    narrow = correlations(freq, correct, n_boot=500, ci=0.5)["pearson"]["ci"]
    assert wide[1] - wide[0] > narrow[1] - narrow[0]


def test_bootstrap_ci_narrows_with_more_data():
    small = correlations(*fixed_data(100, seed=5), n_boot=400)
    large = correlations(*fixed_data(2000, seed=5), n_boot=400)
    for name in ("pearson", "spearman"):
        ws = small[name]["ci"][1] - small[name]["ci"][0]
        wl = large[name]["ci"][1] - large[name]["ci"][0]
        assert wl < 0.5 * ws


def test_degenerate_resamples_are_skipped_and_counted():
    freq = np.array([1.0, 2, 3, 4, 5, 6])
    correct = np.array([1.0, 0, 0, 0, 0, 0])
    out = correlations(freq, correct, n_boot=300, seed=7)
    idx = np.random.default_rng(7).integers(0, 6, size=(300, 6))
    ys = correct[idx]
    expected = int((ys.min(axis=1) == ys.max(axis=1)).sum())
    assert expected > 0
    assert out["pearson"]["degenerate_resamples"] == expected
    assert out["spearman"]["degenerate_resamples"] == expected
    assert out["pearson"]["ci"] is not None


def test_undefined_correlation_is_none():
    out = correlations([1.0, 2, 3, 4], [1.0, 1, 1, 1], n_boot=50)
    assert out["pearson"] == {"r": None, "p": None, "ci": None, "degenerate_resamples": 50}
    assert out["spearman"]["rho"] is None
    json.dumps(out, allow_nan=False)
    with pytest.raises(ValueError):
        correlations([1.0, np.nan], [0.0, 1.0])
    with pytest.raises(ValueError):
        correlations([1.0, 2.0], [0.0])


# ---------------------------------------------------------------------- deciles and report


def test_decile_gap_hand_made():
    freq = np.array([13, 1, 20, 7, 2, 19, 5, 3, 4, 6, 8, 9, 10, 11, 12, 14, 15, 16, 17, 18.0])
    correct = np.zeros(20)
    correct[freq == 2] = 1  # bottom decile (freq 1, 2): 1 of 2 correct
    correct[freq == 19] = 1  # top decile (freq 19, 20): 2 of 2 correct
    correct[freq == 20] = 1
    d = decile_gap(freq, correct)
    assert d["k"] == 2 and d["n"] == 20
    assert d["bottom"]["acc"] == 0.5 and d["top"]["acc"] == 1.0
    assert d["gap"] == 0.5
    assert (d["bottom"]["freq_min"], d["bottom"]["freq_max"]) == (1, 2)
    assert (d["top"]["freq_min"], d["top"]["freq_max"]) == (19, 20)
    assert d["bottom"]["ties_at_cut"] == d["top"]["ties_at_cut"] == 0


def test_decile_ties_at_cut_prefer_earlier_items():
    freq = np.array([0, 0, 0, 5, 5, 5, 5, 5, 5, 9.0])
    correct = np.array([1, 0, 0, 0, 1, 1, 1, 1, 1, 0.0])
    d = decile_gap(freq, correct)  # k = 1
    assert d["bottom"]["acc"] == 1.0 and d["bottom"]["ties_at_cut"] == 2  # item 0, not 1 or 2
    assert d["top"]["acc"] == 0.0 and d["top"]["ties_at_cut"] == 0
    d = decile_gap(freq, correct, frac=0.2)  # k = 2: top = item 9 and item 3 (first of the 5s)
    assert d["top"]["acc"] == 0.0 and d["top"]["ties_at_cut"] == 5
    assert d["bottom"]["acc"] == 0.5 and d["bottom"]["ties_at_cut"] == 1
    assert d["gap"] == -0.5


def test_frequency_bins():
    bins = frequency_bins(np.arange(10.0), np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1.0]), n_bins=2)
    assert [b["n"] for b in bins] == [5, 5]
    assert [b["acc"] for b in bins] == [0.0, 1.0]
    assert bins[1]["freq_min"] == 5 and bins[1]["freq_median"] == 7


def test_memorization_report_is_json_and_formats():
    freq, correct = fixed_data(300)
    freq[:3] = np.nan  # items without terms are dropped
    report = memorization_report(freq, correct, n_boot=200)
    json.dumps(report, allow_nan=False)
    assert report["n"] == 297 and report["n_dropped"] == 3
    assert report["freq_transform"] == "log10(1+f)"
    f, c = freq[3:], correct[3:]
    assert report["pearson"]["r"] == pytest.approx(stats.pearsonr(np.log10(1 + f), c).statistic)
    assert report["spearman"]["rho"] == pytest.approx(stats.spearmanr(f, c).statistic)
    assert report["decile"]["k"] == 29 and len(report["bins"]) == 10
    raw = memorization_report(freq, correct, n_boot=0, log_pearson=False)
    assert raw["pearson"]["r"] == pytest.approx(stats.pearsonr(f, c).statistic)
    text = format_memorization(report)
    assert "pearson r" in text and "spearman rho" in text and "gap" in text
    for key in ("model", "n_items", "terms", "items"):  # keys the suite adds itself
        assert key not in report


def test_report_on_degenerate_input():
    report = memorization_report([np.nan, np.nan], [1.0, 0.0], n_boot=10)
    assert report["n"] == 0 and report["decile"] is None and report["bins"] == []
    json.dumps(report, allow_nan=False)
    assert "items: 0" in format_memorization(report)
