import numpy as np
import pytest

from lengthwise.data.curriculum import bucket_odds, bucket_schedule, seq_len_at

NAMES = ["natural", "grow_p2", "grow_linear", "shrink"]


def test_bucket_odds_for_three_buckets():
    assert bucket_odds("natural", 3).tolist() == [1, 1, 1]
    assert bucket_odds("grow_p2", 3).tolist() == [4, 2, 1]
    assert bucket_odds("grow_linear", 3).tolist() == [3, 2, 1]
    assert bucket_odds("shrink", 3).tolist() == [1, 2, 4]
    assert bucket_odds("grow_p2", 6).tolist() == [32, 16, 8, 4, 2, 1]  # the reference's default
    with pytest.raises(ValueError, match="unknown bucket curriculum"):
        bucket_odds("grow", 3)


def test_first_step_odds_are_curriculum_times_batches():
    # counts 30, 20, 10 and grow_p2 odds 4, 2, 1 -> step-0 odds 120 : 40 : 10.
    first = [bucket_schedule([30, 20, 10], "grow_p2", 1, seed, 0)[0] for seed in range(3000)]
    freq = np.bincount(first, minlength=3) / 3000
    np.testing.assert_allclose(freq, [120 / 170, 40 / 170, 10 / 170], atol=0.03)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cycles", [1, 3, 8])
def test_schedule_holds_exact_counts(name, cycles):
    counts = [17, 0, 5, 40, 1]
    s = bucket_schedule(counts, name, cycles, seed=3, epoch=2)
    assert s.dtype == np.int64
    assert np.bincount(s, minlength=5).tolist() == counts


def test_cycles_split_each_bucket_evenly_remainders_first():
    counts = [10, 7]  # per cycle of 3: bucket 0 -> 4, 3, 3; bucket 1 -> 3, 2, 2
    s = bucket_schedule(counts, "grow_p2", 3, seed=0, epoch=0)
    cycle_ends = np.cumsum([7, 5, 5])
    cycles = np.split(s, cycle_ends[:-1])
    assert [np.bincount(c, minlength=2).tolist() for c in cycles] == [[4, 3], [3, 2], [3, 2]]


def test_same_seed_same_schedule_other_seed_or_epoch_differs():
    counts = [50, 40, 30, 20]
    a = bucket_schedule(counts, "grow_p2", 2, seed=7, epoch=0)
    assert np.array_equal(a, bucket_schedule(counts, "grow_p2", 2, seed=7, epoch=0))
    assert not np.array_equal(a, bucket_schedule(counts, "grow_p2", 2, seed=8, epoch=0))
    assert not np.array_equal(a, bucket_schedule(counts, "grow_p2", 2, seed=7, epoch=1))


def _early_late_means(s: np.ndarray, cycles: int) -> tuple[float, float]:
    """Mean bucket index over the first and last fifth of every cycle."""
    early, late = [], []
    for c in np.split(s, cycles):
        fifth = c.size // 5
        early.append(c[:fifth])
        late.append(c[-fifth:])
    return float(np.concatenate(early).mean()), float(np.concatenate(late).mean())


def test_grow_starts_short_and_ends_long_in_every_cycle():
    counts = [4000] * 4  # 16000 steps, 4 cycles of 4000
    early, late = _early_late_means(bucket_schedule(counts, "grow_p2", 4, 0, 0), 4)
    # Measured 0.72..0.76 early and 2.74..2.77 late over seeds 0-4 (buckets 0..3).
    assert early < 1.0 and late > 2.5
    early, late = _early_late_means(bucket_schedule(counts, "grow_linear", 4, 0, 0), 4)
    assert late - early > 1.0


def test_shrink_reverses_grow():
    counts = [4000] * 4
    early, late = _early_late_means(bucket_schedule(counts, "shrink", 4, 0, 0), 4)
    assert early > 2.0 and late < 0.5  # measured 2.25..2.29 and 0.25..0.26


def test_natural_is_flat():
    counts = [8000, 4000, 2000, 1000]
    s = bucket_schedule(counts, "natural", 8, 0, 0)
    early, late = _early_late_means(s, 1)
    expected = np.dot(np.arange(4), counts) / sum(counts)  # 0.73
    assert abs(early - expected) < 0.08 and abs(late - expected) < 0.08


@pytest.mark.parametrize("name", NAMES)
def test_longest_first_moves_the_first_longest_batch_to_step_zero(name):
    counts = [30, 20, 10, 5]
    plain = bucket_schedule(counts, name, 2, seed=1, epoch=0)
    s = bucket_schedule(counts, name, 2, seed=1, epoch=0, longest_first=True)
    first = int(np.argmax(plain == 3))
    assert s[0] == 3
    assert np.array_equal(s[1 : first + 1], plain[:first])  # the others shift right by one
    assert np.array_equal(s[first + 1 :], plain[first + 1 :])
    empty_longest = bucket_schedule([5, 5, 0], name, 1, seed=1, epoch=0, longest_first=True)
    assert empty_longest[0] == 1


def test_empty_and_invalid_schedules():
    assert bucket_schedule([0, 0], "grow_p2", 8, 0, 0).size == 0
    with pytest.raises(ValueError):
        bucket_schedule([1, -1], "grow_p2", 1, 0, 0)
    with pytest.raises(ValueError):
        bucket_schedule([1, 1], "grow_p2", 0, 0, 0)


def test_seq_len_warmup_hand_computed():
    # 64 + 960 * step / 10, rounded down to a multiple of 8.
    assert [seq_len_at(s, 64, 1024, 10, 8) for s in (0, 1, 5, 10, 20)] == [64, 160, 544, 1024, 1024]
    # warmup 7: step 1 -> 64 + 137 = 201 -> 200; step 6 -> 64 + 822 = 886 -> 880.
    assert seq_len_at(1, 64, 1024, 7, 8) == 200
    assert seq_len_at(6, 64, 1024, 7, 8) == 880
    # min_len 60 is no multiple of 8: rounding down is clipped back up to min_len.
    assert [seq_len_at(s, 60, 100, 10, 8) for s in (0, 1, 2, 5)] == [60, 64, 64, 80]
    assert seq_len_at(0, 64, 1024, 0, 8) == 1024
