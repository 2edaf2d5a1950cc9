"""OOD alerts, early stopping, the alert hook: scripted sequences with exact expectations."""

import json
import math
import sys
import time

import pytest

from lengthwise.config import hook_argv
from lengthwise.train.monitor import (
    AlertEvent,
    EarlyStopping,
    OODMonitor,
    direction,
    drop_z,
    mean_metric,
    relative_drop,
    run_hook,
    z_threshold,
)

NAN, INF = math.nan, math.inf


def feed(monitor, name, values, step0=100):
    """Alerts per eval (step = 100 * (i + 1), tokens = 1000 * step)."""
    out = []
    for i, v in enumerate(values):
        step = step0 * (i + 1)
        out.append(monitor.update({name: v}, step, 1000 * step))
    return out


# ---------------------------------------------------------------------------------- direction


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("loss", "min"),
        ("ood_x2/loss", "min"),
        ("ood/ppl", "min"),
        ("wiki/perplexity", "min"),
        ("a/b/nll", "min"),
        ("text/bpb", "min"),
        ("val/eval_loss", "min"),
        ("train_loss", "min"),
        ("ood_mean/loss", "min"),
        ("OOD/Loss", "min"),
        ("acc", "max"),
        ("ood_x2/acc", "max"),
        ("ood/accuracy", "max"),
        ("add/exact_match", "max"),
        ("qa/em", "max"),
        ("qa/f1", "max"),
        ("sort/parse_rate", "max"),
        ("x/hit_rate", "max"),
        ("ood_mean/acc", "max"),
        ("loss/acc", "max"),  # only the last component counts
        ("acc/loss", "min"),
        ("x/lossy", "max"),
    ],
)
def test_direction_table(name, mode):
    assert direction(name) == mode


def test_direction_override_wins():
    assert direction("x/score", {"x/score": "min"}) == "min"
    assert direction("ood/loss", {"ood/loss": "max"}) == "max"
    assert direction("a/score", {"score": "min"}) == "min"  # last component also matches
    assert direction("a/score", {"other": "min"}) == "max"
    with pytest.raises(ValueError):
        direction("a/score", {"a/score": "up"})


def test_relative_drop():
    assert relative_drop(0.63, 0.70, "max") == pytest.approx(0.1)
    assert relative_drop(1.1, 1.0, "min") == pytest.approx(0.1)
    assert relative_drop(0.9, 1.0, "min") == pytest.approx(-0.1)
    assert relative_drop(-2.2, -2.0, "max") == pytest.approx(0.1)  # |best|
    assert relative_drop(0.3, 0.0, "min") == pytest.approx(0.3)  # best 0: absolute


# ---------------------------------------------------------------------------------- OOD monitor


def test_max_metric_alerts_exactly_past_the_relative_threshold():
    m = OODMonitor(["ood/acc"], alert_drop=0.05)
    seq = [0.50, 0.60, 0.70, 0.68, 0.66, 0.64, 0.72, 0.60, 0.70, 0.60]
    out = feed(m, "ood/acc", seq)
    fired = [i for i, a in enumerate(out) if a]
    # 0.68: 2.9% < 5% no; 0.66: 5.7% yes (first); 0.64: 8.6% yes (same episode);
    # 0.72 new best; 0.60: 16.7% (new episode); 0.70: 2.8% recovers; 0.60 again a new episode
    assert fired == [4, 5, 7, 9]
    assert all(len(out[i]) == 1 for i in fired)
    a4, a5, a7, a9 = (out[i][0] for i in fired)
    assert [a.first for a in (a4, a5, a7, a9)] == [True, False, True, True]
    assert (a4.metric, a4.value, a4.best, a4.best_step, a4.step, a4.tokens, a4.reason) == (
        "ood/acc",
        0.66,
        0.70,
        300,
        500,
        500_000,
        "drop",
    )
    assert a4.drop == pytest.approx(0.04 / 0.70)
    assert a5.drop == pytest.approx(0.06 / 0.70)
    assert (a7.best, a7.best_step) == (0.72, 700)
    assert a7.drop == pytest.approx(0.12 / 0.72)
    assert m.best("ood/acc") == 0.72


