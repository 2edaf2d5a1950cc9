"""The task contract: `Item`, the `Task` base class, the registry, `generate_items`, `alphabet`.

A task draws a *problem* at a given length (`Task.sample`), renders it in one of its formats
(`Task.render` -> `Item`) and checks a model's generated completion against it (`Task.check`).
Everything here is pure Python and deterministic from a seed; the package sits at the bottom of
the import graph (no torch, no lengthwise.data/model/train).

Shared syntax (character-level, every character is in `alphabet()`):

- A prompt always ends with ``=``; it gets no loss. The completion follows directly.
- ``direct``       the plain answer:                 ``123+45=`` -> ``168``
- ``reversed``     every number least-significant digit first (operands and answer):
                                                      ``321+54=`` -> ``861``
- ``scratchpad``   steps separated by ``;``, then ``|``, then the answer exactly as in
                   ``direct``; only the text after the last ``|`` is checked:
                                                      ``123+45=`` -> ``3+5+0=8;2+4+0=6;1+0+0=1|168``
- ``index_hints``  every digit is preceded by a hint letter. For numbers the letter names the
                   digit's significance (``a`` = units, ``b`` = tens, ...), so digits that must be
                   combined share a letter across operands and answer; for digit strings (copy,
                   reverse, parity) it names the position from the left. Hints run ``a``-``z``
                   then ``A``-``Z`` and wrap around after 52 positions. With a task's
                   ``random_hints`` the sequence starts at a letter picked per problem
                   (`hint_start`: a fixed hash of the problem's key) instead of ``a``, so
                   training at short lengths shows every letter (Zhou et al. 2024, arXiv
                   2402.09371); the answer's hints start where the operands' do.
                                                      ``c1b2a3+b4a5=`` -> ``c1b6a8``
- ``coupled``      the text of ``reversed`` plus position ids (position coupling, Cho et al. 2024,
                   arXiv 2405.20671): ``Item.positions`` gives every character of prompt +
                   completion, then EOS, an id. Each maximal run of digits is a number written
                   least-significant digit first, so its j-th digit (1-based) has significance j
                   and gets id j: digits of equal significance share an id across operands and
                   answer. Every other character (``+``, ``*``, ``=``, a task prefix) and the EOS
                   that ends the document get id 0::

                       text  3 2 1 + 5 4 = 8 6 1 <eos>      (123 + 45 = 168)
                       ids   1 2 3 0 1 2 0 1 2 3 0

                   The ids are canonical (no offset); the paper's random starting id is a
                   training-time shift of every id of a row (batching.position_offset_max),
                   which keeps equal ids equal and differences unchanged. The rule reads the
                   text alone, so `Task.positions_for(prompt, completion_so_far)` gives
                   generation the id of each character as it is written (the k-th answer digit
                   gets id k). Only tasks whose `formats` list ``coupled`` implement it.

`check` returns ``(parsed, correct)``: ``parsed`` is False when the text (whitespace stripped)
does not fit the answer grammar of the item's format (``12a`` for a number, empty text, a
scratchpad without ``|``); a parsed answer is correct when it means the expected answer after
converting back (reversed digits, hints removed; numbers compare by value, so leading zeros are
tolerated; hinted numbers also need the right hints). Unordered answers (the sum tasks) compare
as multisets.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

FORMATS = ("direct", "reversed", "scratchpad", "index_hints", "coupled")

# The complexity ladder after Scylla (arXiv 2410.01769): complexity class -> level.
COMPLEXITIES = ("O(N)", "O(N..N^2)", "O(N^2..N^3)", "O(N^3..N^4)", "O(2^N)")
LEVELS = {c: i for i, c in enumerate(COMPLEXITIES)}

HINTS = string.ascii_lowercase + string.ascii_uppercase  # index-hint letters, in order
STEP_SEP = ";"  # between scratchpad steps
ANSWER_SEP = "|"  # between the scratchpad steps and the final answer
LIST_SEP = ","  # between list elements
PUNCTUATION = "+*=:,;|-"  # every non-alphanumeric character a task may write

EOS_POSITION = 0  # coupled format: the id of the EOS that ends every document

MAX_TRIES = 1000  # fresh-item attempts per item before generate_items gives up

VALUES = ("all", "seen", "unseen")  # generate_items(values=...): which held-out terms to allow
HELDOUT_FRACTION = 0.1  # default share of terms held out of training (values="seen")

_DIGITS = re.compile(r"\d+")
_HINTED = re.compile(r"(?:[A-Za-z]\d)+")


@dataclass(frozen=True)
class Item:
    """One rendered problem. `prompt` gets no loss; `completion` (scratchpad steps, if any, then
    the answer) gets loss, and the token store appends EOS after it."""

    task: str  # registry name
    length: int  # the task's length knob (digits per operand, bits, list size)
    fmt: str  # one of FORMATS
    prompt: str
    completion: str
    answer: str  # the final answer text, as it appears at the end of `completion`
    key: str  # the problem's identity, the same in every format (e.g. "addition:123+45")
    terms: tuple[str, ...]  # operands as decimal strings, or list numbers
    # ``coupled`` format only: a position id per character of prompt + completion, then one for
    # the EOS the token store appends (len(prompt) + len(completion) + 1 values); else None
    positions: tuple[int, ...] | None = None


class _Bad:
    """A parsed answer that can never be correct (e.g. a hinted number with wrong hints)."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = None  # type: ignore[assignment]


