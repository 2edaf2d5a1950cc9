"""Registry, generate_items (determinism, lengths, exclude), alphabet and import hygiene."""

import subprocess
import sys

import pytest

from lengthwise.tasks import (
    COMPLEXITIES,
    FORMATS,
    LADDER,
    Item,
    alphabet,
    generate_items,
    get_task,
    is_heldout,
    task_names,
)

EXPECTED_FORMATS = {
    "copy": ("direct", "index_hints"),
    "reverse": ("direct", "index_hints"),
    "parity": ("direct", "scratchpad", "index_hints"),
    "addition": FORMATS,
    "multiplication": FORMATS,
    "min": ("direct", "scratchpad"),
    "max": ("direct", "scratchpad"),
    "mode": ("direct",),
    "top_k": ("direct",),
    "kth_largest": ("direct", "scratchpad"),
    "sort": ("direct",),
    "remove_duplicates": ("direct",),
    "two_sum": ("direct", "scratchpad"),
    "three_sum": ("direct",),
    "four_sum": ("direct",),
    "subset_sum": ("direct",),
}


def test_names_and_formats():
    assert task_names() == list(EXPECTED_FORMATS)
    for name, formats in EXPECTED_FORMATS.items():
        task = get_task(name)
        assert task.name == name and task.formats == formats
        assert task.complexity in COMPLEXITIES and task.level == COMPLEXITIES.index(task.complexity)
    assert set(LADDER) <= set(task_names())


def test_get_task_errors():
    with pytest.raises(ValueError, match="addition, multiplication"):
        get_task("nope")
    with pytest.raises(ValueError, match="addition"):
        get_task("addition", k=2)
    with pytest.raises(ValueError):
        get_task("addition", pad="yes")
    assert get_task("multiplication", k=2).params == {"k": 2, "random_hints": False}
    assert repr(get_task("multiplication", k=2)) == "Multiplication(k=2, random_hints=False)"


def test_check_refuses_other_tasks_items():
    item = get_task("sort").render((2, 1), "direct")
    with pytest.raises(ValueError):
        get_task("min").check(item, "1")


def test_generate_items_is_deterministic():
    a = list(generate_items("addition", (1, 8), 30, "direct", seed=7))
    b = list(generate_items("addition", (1, 8), 30, "direct", seed=7))
    c = list(generate_items("addition", (1, 8), 30, "direct", seed=8))
    assert a == b and a != c
    assert all(isinstance(it, Item) for it in a)
    # the same seed draws the same problems in every format
    r = list(generate_items(get_task("addition"), (1, 8), 30, "reversed", seed=7))
    assert [it.key for it in r] == [it.key for it in a]
    assert [it.terms for it in r] == [it.terms for it in a]
    # parameters pass through a task name
    m = list(generate_items("multiplication", [3], 5, "direct", seed=0, k=2))
    assert all(len(it.terms[1]) == 2 for it in m)


def test_lengths_range_and_list():
    items = list(generate_items("addition", (3, 5), 90, "direct", seed=0))
    lengths = [it.length for it in items]
    assert set(lengths) == {3, 4, 5}
    assert all(len(t) == it.length for it in items for t in it.terms)
    items = list(generate_items("sort", [2, 7, 4], 7, "direct", seed=0))
    assert [it.length for it in items] == [2, 7, 4, 2, 7, 4, 2]
    assert all(len(it.terms) == it.length for it in items)


def test_exclude():
    first = list(generate_items("addition", (2, 2), 200, "direct", seed=0))
    keys = {it.key for it in first}
    again = list(generate_items("addition", (2, 2), 200, "direct", seed=0, exclude=keys))
    assert len(again) == 200 and not keys & {it.key for it in again}
    # 1-digit addition has exactly 100 problems: excluding all of them cannot work
    every = {f"addition:{a}+{b}" for a in range(10) for b in range(10)}
    with pytest.raises(ValueError, match="fresh"):
        list(generate_items("addition", (1, 1), 1, "direct", seed=0, exclude=every))
    left = every - {"addition:3+4"}
    assert [it.key for it in generate_items("addition", [1], 2, "direct", 0, left)] == [
        "addition:3+4"
    ] * 2


