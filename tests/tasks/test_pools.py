"""Value pools (Scylla's ID/OOD split): pooled draws stay in the pool, pooled items are ordinary
items, and without a pool every seed draws exactly what it drew before pools existed."""

import random

import pytest

from lengthwise.tasks import LADDER, generate_items, get_task

POOL = set(range(0, 100, 3)) | {1, 500}  # 0, 1, 3, 6, ..., 99 and one value out of every range
SUM_TASKS = ("two_sum", "three_sum", "four_sum", "subset_sum")


def test_without_a_pool_the_draws_are_unchanged():
    # recorded before value pools were added (same seed, lengths, n)
    expected = {
        "min": ["min:49,65,62,28", "min:51,57,48,75", "min:73,23,66,5,96,18"],
        "mode": ["mode:31,10,66,10", "mode:12,95,6,18,6", "mode:47,16,60,46,16,98"],
        "top_k": ["top_k[3]:52,85,65,14,23", "top_k[3]:49,14,61,73", "top_k[3]:54,13,50,59"],
        "remove_duplicates": [
            "remove_duplicates:3,1,0,0",
            "remove_duplicates:1,4,2,0,1",
            "remove_duplicates:4,3,4,3,4",
        ],
        "two_sum": [
            "two_sum:125:62,30,63,21,49",
            "two_sum:60:89,50,47,13",
            "two_sum:145:64,43,51,94",
        ],
        "three_sum": [
            "three_sum:118:56,39,23,83",
            "three_sum:270:95,13,48,94,57,81",
            "three_sum:158:79,22,62,55,74",
        ],
        "subset_sum": [
            "subset_sum:39:39,38,37,21,52,67",
            "subset_sum:171:88,74,48,35",
            "subset_sum:97:21,51,6,76",
        ],
    }
    for name, keys in expected.items():
        assert [it.key for it in generate_items(name, (4, 6), 3, "direct", seed=11)] == keys


@pytest.mark.parametrize("name", LADDER)
def test_pooled_values_lie_in_the_pool(name):
    task = get_task(name)
    pooled = task.with_pool(POOL)
    assert task.pool is None and pooled.pool == tuple(sorted(POOL))  # the original is untouched
    items = list(generate_items(pooled, (4, 8), 200, "direct", seed=1))
    drawn = {int(t) for it in items for t in it.terms}
    assert drawn <= POOL and 500 not in drawn
    if name != "remove_duplicates":  # its range is 0..N-1 (0, 1, 3, 6 here)
        assert len(drawn) >= 25  # the draws spread over the pool (34 values in range)
    plain = list(generate_items(task, (4, 8), 200, "direct", seed=1))
    assert {int(t) for it in plain for t in it.terms} - POOL  # without it, other values occur


@pytest.mark.parametrize("name", SUM_TASKS)
def test_pooled_sum_items_have_exactly_one_solution(name):
    task = get_task(name).with_pool(POOL)
    for item in generate_items(task, (task.min_length, 9), 60, "direct", seed=2):
        target = int(item.key.split(":")[1])
        values = tuple(int(t) for t in item.terms)
        found = task.solutions(target, values)
        assert len(found) == 1, item.key
        assert item.answer == ",".join(str(v) for v in sorted(values[i] for i in found[0]))


@pytest.mark.parametrize("name", [*LADDER, "top_k"])
def test_pooled_items_are_ordinary_items(name):
    task = get_task(name)
    pooled = task.with_pool(POOL)
    a = list(generate_items(pooled, (4, 7), 20, task.formats[-1], seed=5))
    assert a == list(generate_items(pooled, (4, 7), 20, task.formats[-1], seed=5))
    assert a != list(generate_items(task, (4, 7), 20, task.formats[-1], seed=5))
    rng = random.Random(0)
    for _ in range(20):
        problem = pooled.sample(rng, 6)
        for fmt in task.formats:
            assert pooled.render(problem, fmt) == task.render(problem, fmt)
    if name in SUM_TASKS:  # also without the generator's solution: brute force agrees
        target, values, _ = problem
        assert task.render((target, values), "direct") == pooled.render(problem, "direct")


def test_kth_largest_draws_k_from_the_whole_range_with_a_pool():
    task = get_task("kth_largest").with_pool({7, 8})
    ks = {int(it.prompt.split(":")[1]) for it in generate_items(task, [10], 100, "direct", 0)}
    assert ks == {2, 3, 4, 5}


def test_bad_pools_raise():
    with pytest.raises(ValueError, match=r"'sort'.*pool \(0 values\)"):
        get_task("sort").with_pool([])
    with pytest.raises(ValueError, match=r"'two_sum'.*pool \(1 values\) has none >= 1"):
        get_task("two_sum").with_pool([0])  # sum values are >= 1
    with pytest.raises(ValueError, match="ints"):
        get_task("sort").with_pool(["3", 4])
    with pytest.raises(ValueError, match=r"'sort'.*pool \(1 values\) has none in 0..99"):
        list(generate_items(get_task("sort").with_pool([500]), [3], 1, "direct", 0))
    with pytest.raises(ValueError, match=r"'remove_duplicates'.*none in 0..3"):
        list(generate_items(get_task("remove_duplicates").with_pool([50]), [4], 1, "direct", 0))
    with pytest.raises(ValueError, match=r"'two_sum'.*pool \(1 values\).*too small"):
        list(generate_items(get_task("two_sum").with_pool([5]), [3], 1, "direct", 0))
    with pytest.raises(ValueError, match="only list tasks"):
        get_task("addition").with_pool([1, 2])