def test_min_metric_alerts():
    m = OODMonitor(["ood/loss"], alert_drop=0.05)
    seq = [2.0, 1.5, 1.0, 1.04, 1.06, 1.2, 1.03, 1.1, 0.9, 0.94, 0.95]
    out = feed(m, "ood/loss", seq)
    fired = [i for i, a in enumerate(out) if a]
    # 1.04: 4% no; 1.06: 6% first; 1.2: 20%; 1.03 recovers; 1.1: 10% first; 0.9 best;
    # 0.94: 4.4% no; 0.95: 5.6% first
    assert fired == [4, 5, 7, 10]
    assert [out[i][0].first for i in fired] == [True, False, True, True]
    assert out[4][0].drop == pytest.approx(0.06)
    assert (out[4][0].best, out[4][0].best_step) == (1.0, 300)
    assert (out[10][0].best, out[10][0].best_step) == (0.9, 900)
    assert m.best("ood/loss") == 0.9


def test_best_zero_uses_absolute_difference_and_negative_best_uses_abs():
    m = OODMonitor(None, alert_drop=0.05)
    out = feed(m, "x/loss", [0.0, 0.04, 0.06])
    assert [len(a) for a in out] == [0, 0, 1]
    assert out[2][0].drop == pytest.approx(0.06)
    m = OODMonitor(None, alert_drop=0.05)
    out = feed(m, "x/score", [-2.0, -2.05, -2.2])  # max metric with a negative best
    assert [len(a) for a in out] == [0, 0, 1]
    assert out[2][0].drop == pytest.approx(0.1)


def test_non_finite_alerts_and_keeps_the_best():
    m = OODMonitor(["ood/acc"], alert_drop=0.05)
    seq = [0.7, NAN, NAN, 0.69, 0.5, INF, 0.8]
    out = feed(m, "ood/acc", seq)
    assert [len(a) for a in out] == [0, 1, 1, 0, 1, 1, 0]
    n1, n2 = out[1][0], out[2][0]
    assert (n1.reason, n1.first, n1.best, n1.best_step, n1.drop) == (
        "non-finite",
        True,
        0.7,
        100,
        INF,
    )
    assert math.isnan(n1.value)
    assert (n2.reason, n2.first) == ("non-finite", False)
    assert (out[4][0].reason, out[4][0].first) == ("drop", True)
    # +inf is "better" for a max metric, but never a best: non-finite, a new episode kind
    assert (out[5][0].reason, out[5][0].first, out[5][0].best) == ("non-finite", True, 0.7)
    assert m.best("ood/acc") == 0.8


def test_non_finite_before_any_best():
    m = OODMonitor(None)
    out = feed(m, "ood/loss", [NAN, 3.0, 3.5])
    a = out[0][0]
    assert a.reason == "non-finite" and a.first and a.best_step is None and math.isnan(a.best)
    assert out[1] == []
    assert out[2][0].best == 3.0 and out[2][0].reason == "drop"


def test_watched_names_only_and_several_metrics():
    m = OODMonitor(["ood_x2/acc", "ood_x4/acc"], alert_drop=0.1)
    assert m.update({"ood_x2/acc": 0.8, "ood_x4/acc": 0.5, "id/acc": 0.9}, 1, 10) == []
    # id/acc collapses but is not watched; ood_x4/acc is missing from this eval: skipped
    alerts = m.update({"ood_x2/acc": 0.6, "id/acc": 0.0}, 2, 20)
    assert [a.metric for a in alerts] == ["ood_x2/acc"]
    alerts = m.update({"ood_x2/acc": 0.5, "ood_x4/acc": 0.3, "id/acc": 0.0}, 3, 30)
    assert [(a.metric, a.first) for a in alerts] == [("ood_x2/acc", False), ("ood_x4/acc", True)]
    assert m.best("id/acc") is None
    # None watches everything it is given
    m = OODMonitor(None, alert_drop=0.1)
    m.update({"a/acc": 1.0, "b/loss": 1.0}, 1, 10)
    alerts = m.update({"a/acc": 0.5, "b/loss": 2.0}, 2, 20)
    assert [a.metric for a in alerts] == ["a/acc", "b/loss"]


