"""Digit tasks: copy, reverse, parity, addition, multiplication.

`length` is the number of digits (copy, reverse), of bits (parity), of digits per operand
(addition), or of digits of the first operand (multiplication). Operands have a non-zero leading
digit unless they have one digit. Formats, with the exact syntax (see registry for the shared
rules; hints: ``a`` marks units, ``b`` tens, ... for numbers, and positions from the left for
digit strings):

copy (O(N); direct, index_hints), any digits, leading zeros kept::

    direct       copy:0123=            -> 0123
    index_hints  copy:a0b1c2d3=        -> a0b1c2d3

reverse (O(N); direct, index_hints)::

    direct       reverse:0123=         -> 3210
    index_hints  reverse:a0b1c2d3=     -> d3c2b1a0

parity (O(N); direct, scratchpad, index_hints), the answer is the count of 1s mod 2; the
scratchpad lists the running parity after each bit::

    direct       parity:1011=          -> 1
    scratchpad   parity:1011=          -> 1;1;0;1|1
    index_hints  parity:a1b0c1d1=      -> 1

addition (O(N); all five formats), two `length`-digit operands. The scratchpad goes from the
units up, one step ``x+y+carry=sum`` per digit (the sum's last digit is written, its tens digit
is the next carry). With ``pad=True`` the answer always has length+1 digits (leading zero kept).
With ``zero_pad=True`` one operand has `length` digits and the other any value below 10^length
(so operands of unequal length occur), both written with leading zeros to the longer one's
digits, and the answer with one digit more: every problem of a length has the same layout, and
``999+1`` is written ``999+001`` (the probe setup of issue 5 and Lee et al. 2023)::

    direct       123+45=               -> 168
    reversed     321+54=               -> 861
    scratchpad   123+45=               -> 3+5+0=8;2+4+0=6;1+0+0=1|168
    scratchpad   999+1=                -> 9+1+0=10;9+0+1=10;9+0+1=10|1000
    index_hints  c1b2a3+b4a5=          -> c1b6a8
    coupled      321+54=               -> 861     (text of reversed, plus position ids)
                 1 2 3 0 1 2 0         -> 1 2 3 0 (the last id is EOS's)
    (pad=True)   123+456=              -> 0579
    (zero_pad)   123+45=               -> 123+045= -> 0168

multiplication (O(N..N^2); all five formats), a `length`-digit times a `k`-digit operand
(parameter k, default 1). The scratchpad lists one partial product per digit of the second
operand, from the units up (the digit times its place value), and the answer is their sum::

    direct       123*45=               -> 5535
    reversed     321*54=               -> 5355
    scratchpad   123*45=               -> 123*5=615;123*40=4920|5535
    index_hints  c1b2a3*b4a5=          -> d5c5b3a5
    coupled      321*54=               -> 5355
                 1 2 3 0 1 2 0         -> 1 2 3 4 0

Every task with ``index_hints`` takes ``random_hints=True``: the hints start at a letter picked
per problem (registry.hint_start) instead of ``a``, so letters beyond the trained lengths occur
in training (Zhou et al. 2024)::

    index_hints  c1b2a3+b4a5=  (random_hints: start 4 for 123+45) -> g1f2e3+f4e5= -> g1f6e8

Coupled position ids (registry.coupled_ids, both tasks): the j-th least significant digit of
each operand and of the answer gets id j, every other character and EOS get 0, so the digits
that combine into an answer digit of addition share its id (a_j, b_j -> c_j, with the carry from
id j - 1). Multiplication follows the same rule, but answer digit j depends on every pair
(a_i, b_{j+1-i}), so the ids align only some of its inputs with it (with k = 1: a_j, while b's one
digit sits at id 1, out of reach of a position window (model.window) for j > window). Addition is
the task position coupling is made for.

Problems passed to `render`: a digit string (copy, reverse), a bit string (parity), a pair of
non-negative ints (addition, multiplication).
"""

from __future__ import annotations

import random
import string
from typing import Any

from lengthwise.tasks.registry import (
    Item,
    Task,
    coupled_ids,
    hint_number,
    hint_string,
    is_digits,
    parse_number,
    register,
    split_hinted,
)

__all__ = ["Addition", "Copy", "Multiplication", "Parity", "Reverse"]


def _operand(rng: random.Random, digits: int) -> int:
    """A uniformly drawn `digits`-digit number (0-9 when digits == 1)."""
    if digits == 1:
        return rng.randint(0, 9)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def _pair(problem: Any) -> tuple[int, int]:
    a, b = problem
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (a, b)):
        raise ValueError(f"operands must be non-negative ints, got {problem!r}")
    return a, b


