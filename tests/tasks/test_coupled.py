"""The `coupled` format: the text of `reversed` plus position ids, digits of equal significance
sharing an id (position coupling, Cho et al. 2024)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lengthwise.tasks import FORMATS, generate_items, get_task
from lengthwise.tasks.registry import EOS_POSITION, coupled_ids

ADD = get_task("addition")
MUL = get_task("multiplication")


@pytest.mark.parametrize(
    ("task", "problem", "prompt", "completion", "positions"),
    [
        # 123 + 45 = 168: units 3, 5, 8 share id 1; tens 2, 4, 6 id 2; hundreds 1, 1 id 3
        (ADD, (123, 45), "321+54=", "861", (1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 0)),
        # 999 + 1 = 1000: the answer is one digit longer than the operands
        (ADD, (999, 1), "999+1=", "0001", (1, 2, 3, 0, 1, 0, 1, 2, 3, 4, 0)),
        (ADD, (0, 7), "0+7=", "7", (1, 0, 1, 0, 1, 0)),
        (MUL, (123, 45), "321*54=", "5355", (1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4, 0)),
    ],
)
def test_coupled_by_hand(task, problem, prompt, completion, positions):
    item = task.render(problem, "coupled")
    assert (item.prompt, item.completion, item.answer) == (prompt, completion, completion)
    assert item.positions == positions
    assert len(item.positions) == len(item.prompt) + len(item.completion) + 1
    assert item.positions[-1] == EOS_POSITION == 0
    # the text is exactly that of `reversed`, and so is the problem's identity
    rev = task.render(problem, "reversed")
    assert (rev.prompt, rev.completion, rev.key) == (item.prompt, item.completion, item.key)
    assert rev.positions is None
    assert task.check(item, completion) == (True, True)
    assert task.check(item, completion[::-1] + "9") == (True, False)


def test_padded_addition_keeps_the_leading_zero_at_its_significance():
    item = get_task("addition", pad=True).render((123, 456), "coupled")
    assert item.completion == "9750"  # 0579 reversed
    assert item.positions == (1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 4, 0)


def test_coupled_ids_rule():
    assert coupled_ids("") == []
    assert coupled_ids("321+54=861") == [1, 2, 3, 0, 1, 2, 0, 1, 2, 3]
    assert coupled_ids("=12=") == [0, 1, 2, 0]


@given(st.integers(0, 10**30), st.integers(0, 10**30))
def test_positions_for_matches_items_and_prefixes(a, b):
    item = ADD.render((a, b), "coupled")
    full = ADD.positions_for(item.prompt, item.completion)
    assert (*full, 0) == item.positions
    # generation: the id of each answer character from the text written so far
    for k in range(len(item.completion) + 1):
        assert ADD.positions_for(item.prompt, item.completion[:k]) == full[: len(item.prompt) + k]
    # the k-th answer digit gets id k, and operand digit j of each operand id j
    assert full[len(item.prompt) :] == list(range(1, len(item.completion) + 1))
    sa, sb = item.prompt[:-1].split("+")
    assert full[: len(sa)] == list(range(1, len(str(a)) + 1))
    assert full[len(sa) + 1 : len(sa) + 1 + len(sb)] == list(range(1, len(str(b)) + 1))


def test_digits_of_equal_significance_share_an_id():
    item = ADD.render((98765, 4321), "coupled")
    text = item.prompt + item.completion
    a, b, total = str(98765)[::-1], str(4321)[::-1], str(98765 + 4321)[::-1]
    by_id: dict[int, list[str]] = {}
    for c, i in zip(text, item.positions, strict=False):
        by_id.setdefault(i, []).append(c)
    for j in range(1, len(total) + 1):
        want = [s[j - 1] for s in (a, b, total) if j <= len(s)]
        assert by_id[j] == want
    assert by_id[0] == ["+", "="]


def test_only_arithmetic_has_the_coupled_format():
    assert "coupled" in FORMATS
    for name in ("copy", "parity", "sort", "two_sum"):
        task = get_task(name)
        assert "coupled" not in task.formats
        with pytest.raises(ValueError, match="no format 'coupled'"):
            task.positions_for("1=", "2")
        with pytest.raises(ValueError):
            next(generate_items(task, (2, 3), 1, "coupled", 0))
    for fmt in ("direct", "reversed", "scratchpad", "index_hints"):
        assert ADD.render((12, 34), fmt).positions is None


def test_generated_coupled_items_are_deterministic_and_consistent():
    items = list(generate_items("addition", (1, 12), 50, "coupled", seed=3))
    again = list(generate_items("addition", (1, 12), 50, "coupled", seed=3))
    rev = list(generate_items("addition", (1, 12), 50, "reversed", seed=3))
    assert items == again
    assert [it.key for it in items] == [it.key for it in rev]
    for it in items:
        assert it.positions == (*coupled_ids(it.prompt + it.completion), 0)
        assert ADD.check(it, it.completion) == (True, True)