def test_heldout_terms_are_a_fixed_tenth():
    held = [v for v in range(100) if is_heldout(str(v))]
    # the hash split is fixed: the same numbers in every process, run and task
    assert held == [5, 18, 30, 40, 46, 50, 57, 75, 77, 78, 80, 85, 93]
    assert 900 <= sum(is_heldout(str(v)) for v in range(10_000)) <= 1100
    assert sum(is_heldout(str(v), 0.5) for v in range(10_000)) in range(4800, 5200)
    # a smaller fraction holds out a subset of a larger one (one hash, one threshold)
    assert all(is_heldout(str(v), 0.5) for v in held)


@pytest.mark.parametrize(
    ("task", "lengths", "params"),
    [("addition", (2, 3), {}), ("sort", (3, 8), {}), ("two_sum", (2, 6), {}), ("copy", (3, 3), {})],
)
def test_seen_and_unseen_values_split_the_terms(task, lengths, params):
    seen = list(generate_items(task, lengths, 300, "direct", 0, values="seen", **params))
    unseen = list(generate_items(task, lengths, 300, "direct", 1, values="unseen", **params))
    assert len(seen) == len(unseen) == 300
    assert not any(is_heldout(t) for it in seen for t in it.terms)
    assert all(any(is_heldout(t) for t in it.terms) for it in unseen)
    assert not {it.key for it in seen} & {it.key for it in unseen}
    # "all" is the old stream, untouched by the filter
    plain = list(generate_items(task, lengths, 50, "direct", 0, values="all", **params))
    assert plain == list(generate_items(task, lengths, 50, "direct", 0, **params))


def test_values_arguments_are_checked():
    with pytest.raises(ValueError, match="values"):
        generate_items("addition", (1, 2), 1, "direct", 0, values="new")
    with pytest.raises(ValueError, match="heldout"):
        generate_items("addition", (1, 2), 1, "direct", 0, values="seen", heldout=1.0)
    # 1-digit operands: none of 0-9 is held out at 5%, so no unseen item exists
    assert not any(is_heldout(str(d), 0.05) for d in range(10))
    with pytest.raises(ValueError, match="requested values"):
        list(generate_items("addition", (1, 1), 1, "direct", 0, values="unseen", heldout=0.05))


def test_generate_items_checks_arguments_at_the_call():
    with pytest.raises(ValueError, match="format"):
        generate_items("copy", (1, 2), 1, "reversed", 0)
    with pytest.raises(ValueError):
        generate_items("addition", (5, 3), 1, "direct", 0)
    with pytest.raises(ValueError):
        generate_items("addition", (0, 3), 1, "direct", 0)
    with pytest.raises(ValueError, match="length >= 2"):
        generate_items("two_sum", (1, 3), 1, "direct", 0)
    with pytest.raises(ValueError):
        generate_items("top_k", [2], 1, "direct", 0)  # k=3 needs 3 values
    with pytest.raises(ValueError):
        generate_items(get_task("addition"), (1, 2), 1, "direct", 0, pad=True)
    with pytest.raises(ValueError):
        generate_items("nope", (1, 2), 1, "direct", 0)
    assert list(generate_items("addition", (1, 2), 0, "direct", 0)) == []


def test_every_generated_character_is_in_the_alphabet():
    chars = set(alphabet())
    assert len(chars) == len(alphabet()) and all(c.isprintable() and not c.isspace() for c in chars)
    assert not chars & set("<>")
    for name, formats in EXPECTED_FORMATS.items():
        task = get_task(name)
        for fmt in formats:
            for item in generate_items(task, (task.min_length, 9), 20, fmt, seed=1):
                assert set(item.prompt + item.completion) <= chars, (name, fmt, item)
                assert item.prompt.endswith("=") and item.completion.endswith(item.answer)
                assert task.check(item, item.completion) == (True, True)
                assert item.fmt == fmt and item.task == name
    # long numbers wrap the 52 hint letters
    item = next(generate_items("addition", [60], 1, "index_hints", seed=0))
    assert set(item.prompt + item.completion) <= chars
    assert get_task("addition").check(item, item.completion) == (True, True)


def test_keys_do_not_depend_on_the_format():
    task = get_task("addition")
    keys = {task.render((12, 345), fmt).key for fmt in FORMATS}
    assert keys == {"addition:12+345"}


def test_tasks_import_no_torch_or_other_packages():
    code = (
        "import sys, lengthwise.tasks; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy') or "
        "m.startswith(('lengthwise.data', 'lengthwise.model', 'lengthwise.train'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