BAD = _Bad()


class Task:
    """Abstract base of every task. Subclasses set `name`, `complexity` (one of COMPLEXITIES),
    `formats`, optionally `min_length`, and implement `sample`, `render` and `parse`."""

    name: ClassVar[str]
    complexity: ClassVar[str]
    formats: ClassVar[tuple[str, ...]] = ("direct",)
    min_length: int = 1
    random_hints: bool = False  # index_hints tasks: start the hints at `hint_start(key)`

    @property
    def level(self) -> int:
        """Rank on the complexity ladder (0 = cheapest)."""
        return LEVELS[self.complexity]

    @property
    def params(self) -> dict[str, Any]:
        """The constructor parameters (what get_task(name, **params) needs to rebuild it)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    # --- to implement ------------------------------------------------------------------------

    def sample(self, rng: random.Random, length: int) -> Any:
        """A problem of the given length, drawn with `rng` only."""
        raise NotImplementedError

    def render(self, problem: Any, fmt: str) -> Item:
        """The problem as an Item in format `fmt`."""
        raise NotImplementedError

    def parse(self, text: str, fmt: str) -> Any:
        """The canonical value of an answer text (already stripped; for scratchpad, the part
        after the last separator) in format `fmt`, or None when it does not parse."""
        raise NotImplementedError

    def with_pool(self, pool: Iterable[int]) -> Task:
        """A copy drawing its values from `pool` (Scylla's ID/OOD value split); only the list
        tasks (lengthwise.tasks.lists) have value pools, every other task raises ValueError."""
        raise ValueError(f"task '{self.name}' has no value pool (only list tasks do)")

    def positions_for(self, prompt: str, completion: str) -> list[int]:
        """``coupled`` position ids of every character of `prompt` + `completion` (one id per
        character; `completion` may be partial, as during generation, and the ids of its
        characters never depend on what follows them). Tasks without the format raise."""
        raise ValueError(f"task '{self.name}' has no format 'coupled'")

    # --- shared ------------------------------------------------------------------------------

    def check(self, item: Item, generated: str) -> tuple[bool, bool]:
        """(parsed, correct) for a generated completion (the text after the prompt, EOS
        stripped). For scratchpad items only the answer after the last ``|`` counts."""
        if item.task != self.name:
            raise ValueError(f"item of task '{item.task}' checked by task '{self.name}'")
        text = generated.strip()
        if item.fmt == "scratchpad":
            if ANSWER_SEP not in text:
                return False, False
            text = text.rsplit(ANSWER_SEP, 1)[1].strip()
        got = self.parse(text, item.fmt)
        if got is None:
            return False, False
        return True, bool(got == self.parse(item.answer, item.fmt))

    def _check_fmt(self, fmt: str) -> None:
        if fmt not in self.formats:
            raise ValueError(
                f"task '{self.name}' has no format '{fmt}' (choose from {', '.join(self.formats)})"
            )

    def _hint_start(self, key: str) -> int:
        """Index of the first hint letter of the problem `key` (0 = ``a`` without random_hints)."""
        return hint_start(key) if self.random_hints else 0

    def _check_length(self, length: int) -> None:
        if not isinstance(length, int) or length < self.min_length:
            raise ValueError(f"task '{self.name}' needs length >= {self.min_length}, got {length}")

    def _item(
        self,
        fmt: str,
        length: int,
        prompt: str,
        answer: str,
        key: str,
        terms: Sequence[str],
        steps: Sequence[str] = (),
    ) -> Item:
        completion = answer
        if fmt == "scratchpad":
            completion = STEP_SEP.join(steps) + ANSWER_SEP + answer
        positions = None
        if fmt == "coupled":
            positions = (*self.positions_for(prompt, completion), EOS_POSITION)
        return Item(
            self.name, length, fmt, prompt, completion, answer, key, tuple(terms), positions
        )


# --- registry ----------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make a Task subclass available to get_task under `cls.name`."""
    if cls.name in _REGISTRY:
        raise ValueError(f"task '{cls.name}' registered twice")
    if cls.complexity not in LEVELS:
        raise ValueError(f"task '{cls.name}': unknown complexity {cls.complexity!r}")
    if "direct" not in cls.formats or not set(cls.formats) <= set(FORMATS):
        raise ValueError(f"task '{cls.name}': bad formats {cls.formats}")
    _REGISTRY[cls.name] = cls
    return cls


def task_names() -> list[str]:
    """Registered task names, in registration order (arithmetic first, then the ladder)."""
    return list(_REGISTRY)


def get_task(name: str, **params: Any) -> Task:
    """The task `name` built with `params` (e.g. get_task("multiplication", k=2)).
    Unknown names and bad parameters raise ValueError."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown task '{name}' (choose from {', '.join(_REGISTRY)})")
    try:
        return cls(**params)
    except TypeError as e:
        raise ValueError(f"task '{name}': bad parameters {params} ({e})") from None


# --- generation --------------------------------------------------------------------------------


def generate_items(
    task: str | Task,
    lengths: tuple[int, int] | Sequence[int],
    n: int,
    fmt: str,
    seed: int,
    exclude: set[str] | None = None,
    values: str = "all",
    heldout: float = HELDOUT_FRACTION,
    **params: Any,
) -> Iterator[Item]:
    """`n` items of `task` in format `fmt`, deterministic from `seed` (the same seed gives the
    same problems in every format).

    `lengths`: a tuple ``(lo, hi)`` draws each item's length uniformly from lo..hi inclusive; any
    other sequence (e.g. a list) is cycled, item i having length ``lengths[i % len(lengths)]``.
    `exclude`: problem keys to skip (the item is redrawn at the same length); ValueError when no
    fresh problem turns up in MAX_TRIES draws.
    `values`: ``all`` draws freely; ``seen`` redraws problems with any held-out term (a training
    set that never shows those values); ``unseen`` keeps only problems with at least one (an
    eval set of unseen values). `heldout` is the share of terms held out (`is_heldout`).
    Arguments are checked at the call; items are then produced lazily.
    """
    if isinstance(task, Task):
        if params:
            raise ValueError("task parameters go with a task name, not a Task instance")
        t = task
    else:
        t = get_task(task, **params)
    t._check_fmt(fmt)
    if isinstance(lengths, tuple):
        if len(lengths) != 2 or lengths[0] > lengths[1]:
            raise ValueError(f"lengths must be (lo, hi) with lo <= hi, got {lengths}")
        choices = list(range(lengths[0], lengths[1] + 1))
        cycle = False
    else:
        choices = list(lengths)
        if not choices:
            raise ValueError("lengths is empty")
        cycle = True
    for length in choices:
        t._check_length(length)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if values not in VALUES:
        raise ValueError(f"values must be one of {', '.join(VALUES)}, got {values!r}")
    if not 0 < heldout < 1:
        raise ValueError(f"heldout must be in (0, 1), got {heldout}")
    keep = _value_filter(values, heldout)
    return _generate(t, choices, cycle, n, fmt, seed, exclude or set(), keep)


def is_heldout(term: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """Whether a term (an operand, a list number, a digit string: `Item.terms`) belongs to the
    held-out share `fraction` of all terms. A fixed hash of the term's text decides, so the
    split is the same in every task, run and process: with list values 0..99 about 10 numbers
    are held out, with n-digit operands about a tenth of them."""
    digest = hashlib.blake2b(term.encode(), digest_size=8, person=b"lw.heldout").digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def _value_filter(values: str, fraction: float) -> Callable[[Item], bool]:
    if values == "seen":
        return lambda item: not any(is_heldout(t, fraction) for t in item.terms)
    if values == "unseen":
        return lambda item: any(is_heldout(t, fraction) for t in item.terms)
    return lambda item: True


def _generate(
    task: Task,
    choices: list[int],
    cycle: bool,
    n: int,
    fmt: str,
    seed: int,
    exclude: set[str],
    keep: Callable[[Item], bool],
) -> Iterator[Item]:
    rng = random.Random(f"lengthwise.tasks:{task.name}:{seed}")
    for i in range(n):
        length = choices[i % len(choices)] if cycle else rng.choice(choices)
        for _ in range(MAX_TRIES):
            item = task.render(task.sample(rng, length), fmt)
            if item.key not in exclude and keep(item):
                yield item
                break
        else:
            raise ValueError(
                f"task '{task.name}': no fresh item of length {length} with the requested values "
                f"in {MAX_TRIES} draws ({len(exclude)} keys excluded)"
            )


def alphabet() -> str:
    """Every character any task can write in any format, sorted: digits, hint letters (which
    also cover task-name prefixes) and PUNCTUATION. No special-token characters needed."""
    return "".join(sorted(set(string.digits + HINTS + PUNCTUATION)))


# --- format helpers shared by the task modules -------------------------------------------------


def hint_number(digits: str, start: int = 0) -> str:
    """Hints by significance: "123" -> "c1b2a3" (a = units); with start 3, "f1e2d3"."""
    n = len(digits)
    return "".join(HINTS[(start + n - 1 - i) % len(HINTS)] + d for i, d in enumerate(digits))


def hint_string(chars: str, start: int = 0) -> str:
    """Hints by position from the left: "123" -> "a1b2c3"; with start 3, "d1e2f3"."""
    return "".join(HINTS[(start + i) % len(HINTS)] + c for i, c in enumerate(chars))


def hint_start(key: str) -> int:
    """The first hint letter's index for a problem under ``random_hints``: a fixed hash of its
    key (`Item.key`), so a problem renders the same in every run, prompt and answer agree, and
    the starts are spread evenly over the 52 letters."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"lw.hints").digest()
    return int.from_bytes(digest, "big") % len(HINTS)


def split_hinted(text: str) -> tuple[str, str] | None:
    """("cba", "123") for "c1b2a3"; None when the text is not (letter digit)+."""
    if not _HINTED.fullmatch(text):
        return None
    return text[0::2], text[1::2]


def coupled_ids(text: str) -> list[int]:
    """The ``coupled`` rule: the j-th digit (1-based) of each maximal run of digits gets id j,
    every other character 0. "321+54=861" -> [1, 2, 3, 0, 1, 2, 0, 1, 2, 3]."""
    ids, run = [], 0
    for c in text:
        run = run + 1 if c in string.digits else 0
        ids.append(run)
    return ids


def parse_number(text: str, fmt: str) -> int | _Bad | None:
    """A non-negative integer written in `fmt` (scratchpad answers are written as direct;
    coupled as reversed)."""
    if fmt == "index_hints":
        parts = split_hinted(text)
        if parts is None:
            return None
        hints, digits = parts  # any start (random_hints), but consecutive down to the units
        start = HINTS.index(hints[-1])
        return int(digits) if hint_number(digits, start)[0::2] == hints else BAD
    if not _DIGITS.fullmatch(text):
        return None
    return int(text[::-1] if fmt in ("reversed", "coupled") else text)


def parse_int_list(text: str) -> tuple[int, ...] | None:
    """(5, 3, 9) for "5,3,9" (spaces around elements allowed); None otherwise."""
    parts = [p.strip() for p in text.split(LIST_SEP)]
    if not all(_DIGITS.fullmatch(p) for p in parts):
        return None
    return tuple(int(p) for p in parts)


def is_digits(text: str) -> bool:
    return bool(_DIGITS.fullmatch(text))