def test_modes_override_in_monitor():
    m = OODMonitor(["x/score"], alert_drop=0.05, modes={"x/score": "min"})
    out = feed(m, "x/score", [1.0, 0.5, 1.0])
    assert [len(a) for a in out] == [0, 0, 1]
    assert out[2][0].drop == pytest.approx(1.0)


def test_alert_event_to_dict():
    a = AlertEvent("ood/acc", 0.6, 0.7, 300, 0.1428, 500, 5000, True, "drop")
    d = a.to_dict()
    assert d == {
        "metric": "ood/acc",
        "value": 0.6,
        "best": 0.7,
        "best_step": 300,
        "drop": 0.1428,
        "step": 500,
        "tokens": 5000,
        "first": True,
        "reason": "drop",
        "z": None,  # positional construction (9 fields) still works: noise unknown
        "se": None,
        "significant": None,
    }
    json.dumps(d)


def test_monitor_state_dict_round_trip_matches_uninterrupted():
    seq = [0.50, 0.60, 0.70, 0.68, 0.66, NAN, 0.64, 0.72, 0.60, 0.70, 0.60, 0.9]
    full = OODMonitor(["ood/acc", "ood/loss"], alert_drop=0.05)
    expected = [
        full.update({"ood/acc": v, "ood/loss": 1 / v if v == v else v}, i, 10 * i)
        for i, v in enumerate(seq)
    ]
    for k in range(len(seq) + 1):
        a = OODMonitor(["ood/acc", "ood/loss"], alert_drop=0.05)
        got = [
            a.update({"ood/acc": v, "ood/loss": 1 / v if v == v else v}, i, 10 * i)
            for i, v in enumerate(seq[:k])
        ]
        state = json.loads(json.dumps(a.state_dict(), allow_nan=False))  # strict JSON
        b = OODMonitor(["ood/acc", "ood/loss"], alert_drop=0.05)
        b.load_state_dict(state)
        got += [
            b.update({"ood/acc": v, "ood/loss": 1 / v if v == v else v}, i, 10 * i)
            for i, v in list(enumerate(seq))[k:]
        ]
        assert repr(got) == repr(expected), k


# ---------------------------------------------------------------------------------- noise


def acc_se(p, n=100):
    return math.sqrt(p * (1 - p) / n)


def test_z_of_an_accuracy_drop_by_hand():
    """n = 100 items, best 0.80 -> 0.70: z = 0.10 / sqrt(.8*.2/100 + .7*.3/100) = 1.6440, just
    short of the one-sided 5% threshold 1.6449, past the 6% one (1.5548)."""
    assert z_threshold(0.05) == pytest.approx(1.644854, abs=1e-6)
    assert z_threshold(0.06) == pytest.approx(1.554774, abs=1e-6)
    expected = 0.10 / math.sqrt(0.8 * 0.2 / 100 + 0.7 * 0.3 / 100)
    assert expected == pytest.approx(1.64399, abs=1e-5)
    for level, significant in ((0.05, False), (0.06, True)):
        m = OODMonitor(["ood/acc"], alert_drop=0.05, alert_level=level)
        assert m.update({"ood/acc": 0.8}, 100, 1000, noise={"ood/acc": acc_se(0.8)}) == []
        (a,) = m.update({"ood/acc": 0.7}, 200, 2000, noise={"ood/acc": acc_se(0.7)})
        assert a.z == pytest.approx(expected, rel=1e-12)
        assert a.se == pytest.approx(math.sqrt(0.0037), rel=1e-12)
        assert a.significant is significant
        assert a.drop == pytest.approx(0.125)  # the relative rule is unchanged
    assert a.noise_text == "z=1.64, significant"
    assert a.line() == (
        "ALERT step 200: ood/acc = 0.7, 12.5% worse than its best 0.8 (step 100; z=1.64, "
        "significant)"
    )
    with pytest.raises(ValueError, match="alert_level"):
        OODMonitor(None, alert_level=0.5)