def _check_bool(task: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{task}: {name} must be true or false, got {value!r}")


class _DigitString(Task):
    complexity = "O(N)"
    formats = ("direct", "index_hints")
    chars = string.digits

    def __init__(self, random_hints: bool = False) -> None:
        _check_bool(self.name, "random_hints", random_hints)
        self.random_hints = random_hints

    @property
    def params(self) -> dict[str, Any]:
        return {"random_hints": self.random_hints}

    def _hints(self, s: str) -> str:
        return hint_string(s, self._hint_start(f"{self.name}:{s}"))

    def sample(self, rng: random.Random, length: int) -> str:
        self._check_length(length)
        return "".join(rng.choice(self.chars) for _ in range(length))

    def _validate(self, problem: Any) -> str:
        if not isinstance(problem, str) or not problem or any(c not in self.chars for c in problem):
            raise ValueError(f"task '{self.name}' needs a non-empty string of {self.chars!r}")
        return problem

    def _prompt(self, s: str, fmt: str) -> str:
        return f"{self.name}:{self._hints(s) if fmt == 'index_hints' else s}="


@register
class Copy(_DigitString):
    name = "copy"

    def _transform(self, pairs: list[str]) -> list[str]:
        return pairs

    def render(self, problem: str, fmt: str) -> Item:
        self._check_fmt(fmt)
        s = self._validate(problem)
        if fmt == "index_hints":
            h = self._hints(s)
            answer = "".join(self._transform([h[i : i + 2] for i in range(0, len(h), 2)]))
        else:
            answer = "".join(self._transform(list(s)))
        return self._item(fmt, len(s), self._prompt(s, fmt), answer, f"{self.name}:{s}", (s,))

    def parse(self, text: str, fmt: str) -> str | None:
        if fmt == "index_hints":
            return text if split_hinted(text) else None
        return text if is_digits(text) else None


@register
class Reverse(Copy):
    name = "reverse"

    def _transform(self, pairs: list[str]) -> list[str]:
        return pairs[::-1]


@register
class Parity(_DigitString):
    name = "parity"
    formats = ("direct", "scratchpad", "index_hints")
    chars = "01"

    def render(self, problem: str, fmt: str) -> Item:
        self._check_fmt(fmt)
        s = self._validate(problem)
        running, steps = 0, []
        for c in s:
            running ^= c == "1"
            steps.append(str(int(running)))
        answer = str(int(running))
        key = f"{self.name}:{s}"
        return self._item(fmt, len(s), self._prompt(s, fmt), answer, key, (s,), steps)

    def parse(self, text: str, fmt: str) -> int | None:
        return int(text) if text in ("0", "1") else None


class _Arithmetic(Task):
    formats = ("direct", "reversed", "scratchpad", "index_hints", "coupled")
    op: str

    def positions_for(self, prompt: str, completion: str) -> list[int]:
        return coupled_ids(prompt + completion)

    def _number(self, digits: str, fmt: str, start: int) -> str:
        if fmt in ("reversed", "coupled"):
            return digits[::-1]
        if fmt == "index_hints":
            return hint_number(digits, start)
        return digits

    def _render(
        self, a: int, b: int, result: str, fmt: str, length: int, steps: list[str], width: int = 0
    ) -> Item:
        """`width`: both operands written with leading zeros to that many digits (zero_pad; the
        key shows them too, the terms do not)."""
        sa, sb = str(a), str(b)
        key = f"{self.name}:{sa.zfill(width)}{self.op}{sb.zfill(width)}"
        start = self._hint_start(key)
        pa, pb = (self._number(x.zfill(width), fmt, start) for x in (sa, sb))
        prompt = f"{pa}{self.op}{pb}="
        answer = self._number(result, fmt, start)
        return self._item(fmt, length, prompt, answer, key, (sa, sb), steps)

    def parse(self, text: str, fmt: str) -> Any:
        return parse_number(text, fmt)


@register
class Addition(_Arithmetic):
    name = "addition"
    complexity = "O(N)"
    op = "+"

    def __init__(self, pad: bool = False, zero_pad: bool = False, random_hints: bool = False):
        for name, value in (("pad", pad), ("zero_pad", zero_pad), ("random_hints", random_hints)):
            _check_bool("addition", name, value)
        self.pad, self.zero_pad, self.random_hints = pad, zero_pad, random_hints

    @property
    def params(self) -> dict[str, Any]:
        return {"pad": self.pad, "zero_pad": self.zero_pad, "random_hints": self.random_hints}

    def sample(self, rng: random.Random, length: int) -> tuple[int, int]:
        self._check_length(length)
        if not self.zero_pad:
            return _operand(rng, length), _operand(rng, length)
        # one operand of exactly `length` digits, the other any number below 10^length
        full, other = _operand(rng, length), rng.randrange(10**length)
        return (full, other) if rng.random() < 0.5 else (other, full)

    def render(self, problem: tuple[int, int], fmt: str) -> Item:
        self._check_fmt(fmt)
        a, b = _pair(problem)
        n = max(len(str(a)), len(str(b)))
        result = str(a + b)
        if self.pad or self.zero_pad:
            result = result.zfill(n + 1)
        steps, carry = [], 0
        for i in range(n):
            x, y = a // 10**i % 10, b // 10**i % 10
            total = x + y + carry
            steps.append(f"{x}+{y}+{carry}={total}")
            carry = total // 10
        return self._render(a, b, result, fmt, n, steps, n if self.zero_pad else 0)


@register
class Multiplication(_Arithmetic):
    name = "multiplication"
    complexity = "O(N..N^2)"
    op = "*"

    def __init__(self, k: int = 1, random_hints: bool = False) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"multiplication: k must be an int >= 1, got {k!r}")
        _check_bool("multiplication", "random_hints", random_hints)
        self.k, self.random_hints = k, random_hints

    @property
    def params(self) -> dict[str, Any]:
        return {"k": self.k, "random_hints": self.random_hints}

    def sample(self, rng: random.Random, length: int) -> tuple[int, int]:
        self._check_length(length)
        return _operand(rng, length), _operand(rng, self.k)

    def render(self, problem: tuple[int, int], fmt: str) -> Item:
        self._check_fmt(fmt)
        a, b = _pair(problem)
        steps = []
        for j, d in enumerate(reversed(str(b))):
            m = int(d) * 10**j
            steps.append(f"{a}*{m}={a * m}")
        return self._render(a, b, str(a * b), fmt, len(str(a)), steps)
