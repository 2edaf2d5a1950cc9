"""The complexity ladder: hand-written items, order-insensitive sum answers, uniqueness of
generated answers checked by brute force."""

import itertools
import random
from collections import Counter

import pytest

from lengthwise.tasks import LADDER, SumProblem, generate_items, get_task


def render_check(name, problem, fmt, prompt, completion, answer, **params):
    task = get_task(name, **params)
    item = task.render(problem, fmt)
    assert (item.prompt, item.completion, item.answer) == (prompt, completion, answer)
    assert task.check(item, item.completion) == (True, True)
    assert task.check(item, "") == (False, False)
    assert task.check(item, "1,x") == (False, False)
    return task, item


@pytest.mark.parametrize(
    "name, problem, fmt, prompt, completion, answer",
    [
        ("min", (5, 3, 9), "direct", "min:5,3,9=", "3", "3"),
        ("min", (5, 3, 9), "scratchpad", "min:5,3,9=", "5;3;3|3", "3"),
        ("max", (5, 3, 9), "direct", "max:5,3,9=", "9", "9"),
        ("max", (5, 3, 9), "scratchpad", "max:5,3,9=", "5;5;9|9", "9"),
        ("max", (42,), "scratchpad", "max:42=", "42|42", "42"),
        ("mode", (5, 3, 5, 7), "direct", "mode:5,3,5,7=", "5", "5"),
        ("top_k", (5, 3, 9, 1), "direct", "top3:5,3,9,1=", "9,5,3", "9,5,3"),
        ("top_k", (7, 7, 1, 7), "direct", "top3:7,7,1,7=", "7,7,7", "7,7,7"),
        ("sort", (5, 3, 9), "direct", "sort:5,3,9=", "3,5,9", "3,5,9"),
        ("sort", (10, 2, 2, 0), "direct", "sort:10,2,2,0=", "0,2,2,10", "0,2,2,10"),
        ("remove_duplicates", (3, 5, 3, 9), "direct", "dedup:3,5,3,9=", "3,5,9", "3,5,9"),
        ("remove_duplicates", (1, 1, 1), "direct", "dedup:1,1,1=", "1", "1"),
    ],
)
def test_list_tasks_by_hand(name, problem, fmt, prompt, completion, answer):
    task, item = render_check(name, problem, fmt, prompt, completion, answer)
    assert item.terms == tuple(str(v) for v in problem) and item.length == len(problem)
    assert item.key.endswith(":" + ",".join(map(str, problem)))
    wrong = "99" if task.parse(answer, fmt) != 99 else "98"
    prefix = completion[: len(completion) - len(answer)]
    assert task.check(item, prefix + wrong) == (True, False)


def test_top_k_parameter():
    task, item = render_check("top_k", (5, 3, 9, 1), "direct", "top2:5,3,9,1=", "9,5", "9,5", k=2)
    assert item.key == "top_k[2]:5,3,9,1"
    assert get_task("top_k").render((5, 3, 9, 1), "direct").key == "top_k[3]:5,3,9,1"
    assert task.check(item, "5,9") == (True, False)  # ordered answer: largest first
    with pytest.raises(ValueError):
        get_task("top_k").render((1, 2), "direct")  # fewer than k values
    with pytest.raises(ValueError):
        get_task("top_k", k=0)


@pytest.mark.parametrize(
    "problem, fmt, completion, answer",
    [
        ((2, (5, 3, 9, 1)), "direct", "5", "5"),
        ((2, (5, 3, 9, 1)), "scratchpad", "9;5|5", "5"),
        ((4, (5, 3, 9, 1)), "scratchpad", "9;5;3;1|1", "1"),
        ((3, (7, 1, 7, 4)), "direct", "4", "4"),
        ((3, (7, 1, 7, 4)), "scratchpad", "7;7;4|4", "4"),  # duplicates count
        ((1, (0, 0, 0, 0)), "scratchpad", "0|0", "0"),
    ],
)
def test_kth_largest_by_hand(problem, fmt, completion, answer):
    k, values = problem
    body = f"{k}:{','.join(map(str, values))}"
    task, item = render_check("kth_largest", problem, fmt, f"kth:{body}=", completion, answer)
    assert item.key == f"kth_largest:{body}" and item.length == len(values)
    assert item.terms == tuple(map(str, values))  # the list only, not k
    head = completion[: len(completion) - len(answer)]
    assert task.check(item, head + " " + answer + " ") == (True, True)
    assert task.check(item, head + "98") == (True, False)
    assert task.check(item, head + answer + ",1") == (False, False)  # one int, not a list
    if fmt == "scratchpad":
        assert task.check(item, answer) == (False, False)  # no "|"
        assert task.check(item, "1;2|" + answer) == (True, True)  # only the answer counts
    else:
        assert task.check(item, "9;5|" + answer) == (False, False)