def test_z_of_a_loss_uses_the_se_stored_with_the_best():
    m = OODMonitor(["ood/loss"], alert_drop=0.05)
    feed_noise = [(2.0, 0.03), (1.0, 0.01), (1.04, 0.5), (1.2, 0.02), (1.1, 0.2)]
    out = [
        m.update({"ood/loss": v}, 100 * (i + 1), 0, noise={"ood/loss": se})
        for i, (v, se) in enumerate(feed_noise)
    ]
    assert [len(a) for a in out] == [0, 0, 0, 1, 1]
    a, b = out[3][0], out[4][0]
    # the best 1.0 kept its own SE 0.01 (not the 0.03 of the first eval, nor later ones)
    assert a.z == pytest.approx(0.2 / math.sqrt(0.01**2 + 0.02**2))  # 8.94
    assert a.significant is True and a.noise_text == "z=8.94, significant"
    assert b.z == pytest.approx(0.1 / math.sqrt(0.01**2 + 0.2**2))  # 0.50
    assert b.significant is False and "(step 200; z=0.50, within noise)" in b.line()
    assert drop_z(0.9, 1.0, 0.0, 0.0, "min") == -math.inf  # better, with no noise at all
    assert drop_z(1.0, 1.0, 0.0, 0.0, "min") == 0.0


def test_unknown_noise_is_never_invented():
    m = OODMonitor(["ood/acc"], alert_drop=0.05)
    m.update({"ood/acc": 0.8}, 1, 10)  # the best's SE unknown
    (a,) = m.update({"ood/acc": 0.5}, 2, 20, noise={"ood/acc": 0.05})
    assert (a.z, a.se, a.significant, a.noise_text) == (None, None, None, "noise unknown")
    m = OODMonitor(["ood/acc"], alert_drop=0.05)
    m.update({"ood/acc": 0.8}, 1, 10, noise={"ood/acc": 0.04})
    for noise in (None, {}, {"other/acc": 0.01}, {"ood/acc": NAN}, {"ood/acc": -1.0}):
        (a,) = m.update({"ood/acc": 0.5}, 2, 20, noise=noise)
        assert (a.z, a.se, a.significant) == (None, None, None), noise
    # a non-finite value is significant, whatever the noise
    (a,) = m.update({"ood/acc": NAN}, 3, 30, noise={"ood/acc": 0.04})
    assert (a.reason, a.z, a.significant) == ("non-finite", None, True)
    assert a.line() == "ALERT step 3: ood/acc = nan is not finite (best 0.8 at step 1)"


def test_min_best_ends_the_hundred_percent_drop_from_nothing():
    """E3's base run: the OOD accuracy's best 0.053 falling to 0.0 alerted as a "100% drop" at
    every eval; with min_best 0.1 it is no alert, and a best above it still alerts."""
    seq = [0.0, 0.053, 0.0, 0.0, 0.02, 0.4, 0.3]
    plain = feed(OODMonitor(["ood/acc"], alert_drop=0.05), "ood/acc", seq)
    assert [len(a) for a in plain] == [0, 0, 1, 1, 1, 0, 1]
    assert plain[2][0].drop == pytest.approx(1.0)
    floored = feed(OODMonitor(["ood/acc"], alert_drop=0.05, min_best=0.1), "ood/acc", seq)
    assert [len(a) for a in floored] == [0, 0, 0, 0, 0, 0, 1]
    assert floored[6][0].first and floored[6][0].best == 0.4
    # min_best never hides a non-finite value
    m = OODMonitor(["ood/acc"], min_best=0.1)
    assert [len(a) for a in feed(m, "ood/acc", [0.05, NAN])] == [0, 1]
    with pytest.raises(ValueError, match="min_best"):
        OODMonitor(None, min_best=-1)


