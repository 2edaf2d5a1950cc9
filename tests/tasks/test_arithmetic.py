"""Digit tasks: hand-written items in every format, checking, and hypothesis for +/*."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lengthwise.tasks import get_task

ADD = get_task("addition")
MUL = get_task("multiplication")


def hinted(number: str) -> str:
    """Written out independently of the package: a = units, b = tens, ... (no wrap needed)."""
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(letters[len(number) - 1 - i] + d for i, d in enumerate(number))


def wrong_last_digit(text: str) -> str:
    return text[:-1] + ("1" if text[-1] != "1" else "2")


def render_check(task, problem, fmt, prompt, completion, answer):
    item = task.render(problem, fmt)
    assert (item.prompt, item.completion, item.answer) == (prompt, completion, answer)
    assert item.fmt == fmt and item.task == task.name
    assert task.check(item, item.completion) == (True, True)
    return item


# --- copy, reverse, parity -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, fmt, prompt, completion",
    [
        ("copy", "direct", "copy:0123=", "0123"),
        ("copy", "index_hints", "copy:a0b1c2d3=", "a0b1c2d3"),
        ("reverse", "direct", "reverse:0123=", "3210"),
        ("reverse", "index_hints", "reverse:a0b1c2d3=", "d3c2b1a0"),
    ],
)
def test_copy_reverse_by_hand(name, fmt, prompt, completion):
    task = get_task(name)
    item = render_check(task, "0123", fmt, prompt, completion, completion)
    assert item.key == f"{name}:0123" and item.terms == ("0123",) and item.length == 4
    assert task.check(item, "") == (False, False)
    assert task.check(item, "01x3") == (False, False)


def test_copy_reverse_wrong_answers():
    copy, rev = get_task("copy"), get_task("reverse")
    item = copy.render("0123", "direct")
    assert copy.check(item, "123") == (True, False)  # leading zero of a digit string matters
    assert copy.check(item, " 0123\n") == (True, True)
    item = rev.render("0123", "index_hints")
    assert rev.check(item, "a3b2c1d0") == (True, False)  # digits right, hints wrong
    assert rev.check(item, "d3c2b1a") == (False, False)
    assert rev.check(item, "3210") == (False, False)  # hints missing
    assert set(copy.formats) == {"direct", "index_hints"} == set(rev.formats)


@pytest.mark.parametrize(
    "bits, fmt, prompt, completion, answer",
    [
        ("1011", "direct", "parity:1011=", "1", "1"),
        ("1011", "scratchpad", "parity:1011=", "1;1;0;1|1", "1"),
        ("1011", "index_hints", "parity:a1b0c1d1=", "1", "1"),
        ("0110", "direct", "parity:0110=", "0", "0"),
        ("0110", "scratchpad", "parity:0110=", "0;1;0;0|0", "0"),
        ("1", "direct", "parity:1=", "1", "1"),
    ],
)
def test_parity_by_hand(bits, fmt, prompt, completion, answer):
    task = get_task("parity")
    item = render_check(task, bits, fmt, prompt, completion, answer)
    wrong = "0" if answer == "1" else "1"
    assert task.check(item, completion[: -len(answer)] + wrong) == (True, False)
    assert task.check(item, "2") == (False, False)
    assert task.check(item, "") == (False, False)


def test_parity_rejects_bad_problems():
    with pytest.raises(ValueError):
        get_task("parity").render("102", "direct")
    with pytest.raises(ValueError):
        get_task("parity").render("101", "reversed")


# --- addition ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "problem, fmt, prompt, completion, answer",
    [
        ((123, 45), "direct", "123+45=", "168", "168"),
        ((123, 45), "reversed", "321+54=", "861", "861"),
        ((123, 45), "scratchpad", "123+45=", "3+5+0=8;2+4+0=6;1+0+0=1|168", "168"),
        ((123, 45), "index_hints", "c1b2a3+b4a5=", "c1b6a8", "c1b6a8"),
        ((999, 1), "direct", "999+1=", "1000", "1000"),
        ((999, 1), "reversed", "999+1=", "0001", "0001"),
        ((999, 1), "scratchpad", "999+1=", "9+1+0=10;9+0+1=10;9+0+1=10|1000", "1000"),
        ((999, 1), "index_hints", "c9b9a9+a1=", "d1c0b0a0", "d1c0b0a0"),
        ((58, 67), "scratchpad", "58+67=", "8+7+0=15;5+6+1=12|125", "125"),
        ((0, 0), "scratchpad", "0+0=", "0+0+0=0|0", "0"),
    ],
)
def test_addition_by_hand(problem, fmt, prompt, completion, answer):
    item = render_check(ADD, problem, fmt, prompt, completion, answer)
    assert ADD.check(item, wrong_last_digit(completion)) == (True, False)
    a, b = problem
    assert item.key == f"addition:{a}+{b}" and item.terms == (str(a), str(b))
    assert item.length == max(len(str(a)), len(str(b)))


def test_addition_padded():
    pad = get_task("addition", pad=True)
    render_check(pad, (123, 456), "direct", "123+456=", "0579", "0579")
    render_check(pad, (123, 456), "reversed", "321+654=", "9750", "9750")
    render_check(pad, (123, 456), "index_hints", "c1b2a3+c4b5a6=", "d0c5b7a9", "d0c5b7a9")
    render_check(pad, (123, 456), "scratchpad", "123+456=", "3+6+0=9;2+5+0=7;1+4+0=5|0579", "0579")
    render_check(pad, (999, 999), "direct", "999+999=", "1998", "1998")
    assert pad.render((123, 456), "direct").key == ADD.render((123, 456), "direct").key


def test_addition_zero_pad():
    zp = get_task("addition", zero_pad=True)
    render_check(zp, (123, 45), "direct", "123+045=", "0168", "0168")
    render_check(zp, (123, 45), "reversed", "321+540=", "8610", "8610")
    render_check(zp, (999, 1), "index_hints", "c9b9a9+c0b0a1=", "d1c0b0a0", "d1c0b0a0")
    render_check(
        zp, (7, 1234), "scratchpad", "0007+1234=", "7+4+0=11;0+3+1=4;0+2+0=2;0+1+0=1|01241", "01241"
    )
    item = render_check(zp, (321, 5), "coupled", "123+500=", "6230", "6230")
    assert item.positions == (1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 4, 0)
    assert item.key == "addition:321+005" and item.terms == ("321", "5")
    assert item.length == 3


def test_addition_zero_pad_sample():
    import random

    rng = random.Random(0)
    zp = get_task("addition", zero_pad=True)
    shorter = [0, 0]
    for _ in range(2000):
        a, b = zp.sample(rng, 4)
        assert max(len(str(a)), len(str(b))) == 4  # the length is the longer operand's
        shorter[0] += len(str(a)) < 4
        shorter[1] += len(str(b)) < 4
        assert zp.render((a, b), "direct").prompt.count("+") == 1
        assert len(zp.render((a, b), "direct").prompt) == 4 + 1 + 4 + 1
    # the other operand is uniform below 10^4 (10% shorter), on either side half the time
    assert 60 < shorter[0] < 140 and 60 < shorter[1] < 140


def test_random_hints():
    from lengthwise.tasks.registry import HINTS, hint_start

    add = get_task("addition", random_hints=True)
    item = add.render((123, 45), "index_hints")
    s = hint_start("addition:123+45")
    assert s == 4  # a fixed hash: the same start in every run
    assert (item.prompt, item.completion) == ("g1f2e3+f4e5=", "g1f6e8")
    assert add.check(item, "g1f6e8") == (True, True)
    assert add.check(item, "g1f6e9") == (True, False)
    assert add.check(item, "g1e6f8") == (True, False)  # hints out of order
    # the starts spread over every letter (training sees hints far beyond its lengths)
    starts = {hint_start(f"addition:{a}+{a + 1}") for a in range(2000)}
    assert starts == set(range(len(HINTS)))
    # wrap-around: a start near the end of the letters continues at a
    key = next(f"copy:{i:03d}" for i in range(1000) if hint_start(f"copy:{i:03d}") == 51)
    copy = get_task("copy", random_hints=True)
    assert copy.render(key[5:], "index_hints").prompt == f"copy:Z{key[5]}a{key[6]}b{key[7]}="
    mul = get_task("multiplication", random_hints=True)
    m = mul.render((123, 4), "index_hints")
    assert mul.check(m, m.completion) == (True, True)
    assert m.prompt != MUL.render((123, 4), "index_hints").prompt or hint_start(m.key) == 0
    with pytest.raises(ValueError, match="random_hints"):
        get_task("copy", random_hints="yes")
    with pytest.raises(ValueError, match="zero_pad"):
        get_task("addition", zero_pad=1)


def test_addition_check_grammar():
    d = ADD.render((123, 45), "direct")
    assert ADD.check(d, "169") == (True, False)
    assert ADD.check(d, " 168\n") == (True, True)
    assert ADD.check(d, "0168") == (True, True)  # numbers compare by value
    for junk in ("12a", "", "1 68", "+168", "168=", "-168", "168|"):
        assert ADD.check(d, junk) == (False, False), junk
    r = ADD.render((123, 45), "reversed")
    assert ADD.check(r, "168") == (True, False)  # 168 reversed is 861, not 168
    assert ADD.check(r, "8610") == (True, True)  # a trailing zero reversed is a leading zero
    s = ADD.render((123, 45), "scratchpad")
    assert ADD.check(s, "168") == (False, False)  # no separator
    assert ADD.check(s, "wrong steps|168") == (True, True)  # only the final answer counts
    assert ADD.check(s, "3+5+0=8;2+4+0=6;1+0+0=1|169") == (True, False)
    assert ADD.check(s, "1|2|168") == (True, True)
    assert ADD.check(s, "3+5+0=8|") == (False, False)
    h = ADD.render((123, 45), "index_hints")
    assert ADD.check(h, "a1b6c8") == (True, False)  # well-formed but the hints are wrong
    assert ADD.check(h, "c1b6a9") == (True, False)
    assert ADD.check(h, "c1b6a") == (False, False)
    assert ADD.check(h, "168") == (False, False)
    assert ADD.check(h, "d0c1b6a8") == (True, True)


def test_addition_sample_lengths():
    import random

    rng = random.Random(0)
    for n in (1, 2, 5, 30):
        for _ in range(20):
            a, b = ADD.sample(rng, n)
            assert len(str(a)) == n and len(str(b)) == n
    with pytest.raises(ValueError):
        ADD.sample(rng, 0)


# --- multiplication ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "problem, fmt, prompt, completion, answer",
    [
        ((123, 45), "direct", "123*45=", "5535", "5535"),
        ((123, 45), "reversed", "321*54=", "5355", "5355"),
        ((123, 45), "scratchpad", "123*45=", "123*5=615;123*40=4920|5535", "5535"),
        ((123, 45), "index_hints", "c1b2a3*b4a5=", "d5c5b3a5", "d5c5b3a5"),
        ((123, 105), "scratchpad", "123*105=", "123*5=615;123*0=0;123*100=12300|12915", "12915"),
        ((7, 8), "direct", "7*8=", "56", "56"),
        ((99, 0), "index_hints", "b9a9*a0=", "a0", "a0"),
        ((25, 4), "reversed", "52*4=", "001", "001"),
    ],
)
def test_multiplication_by_hand(problem, fmt, prompt, completion, answer):
    item = render_check(MUL, problem, fmt, prompt, completion, answer)
    assert item.key == f"multiplication:{problem[0]}*{problem[1]}"
    assert item.length == len(str(problem[0]))
    assert MUL.check(item, wrong_last_digit(completion)) == (True, False)
    assert MUL.check(item, "55x") == (False, False)


def test_multiplication_k():
    import random

    task = get_task("multiplication", k=3)
    assert task.params == {"k": 3, "random_hints": False}
    rng = random.Random(1)
    for n in (1, 4, 12):
        a, b = task.sample(rng, n)
        assert len(str(a)) == n and len(str(b)) == 3
    item = task.render((1234, 567), "scratchpad")
    assert item.completion == "1234*7=8638;1234*60=74040;1234*500=617000|699678"
    with pytest.raises(ValueError):
        get_task("multiplication", k=0)
    with pytest.raises(ValueError):
        get_task("multiplication", pad=True)


# --- property tests ------------------------------------------------------------------------------

NUMBERS = st.integers(min_value=0, max_value=10**40)


def written(value: int, fmt: str) -> str:
    s = str(value)
    return {
        "direct": s,
        "reversed": s[::-1],
        "scratchpad": "anything;at all|" + s,
        "index_hints": hinted(s),
    }[fmt]


@given(NUMBERS, NUMBERS, st.sampled_from(["direct", "reversed", "scratchpad", "index_hints"]))
def test_addition_property(a, b, fmt):
    item = ADD.render((a, b), fmt)
    assert ADD.check(item, written(a + b, fmt)) == (True, True)
    assert ADD.check(item, item.completion) == (True, True)
    assert ADD.check(item, written(a + b + 1, fmt)) == (True, False)
    assert item.completion.endswith(item.answer)
    if fmt == "scratchpad":
        steps = item.completion.split("|")[0].split(";")
        assert len(steps) == max(len(str(a)), len(str(b)))
        digits = "".join(step.split("=")[1][-1] for step in reversed(steps))
        carry = steps[-1].split("=")[1][:-1]
        assert int(carry + digits) == a + b


@given(NUMBERS, st.integers(0, 10**6), st.sampled_from(["direct", "reversed", "index_hints"]))
def test_multiplication_property(a, b, fmt):
    item = MUL.render((a, b), fmt)
    assert MUL.check(item, written(a * b, fmt)) == (True, True)
    assert MUL.check(item, written(a * b + 1, fmt)) == (True, False)
    scratch = MUL.render((a, b), "scratchpad")
    partials = [int(step.split("=")[1]) for step in scratch.completion.split("|")[0].split(";")]
    assert sum(partials) == a * b == int(scratch.answer)


@given(st.text(max_size=30), st.sampled_from(["direct", "reversed", "scratchpad", "index_hints"]))
def test_check_never_raises(text, fmt):
    parsed, correct = ADD.check(ADD.render((12, 34), fmt), text)
    assert isinstance(parsed, bool) and isinstance(correct, bool)
    assert parsed or not correct