def test_kth_largest_rejects_bad_problems():
    task = get_task("kth_largest")
    for k in (0, 5, -1, True, "2", 2.0):
        with pytest.raises(ValueError, match="k must be an int in 1..4"):
            task.render((k, (5, 3, 9, 1)), "direct")
    with pytest.raises(ValueError, match="length >= 4"):
        task.render((2, (5, 3, 9)), "direct")
    with pytest.raises(ValueError, match="length >= 4"):
        task.sample(random.Random(0), 3)
    with pytest.raises(ValueError, match="format"):
        task.render((2, (5, 3, 9, 1)), "reversed")


def test_kth_largest_k_is_drawn_from_2_to_half_n():
    seen: dict[int, set[int]] = {}
    for item in generate_items("kth_largest", (4, 11), 400, "scratchpad", seed=4):
        k = int(item.prompt.split(":")[1])
        values = [int(v) for v in item.terms]
        assert 2 <= k <= len(values) // 2 and all(0 <= v <= 99 for v in values)
        assert item.answer == str(sorted(values, reverse=True)[k - 1])
        assert item.completion.split("|")[0].split(";") == [
            str(v) for v in sorted(values, reverse=True)[:k]
        ]
        seen.setdefault(len(values), set()).add(k)
    assert seen == {n: set(range(2, n // 2 + 1)) for n in range(4, 12)}  # every k turns up


def test_ordered_answers_compare_in_order():
    sort = get_task("sort")
    item = sort.render((5, 3, 9), "direct")
    assert sort.check(item, "5,3,9") == (True, False)
    assert sort.check(item, "3,5") == (True, False)
    assert sort.check(item, "3, 5 ,9 ") == (True, True)
    assert sort.check(item, "3,,5,9") == (False, False)
    assert sort.check(item, "3;5;9") == (False, False)
    dedup = get_task("remove_duplicates")
    item = dedup.render((3, 5, 3, 9), "direct")
    assert dedup.check(item, "3,9,5") == (True, False)


def test_mode_needs_a_unique_mode():
    with pytest.raises(ValueError):
        get_task("mode").render((5, 3), "direct")
    with pytest.raises(ValueError):
        get_task("mode").render((5, 3), "scratchpad")  # no natural scratchpad for mode


@pytest.mark.parametrize(
    "name, problem, fmt, prompt, completion, answer",
    [
        ("two_sum", (9, (3, 8, 1, 5)), "direct", "2sum:9:3,8,1,5=", "1,8", "1,8"),
        (
            "two_sum",
            (9, (3, 8, 1, 5)),
            "scratchpad",
            "2sum:9:3,8,1,5=",
            "9-3=6;9-8=1;9-1=8|1,8",
            "1,8",
        ),
        ("two_sum", (6, (3, 1, 3)), "scratchpad", "2sum:6:3,1,3=", "6-3=3;6-1=5;6-3=3|3,3", "3,3"),
        ("two_sum", (4, (1, 9, 3)), "scratchpad", "2sum:4:1,9,3=", "4-1=3;4-9=-5;4-3=1|1,3", "1,3"),
        ("three_sum", (12, (3, 8, 1, 5, 2)), "direct", "3sum:12:3,8,1,5,2=", "1,3,8", "1,3,8"),
        ("four_sum", (17, (3, 8, 1, 5, 2)), "direct", "4sum:17:3,8,1,5,2=", "1,3,5,8", "1,3,5,8"),
        ("subset_sum", (10, (3, 8, 1, 6)), "direct", "subsetsum:10:3,8,1,6=", "1,3,6", "1,3,6"),
        ("subset_sum", (8, (3, 8, 1, 6)), "direct", "subsetsum:8:3,8,1,6=", "8", "8"),
    ],
)
def test_sum_tasks_by_hand(name, problem, fmt, prompt, completion, answer):
    task, item = render_check(name, problem, fmt, prompt, completion, answer)
    target, values = problem
    assert item.key == f"{name}:{target}:{','.join(map(str, values))}"
    assert item.terms == tuple(map(str, values)) and item.length == len(values)
    head = completion[: len(completion) - len(answer)]
    # order-insensitive: any permutation of the right values is correct
    for perm in itertools.permutations(answer.split(",")):
        assert task.check(item, head + ",".join(perm)) == (True, True)
    assert task.check(item, head + answer + ",1") == (True, False)  # one value too many
    assert task.check(item, head + "99") == (True, False)


def test_sum_answer_is_a_multiset():
    task = get_task("two_sum")
    item = task.render((6, (3, 1, 3)), "direct")
    assert task.check(item, "3,3") == (True, True)
    assert task.check(item, "3") == (True, False)
    assert task.check(item, "3,3,3") == (True, False)
    item = task.render((9, (3, 8, 1, 5)), "direct")
    assert task.check(item, "8,1") == (True, True)
    assert task.check(item, " 8 , 1 ") == (True, True)
    assert task.check(item, "1,8,8") == (True, False)


def test_sum_problems_must_have_one_solution():
    with pytest.raises(ValueError, match="more than one"):
        get_task("two_sum").render((9, (4, 5, 3, 6)), "direct")
    with pytest.raises(ValueError, match="no solution"):
        get_task("two_sum").render((100, (1, 2)), "direct")
    with pytest.raises(ValueError, match="more than one"):
        get_task("subset_sum").render((3, (1, 2, 3)), "direct")
    with pytest.raises(ValueError):
        get_task("three_sum").render((6, (1, 5)), "direct")  # shorter than 3
    # a given solution is trusted (no brute force), so long problems render fast
    item = get_task("four_sum").render(SumProblem(10, (1, 2, 3, 4), (1, 2, 3, 4)), "direct")
    assert item.answer == "1,2,3,4"


# --- generated items: uniqueness by brute force ---------------------------------------------------

SIZES = {"two_sum": (2,), "three_sum": (3,), "four_sum": (4,)}


def position_sets(target, values, sizes):
    return [
        idx
        for r in sizes
        for idx in itertools.combinations(range(len(values)), r)
        if sum(values[i] for i in idx) == target
    ]


@pytest.mark.parametrize("name", ["two_sum", "three_sum", "four_sum", "subset_sum"])
def test_generated_sum_items_have_exactly_one_solution(name):
    task = get_task(name)
    lo = task.min_length
    for item in generate_items(task, (lo, 11), 60, "direct", seed=3):
        target, values = item.prompt[:-1].split(":")[1:]
        target, values = int(target), tuple(int(v) for v in values.split(","))
        assert len(values) == item.length and all(v >= 1 for v in values)
        sizes = SIZES.get(name, range(1, len(values) + 1))
        found = position_sets(target, values, sizes)
        assert len(found) == 1, (item.prompt, found)
        assert item.answer == ",".join(str(v) for v in sorted(values[i] for i in found[0]))


@pytest.mark.parametrize(
    "name, length", [("two_sum", 60), ("three_sum", 40), ("four_sum", 25), ("subset_sum", 20)]
)
def test_long_sum_items_are_consistent(name, length):
    task = get_task(name)
    for item in generate_items(task, [length], 3, "direct", seed=0):
        target = int(item.prompt.split(":")[1])
        values = Counter(int(v) for v in item.prompt[:-1].split(":")[2].split(","))
        answer = [int(v) for v in item.answer.split(",")]
        assert sum(answer) == target and not Counter(answer) - values
        assert len(values.keys()) > 0 and item.length == length


def test_generated_mode_is_unique():
    task = get_task("mode")
    for item in generate_items(task, (1, 12), 200, "direct", seed=5):
        values = [int(v) for v in item.prompt[5:-1].split(",")]
        counts = Counter(values).most_common()
        assert len(counts) == 1 or counts[0][1] > counts[1][1]
        assert item.answer == str(counts[0][0])


def test_generated_answers_match_brute_force():
    for name, solve in [
        ("min", lambda v: str(min(v))),
        ("max", lambda v: str(max(v))),
        ("sort", lambda v: ",".join(map(str, sorted(v)))),
        ("top_k", lambda v: ",".join(map(str, sorted(v)[::-1][:3]))),
        ("remove_duplicates", lambda v: ",".join(dict.fromkeys(map(str, v)))),
    ]:
        task = get_task(name)
        for item in generate_items(task, (3, 10), 50, "direct", seed=2):
            values = [int(v) for v in item.prompt[:-1].split(":")[1].split(",")]
            assert all(0 <= v <= 99 for v in values)
            assert item.answer == solve(values), (name, item.prompt)


def test_dedup_lists_have_duplicates():
    items = list(generate_items("remove_duplicates", [10], 50, "direct", seed=0))
    assert sum(len(it.answer.split(",")) < 10 for it in items) > 40


def test_two_sum_scratchpad_stops_at_the_pair():
    task = get_task("two_sum")
    rng = random.Random(0)
    for _ in range(50):
        item = task.render(task.sample(rng, 8), "scratchpad")
        steps, answer = item.completion.split("|")
        last = steps.split(";")[-1]  # "t-x=c": c occurred before x
        x, c = int(last.split("-", 1)[1].split("=")[0]), int(last.split("=")[1])
        assert sorted([x, c]) == [int(v) for v in answer.split(",")]


def test_ladder_levels():
    # kth_largest (Scylla's FindTopk) stands in for top_k, which stays registered
    assert "kth_largest" in LADDER and "top_k" not in LADDER and len(set(LADDER)) == 10
    levels = [get_task(name).level for name in LADDER]
    assert levels == sorted(levels) == [0, 0, 0, 1, 1, 1, 1, 2, 3, 4]
    assert [
        get_task(n).complexity for n in ("min", "two_sum", "three_sum", "four_sum", "subset_sum")
    ] == ["O(N)", "O(N..N^2)", "O(N^2..N^3)", "O(N^3..N^4)", "O(2^N)"]