def test_only_significant_keeps_significant_drops_unknown_noise_and_non_finite():
    n = 100
    seq = [  # (value, se): the best 0.80 on 100 items, then
        (0.80, acc_se(0.80)),
        (0.74, acc_se(0.74)),  # 7.5% down but z = 1.01: within noise
        (0.60, acc_se(0.60)),  # z = 3.16: significant
        (0.75, acc_se(0.75)),  # within noise again
        (0.70, None),  # noise unknown: still alerts
        (NAN, None),  # non-finite: always alerts
    ]
    z1 = 0.06 / math.sqrt(acc_se(0.8, n) ** 2 + acc_se(0.74, n) ** 2)
    assert z1 == pytest.approx(1.0107, abs=1e-4)

    def run(**kw):
        m = OODMonitor(["ood/acc"], alert_drop=0.05, **kw)
        return [
            m.update({"ood/acc": v}, i, 0, noise=None if se is None else {"ood/acc": se})
            for i, (v, se) in enumerate(seq)
        ]

    every = run()
    assert [[a.significant for a in out] for out in every] == [
        [],
        [False],
        [True],
        [False],
        [None],
        [True],
    ]
    assert [out[0].first for out in every[1:]] == [True, False, False, False, True]
    assert every[1][0].z == pytest.approx(z1) and every[2][0].z == pytest.approx(0.2 / 0.004**0.5)
    only = run(only_significant=True)
    assert [[(a.significant, a.first) for a in out] for out in only] == [
        [],
        [],  # within noise: no alert
        [(True, True)],  # so the significant drop starts the episode (a hook pages on it)
        [],
        [(None, True)],
        [(True, True)],
    ]


def test_noise_state_round_trip_and_old_state_dicts():
    noise = {"ood/acc": 0.04, "ood/loss": 0.02}
    seq = [(0.5, 2.0), (0.7, 1.0), (0.6, 1.3), (NAN, NAN), (0.55, 1.2), (0.8, 0.9), (0.6, 1.0)]

    def step(m, i, acc, loss):
        return m.update({"ood/acc": acc, "ood/loss": loss}, i, 10 * i, noise=noise)

    full = OODMonitor(["ood/acc", "ood/loss"])
    expected = [step(full, i, *v) for i, v in enumerate(seq)]
    assert any(a.z is not None for out in expected for a in out)
    for k in range(len(seq) + 1):
        a = OODMonitor(["ood/acc", "ood/loss"])
        got = [step(a, i, *v) for i, v in enumerate(seq[:k])]
        state = json.loads(json.dumps(a.state_dict(), allow_nan=False))
        b = OODMonitor(["ood/acc", "ood/loss"])
        b.load_state_dict(state)
        got += [step(b, i, *v) for i, v in list(enumerate(seq))[k:]]
        assert repr(got) == repr(expected), k
    # a state saved before the SEs were kept: the bests load, their SEs are unknown
    old = {"metrics": {"ood/acc": {"best": 0.8, "best_step": 5, "episode": None}}}
    m = OODMonitor(["ood/acc"])
    m.load_state_dict(old)
    (a,) = m.update({"ood/acc": 0.5}, 6, 0, noise=noise)
    assert (a.best, a.best_step, a.z, a.significant) == (0.8, 5, None, None)
    assert m.state_dict()["metrics"]["ood/acc"]["best_se"] is None


# ---------------------------------------------------------------------------------- early stopping


def run_stopper(stopper, values, alerts=None):
    out = []
    for i, v in enumerate(values):
        out.append(stopper.update(v, 100 * (i + 1), alert=bool(alerts and alerts[i])))
    return out


def test_early_stopping_patience_and_min_delta():
    es = EarlyStopping("ood_mean/loss", patience=2, min_delta=0.01)
    assert es.mode == "min"
    seq = [1.0, 0.95, 0.945, 0.935, 0.93, 0.929, 0.5]
    out = run_stopper(es, seq[:6])
    # improvement needs value < best - 0.01: 1.0 (first), 0.95 yes, 0.945 no (wait 1),
    # 0.935 yes (< 0.94), 0.93 no (wait 1), 0.929 no (wait 2 = patience) -> stop at index 5
    assert [d.improved for d in out] == [True, True, False, True, False, False]
    assert [d.wait for d in out] == [0, 0, 1, 0, 1, 2]
    assert [d.stop for d in out] == [False] * 5 + [True]
    last = out[5]
    assert last.reason == (
        "ood_mean/loss did not improve by more than 0.01 for 2 evals (best 0.935 at step 400)"
    )
    assert (last.best, last.best_step) == (0.935, 400)
    assert all(d.reason is None for d in out[:5])


def test_early_stopping_max_mode_equal_is_not_an_improvement():
    es = EarlyStopping("ood/acc", patience=3)
    assert es.mode == "max"
    out = run_stopper(es, [0.5, 0.812, 0.812, 0.8, 0.81])
    assert [d.improved for d in out] == [True, True, False, False, False]
    assert [d.stop for d in out] == [False, False, False, False, True]
    assert out[-1].reason == (
        "ood/acc did not improve by more than 0.0 for 3 evals (best 0.812 at step 200)"
    )


def test_explicit_mode_wins():
    es = EarlyStopping("ood/weird_loss", mode="max", patience=1)
    out = run_stopper(es, [1.0, 2.0, 1.5])
    assert [d.stop for d in out] == [False, False, True]
    with pytest.raises(ValueError):
        EarlyStopping("x", mode="up")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        EarlyStopping("x", min_delta=-0.1)


def test_stop_on_drop_stops_at_the_first_alert():
    seq = [0.50, 0.60, 0.70, 0.68, 0.66, 0.64, 0.72]
    for stop_on_drop, expect in ((True, 4), (False, None)):
        mon = OODMonitor(["ood/acc"], alert_drop=0.05)
        es = EarlyStopping("ood/acc", patience=10, stop_on_drop=stop_on_drop)
        stopped = None
        for i, v in enumerate(seq):
            alerts = mon.update({"ood/acc": v}, 100 * (i + 1), 0)
            d = es.update(v, 100 * (i + 1), alert=bool(alerts))
            if d.stop:
                stopped = i
                assert "OOD alert" in d.reason and "best 0.7 at step 300" in d.reason
                break
        assert stopped == expect


def test_stopping_threshold_is_reached_inclusively():
    es = EarlyStopping("ood/acc", stopping_threshold=0.9)
    out = run_stopper(es, [0.5, 0.8, 0.9])
    assert [d.stop for d in out] == [False, False, True]
    assert out[2].improved and out[2].best == 0.9
    assert out[2].reason == "ood/acc = 0.9 reached the stopping threshold (>= 0.9)"
    es = EarlyStopping("ood/loss", stopping_threshold=0.1)
    out = run_stopper(es, [1.0, 0.2, 0.3, 0.05])
    assert [d.stop for d in out] == [False, False, False, True]


def test_divergence_threshold():
    es = EarlyStopping("ood/loss", patience=10, divergence_threshold=5.0)
    out = run_stopper(es, [3.0, 4.0, 5.0, 5.5])
    assert [d.stop for d in out] == [False, False, False, True]
    assert out[3].reason == "ood/loss = 5.5 diverged past the threshold (> 5.0)"
    es = EarlyStopping("ood/acc", patience=10, divergence_threshold=0.2)
    out = run_stopper(es, [0.5, 0.3, 0.2, 0.1])
    assert [d.stop for d in out] == [False, False, False, True]
    assert out[3].reason == "ood/acc = 0.1 diverged past the threshold (< 0.2)"


def test_check_finite():
    es = EarlyStopping("ood/loss", patience=5)
    out = run_stopper(es, [1.0, 0.9, NAN])
    assert [d.stop for d in out] == [False, False, True]
    assert out[2].reason == "ood/loss = nan is not finite (best 0.9 at step 200)"
    assert out[2].best == 0.9
    es = EarlyStopping("ood/loss", patience=2, check_finite=False)
    out = run_stopper(es, [1.0, INF, NAN, 0.5])
    assert [d.stop for d in out] == [False, False, True, False]
    assert [d.wait for d in out[:3]] == [0, 1, 2]
    assert out[0].best == 1.0


def test_early_stopping_state_round_trip_matches_uninterrupted():
    seq = [1.0, 0.95, 0.945, 0.935, 0.93, 0.929, 0.931, 0.5, 0.6, 0.7, 0.8]

    def make():
        return EarlyStopping("ood_mean/loss", patience=3, min_delta=0.01)

    full = make()
    expected = run_stopper(full, seq)
    for k in range(len(seq) + 1):
        a = make()
        got = [a.update(v, 100 * (i + 1)) for i, v in enumerate(seq[:k])]
        b = make()
        b.load_state_dict(json.loads(json.dumps(a.state_dict(), allow_nan=False)))
        got += [b.update(v, 100 * (i + 1)) for i, v in list(enumerate(seq))[k:]]
        assert got == expected, k


def test_early_stopping_state_for_another_metric_is_ignored():
    a = EarlyStopping("ood/loss")
    a.update(0.5, 100)
    b = EarlyStopping("ood/acc")
    b.load_state_dict(a.state_dict())
    assert (b.best, b.best_step, b.wait) == (None, None, 0)


# ---------------------------------------------------------------------------------- hook, mean


COPY_STDIN = "import sys; open(sys.argv[1], 'w').write(sys.stdin.read())"


def test_run_hook_receives_the_event_as_json(tmp_path):
    out = tmp_path / "event.json"
    event = AlertEvent("ood/acc", 0.6, 0.7, 300, 1 / 7, 500, 5000, True, "drop").to_dict()
    argv = [sys.executable, "-c", COPY_STDIN, str(out)]
    assert run_hook(argv, event) is None
    text = out.read_text()
    assert text.endswith("\n") and text.count("\n") == 1
    assert json.loads(text) == event
    # non-finite floats become strings (strict JSON)
    assert (
        run_hook([sys.executable, "-c", COPY_STDIN, str(out)], {**event, "value": NAN, "drop": INF})
        is None
    )
    got = json.loads(out.read_text())
    assert (got["value"], got["drop"]) == ("nan", "inf")


def test_hook_runs_no_shell(tmp_path, monkeypatch):
    """A config's on_alert string is split into words, never given to a shell: `;`, `$VAR`,
    `>` and `&&` reach the program as plain arguments (audit: shell=True ran anything)."""
    monkeypatch.chdir(tmp_path)
    argv = hook_argv("echo $HOME; touch pwned && touch pwned2 > pwned3")
    assert argv == ["echo", "$HOME;", "touch", "pwned", "&&", "touch", "pwned2", ">", "pwned3"]
    assert run_hook(argv, {"a": 1}) is None
    assert list(tmp_path.iterdir()) == []  # nothing was touched or redirected
    assert hook_argv(["notify-send", "a b"]) == ["notify-send", "a b"]  # a list is the argv
    for bad in ("", "  ", [], ["ok", ""]):
        with pytest.raises(ValueError, match="program"):
            hook_argv(bad)


def test_run_hook_failures_return_messages():
    fail = "import sys; sys.stderr.write('oops'); sys.exit(3)"
    problem = run_hook([sys.executable, "-c", fail], {"a": 1})
    assert problem is not None and "status 3" in problem and "oops" in problem
    problem = run_hook(["definitely-not-a-command-lengthwise"], {"a": 1})
    assert problem is not None and "could not start" in problem
    assert run_hook(["true"], {"a": 1}) is None  # does not read stdin: no broken-pipe error
    t0 = time.monotonic()
    child = "import subprocess, time; subprocess.Popen(['sleep', '20']); time.sleep(20)"
    problem = run_hook([sys.executable, "-c", child], {"a": 1}, timeout=0.5)
    assert problem is not None and "timed out" in problem
    assert time.monotonic() - t0 < 5
    assert "not JSON" in run_hook(["true"], {"a": object()})


def test_mean_metric():
    m = {"a/acc": 0.5, "b/acc": 0.7, "c/acc": NAN}
    assert mean_metric(m, ["a/acc", "b/acc"]) == pytest.approx(0.6)
    assert math.isnan(mean_metric(m, ["a/acc", "c/acc"]))
    with pytest.raises(KeyError):
        mean_metric(m, ["a/acc", "z/acc"])
    with pytest.raises(ValueError):
        mean_metric(m, [])
