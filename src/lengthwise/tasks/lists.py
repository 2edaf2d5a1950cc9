"""The complexity ladder after Scylla (arXiv 2410.01769): list tasks with one valid answer.

`length` is the list size N. Prompts are ``PREFIX:LIST=`` (the sum tasks: ``PREFIX:TARGET:LIST=``,
kth_largest: ``kth:K:LIST=``) with list numbers in decimal, separated by ``,``. Answers are a number
or a ``,``-separated list::

    task               prefix     complexity   level  answer
    min                min        O(N)         0      smallest value
    max                max        O(N)         0      largest value
    mode               mode       O(N)         0      the most frequent value (unique)
    kth_largest        kth        O(N..N^2)    1      the K-th largest value (K in the prompt)
    top_k (k=3)        top3       O(N..N^2)    1      the k largest values, largest first
    sort               sort       O(N..N^2)    1      values ascending
    remove_duplicates  dedup      O(N..N^2)    1      first occurrences, in input order
    two_sum            2sum       O(N..N^2)    1      the unique pair summing to TARGET
    three_sum          3sum       O(N^2..N^3)  2      the unique triple summing to TARGET
    four_sum           4sum       O(N^3..N^4)  3      the unique quadruple summing to TARGET
    subset_sum         subsetsum  O(2^N)       4      the unique subset summing to TARGET

Sum-task answers are the chosen values in ascending order, and `check` compares them as a
multiset (any order is correct). Uniqueness is over positions: exactly one set of list positions
(of size 2/3/4 for two/three/four-sum, of any non-zero size for subset-sum) sums to the target.

`LADDER` (the suite the generalization valley walks) uses kth_largest, not top_k: it is
Scylla's FindTopk (K drawn per problem from 2..N//2, answer ``sorted(values, reverse=True)[K-1]``),
so ladder results are comparable with Scylla's. top_k (k fixed per task, the k largest values) stays
registered for configs that name it.

Formats (every task: direct; min, max, kth_largest, two_sum: also scratchpad; no reversed or
index_hints)::

    direct       min:5,3,9=            -> 3
    scratchpad   min:5,3,9=            -> 5;3;3|3          (running minimum)
    scratchpad   max:5,3,9=            -> 5;5;9|9          (running maximum)
    direct       mode:5,3,5,7=         -> 5
    direct       kth:2:5,3,9,1=        -> 5
    scratchpad   kth:2:5,3,9,1=        -> 9;5|5            (1st..K-th largest, one per step)
    direct       top3:5,3,9,1=         -> 9,5,3
    direct       sort:5,3,9=           -> 3,5,9
    direct       dedup:3,5,3,9=        -> 3,5,9
    direct       2sum:9:3,8,1,5=       -> 1,8
    scratchpad   2sum:9:3,8,1,5=       -> 9-3=6;9-8=1;9-1=8|1,8
    direct       3sum:12:3,8,1,5,2=    -> 1,3,8
    direct       4sum:17:3,8,1,5,2=    -> 1,3,5,8
    direct       subsetsum:10:3,8,1,6= -> 1,3,6

The kth_largest scratchpad is selection by repeated maximum: step j is the j-th largest value
(duplicates count, ``kth:3:7,1,7,4=`` -> ``7;7;4|4``), so there are K steps and the last is the
answer. The two-sum scratchpad is the one-pass hash-set algorithm: for each element x in order it
writes ``TARGET-x=complement`` and stops at the first x whose complement occurred earlier.

Value ranges (uniform draws):

- min, max, mode, kth_largest, top_k, sort: 0..99. Mode: when the most frequent value is tied,
  one element that is not the chosen value is replaced by it, which makes it the unique mode.
- remove_duplicates: 0..min(99, max(1, N-1)), so that lists of any size have duplicates.
- sum tasks: 1..V with V = max(99, 2N) (two_sum), max(99, N^2 // 4) (three_sum),
  max(99, N^3 // 16) (four_sum), max(99, 2^N // N) (subset_sum); values grow with N so that a
  unique solution stays typical. Generation picks the solution values, sets the target to their
  sum, then adds the other elements one at a time, rejecting any value that would complete a
  second solution (tracked exactly with the sums of all smaller subsets), and finally shuffles.
  Since all values are positive, the solution is the only subset that sums to the target.

Value pools (`_ListTask.with_pool`, for Scylla's ID/OOD protocol: in-distribution values are
those a pretrained model writes when asked for test inputs, out-of-distribution ones the rest of
the range): a copy of the task that draws every value uniformly from the pool's values inside the
range above; every other draw (K, mode's tie-break, subset size, shuffle) keeps its distribution.
A pooled item is an ordinary item (same key, rendering and checking). A pool with no value in the
range, or too few for a sum task to build a unique-solution list, raises ValueError at the draw.
Without a pool (the default) a seed draws exactly what it drew before pools existed.

Problems passed to `render`: a tuple of non-negative ints; for kth_largest a ``(k, values)`` pair
(1 <= k <= N); for the sum tasks ``SumProblem(target, values)`` (or a plain ``(target, values)``
pair), solved by brute force, which raises ValueError when no or several solutions exist.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import math
import random
from collections import Counter
from collections.abc import Iterable
from typing import Any, NamedTuple

from lengthwise.tasks.registry import (
    LIST_SEP,
    Item,
    Task,
    is_digits,
    parse_int_list,
    register,
)

__all__ = [
    "LADDER",
    "FindMax",
    "FindMin",
    "FourSum",
    "KthLargest",
    "Mode",
    "RemoveDuplicates",
    "Sort",
    "SubsetSum",
    "SumProblem",
    "ThreeSum",
    "TopK",
    "TwoSum",
]

# The ladder tasks, cheapest first (the generalization-valley suite walks these).
LADDER = (
    "min",
    "max",
    "mode",
    "kth_largest",
    "sort",
    "remove_duplicates",
    "two_sum",
    "three_sum",
    "four_sum",
    "subset_sum",
)

BRUTE_FORCE_LIMIT = 2_000_000  # candidate subsets render() may enumerate for a hand-written problem


def _join(values: Any) -> str:
    return LIST_SEP.join(str(v) for v in values)


class _ListTask(Task):
    """A task on a list of non-negative ints. Subclasses set `answer_kind` and implement
    `solve(values) -> (answer values, scratchpad steps)`."""

    prefix: str
    answer_kind: str  # "int" | "list" (ordered) | "multiset"
    value_min = 0
    value_max = 99
    pool: tuple[int, ...] | None = None  # sorted distinct values to draw from; None: the range

    def _values_max(self, length: int) -> int:
        return self.value_max

    def with_pool(self, pool: Iterable[int]) -> _ListTask:
        """A copy of this task whose value draws come from `pool` (restricted to the range it
        would otherwise draw from); keys, rendering and checking are unchanged."""
        distinct = set(pool)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in distinct):
            raise ValueError(f"task '{self.name}': a value pool holds ints, got {distinct!r}")
        values = tuple(sorted(distinct))
        if not values or values[-1] < self.value_min:
            raise ValueError(
                f"task '{self.name}': the value pool ({len(values)} values) has none "
                f">= {self.value_min}"
            )
        task = copy.copy(self)
        task.pool = values
        return task

    def _draw_value(self, rng: random.Random, lo: int, hi: int) -> int:
        """One value uniform in lo..hi, or in the pool's values there: the one place that
        knows about the pool (without one, exactly the draw tasks made before pools)."""
        if self.pool is None:
            return rng.randint(lo, hi)
        i, j = bisect.bisect_left(self.pool, lo), bisect.bisect_right(self.pool, hi)
        if i == j:
            raise ValueError(
                f"task '{self.name}': the value pool ({len(self.pool)} values) has none "
                f"in {lo}..{hi}"
            )
        return self.pool[i + rng.randrange(j - i)]

    def sample(self, rng: random.Random, length: int) -> tuple[int, ...]:
        self._check_length(length)
        hi = self._values_max(length)
        return tuple(self._draw_value(rng, self.value_min, hi) for _ in range(length))

    def _validate(self, values: Any) -> tuple[int, ...]:
        values = tuple(values)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ValueError(f"task '{self.name}' needs non-negative ints, got {values!r}")
        self._check_length(len(values))
        return values

    def _key_name(self) -> str:
        return self.name

    def solve(self, values: tuple[int, ...]) -> tuple[Any, list[str]]:
        raise NotImplementedError

    def render(self, problem: Any, fmt: str) -> Item:
        self._check_fmt(fmt)
        values = self._validate(problem)
        body = _join(values)
        result, steps = self.solve(values)
        answer = str(result) if self.answer_kind == "int" else _join(result)
        key = f"{self._key_name()}:{body}"
        terms = tuple(str(v) for v in values)
        return self._item(fmt, len(values), f"{self.prefix}:{body}=", answer, key, terms, steps)

    def parse(self, text: str, fmt: str) -> Any:
        if self.answer_kind == "int":
            return int(text) if is_digits(text) else None
        values = parse_int_list(text)
        if values is None or self.answer_kind == "list":
            return values
        return tuple(sorted(values))


@register
class FindMin(_ListTask):
    name = prefix = "min"
    complexity = "O(N)"
    formats = ("direct", "scratchpad")
    answer_kind = "int"

    def solve(self, values: tuple[int, ...]) -> tuple[int, list[str]]:
        running = list(itertools.accumulate(values, min))
        return running[-1], [str(v) for v in running]


@register
class FindMax(_ListTask):
    name = prefix = "max"
    complexity = "O(N)"
    formats = ("direct", "scratchpad")
    answer_kind = "int"

    def solve(self, values: tuple[int, ...]) -> tuple[int, list[str]]:
        running = list(itertools.accumulate(values, max))
        return running[-1], [str(v) for v in running]


@register
class Mode(_ListTask):
    name = prefix = "mode"
    complexity = "O(N)"
    answer_kind = "int"

    def sample(self, rng: random.Random, length: int) -> tuple[int, ...]:
        values = list(super().sample(rng, length))
        counts = Counter(values)
        top = max(counts.values())
        tied = sorted(v for v, c in counts.items() if c == top)
        if len(tied) > 1:
            mode = rng.choice(tied)
            others = [i for i, v in enumerate(values) if v != mode]
            values[rng.choice(others)] = mode
        return tuple(values)

    def solve(self, values: tuple[int, ...]) -> tuple[int, list[str]]:
        (mode, c1), *rest = Counter(values).most_common(2)
        if rest and rest[0][1] == c1:
            raise ValueError(f"mode: {values} has no unique mode")
        return mode, []


@register
class TopK(_ListTask):
    name = "top_k"
    complexity = "O(N..N^2)"
    answer_kind = "list"

    def __init__(self, k: int = 3) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"top_k: k must be an int >= 1, got {k!r}")
        self.k = k
        self.min_length = k
        self.prefix = f"top{k}"

    @property
    def params(self) -> dict[str, Any]:
        return {"k": self.k}

    def _key_name(self) -> str:
        return f"top_k[{self.k}]"

    def solve(self, values: tuple[int, ...]) -> tuple[list[int], list[str]]:
        return sorted(values, reverse=True)[: self.k], []


@register
class KthLargest(_ListTask):
    """Scylla's FindTopk: the K-th largest value, K drawn per problem from 2..N//2."""

    name = "kth_largest"
    prefix = "kth"
    complexity = "O(N..N^2)"
    formats = ("direct", "scratchpad")
    answer_kind = "int"
    min_length = 4  # N//2 >= 2

    def sample(self, rng: random.Random, length: int) -> tuple[int, tuple[int, ...]]:
        self._check_length(length)
        k = rng.randrange(2, length // 2 + 1)  # not a value draw: a pool never changes it
        return k, super().sample(rng, length)

    def render(self, problem: Any, fmt: str) -> Item:
        self._check_fmt(fmt)
        k, values = problem
        values = self._validate(values)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(values):
            raise ValueError(
                f"{self.name}: k must be an int in 1..{len(values)} (the list size), got {k!r}"
            )
        steps = [str(v) for v in sorted(values, reverse=True)[:k]]
        body = f"{k}:{_join(values)}"
        terms = tuple(str(v) for v in values)
        prompt, key = f"{self.prefix}:{body}=", f"{self.name}:{body}"
        return self._item(fmt, len(values), prompt, steps[-1], key, terms, steps)

    def solve(self, values: tuple[int, ...]) -> tuple[Any, list[str]]:
        raise TypeError(f"{self.name} problems are (k, values) pairs")


@register
class Sort(_ListTask):
    name = prefix = "sort"
    complexity = "O(N..N^2)"
    answer_kind = "list"

    def solve(self, values: tuple[int, ...]) -> tuple[list[int], list[str]]:
        return sorted(values), []


@register
class RemoveDuplicates(_ListTask):
    name = "remove_duplicates"
    prefix = "dedup"
    complexity = "O(N..N^2)"
    answer_kind = "list"

    def _values_max(self, length: int) -> int:
        return min(99, max(1, length - 1))

    def solve(self, values: tuple[int, ...]) -> tuple[list[int], list[str]]:
        return list(dict.fromkeys(values)), []


# --- sum tasks ---------------------------------------------------------------------------------


class SumProblem(NamedTuple):
    target: int
    values: tuple[int, ...]
    solution: tuple[int, ...] | None = None  # the answer values, ascending; None: solve


class _SumTask(_ListTask):
    answer_kind = "multiset"
    value_min = 1
    size: int | None  # elements in a solution; None: any non-zero number (subset-sum)

    def _values_max(self, length: int) -> int:
        raise NotImplementedError

    def sample(self, rng: random.Random, length: int) -> SumProblem:
        self._check_length(length)
        hi = self._values_max(length)
        for _ in range(100):
            found = self._build(rng, length, hi)
            if found is not None:
                return found
        if self.pool is not None:
            raise ValueError(
                f"task '{self.name}': no unique-solution list of length {length} from the value "
                f"pool ({len(self.pool)} values) in 100 tries; the pool is too small"
            )
        raise RuntimeError(f"{self.name}: no unique-solution list of length {length} found")

    def _build(self, rng: random.Random, n: int, hi: int) -> SumProblem | None:
        """Solution first, then other values that complete no second solution; None when
        too many candidates are rejected (the caller retries)."""
        if self.size is None:
            size = 0
            while size == 0:
                size = sum(rng.random() < 0.5 for _ in range(n))
        else:
            size = self.size
        solution = [self._draw_value(rng, self.value_min, hi) for _ in range(size)]
        target = sum(solution)
        values: list[int] = []
        if self.size is None:
            # bit s of `reach`: some subset of `values` sums to s (s <= target)
            mask, reach = (1 << (target + 1)) - 1, 1

            def fits(x: int) -> bool:
                return x > target or not reach >> (target - x) & 1

            def add(x: int) -> None:
                nonlocal reach
                reach = (reach | reach << x) & mask
                values.append(x)
        else:
            # sums[j]: sums below target of j-element subsets of `values`
            sums: list[set[int]] = [{0}] + [set() for _ in range(size - 1)]

            def fits(x: int) -> bool:
                return target - x not in sums[size - 1]

            def add(x: int) -> None:
                for j in range(size - 1, 0, -1):
                    sums[j].update(s + x for s in sums[j - 1] if s + x < target)
                values.append(x)

        for x in solution:
            add(x)
        for _ in range(20 * n):
            if len(values) == n:
                break
            x = self._draw_value(rng, self.value_min, hi)
            if fits(x):
                add(x)
        if len(values) < n:
            return None
        rng.shuffle(values)
        return SumProblem(target, tuple(values), tuple(sorted(solution)))

    def solutions(self, target: int, values: tuple[int, ...], limit: int = 2) -> list[tuple]:
        """Up to `limit` position sets summing to `target`, by brute force."""
        n = len(values)
        sizes = range(1, n + 1) if self.size is None else (self.size,)
        work = sum(math.comb(n, r) for r in sizes)
        if work > BRUTE_FORCE_LIMIT:
            raise ValueError(
                f"{self.name}: {work} subsets are too many to search; pass the solution "
                "in SumProblem(target, values, solution)"
            )
        found = []
        for r in sizes:
            for idx in itertools.combinations(range(n), r):
                if sum(values[i] for i in idx) == target:
                    found.append(idx)
                    if len(found) >= limit:
                        return found
        return found

    def render(self, problem: Any, fmt: str) -> Item:
        self._check_fmt(fmt)
        p = SumProblem(*problem)
        if not isinstance(p.target, int) or isinstance(p.target, bool) or p.target < 0:
            raise ValueError(f"{self.name}: target must be a non-negative int, got {p.target!r}")
        values = self._validate(p.values)
        solution = p.solution
        if solution is None:
            found = self.solutions(p.target, values)
            if len(found) != 1:
                raise ValueError(
                    f"{self.name}: {p.target} from {values} has "
                    f"{'no' if not found else 'more than one'} solution"
                )
            solution = tuple(sorted(values[i] for i in found[0]))
        body = f"{p.target}:{_join(values)}"
        steps = self._steps(p.target, values)
        terms = tuple(str(v) for v in values)
        prompt = f"{self.prefix}:{body}="
        key = f"{self.name}:{body}"
        return self._item(fmt, len(values), prompt, _join(solution), key, terms, steps)

    def _steps(self, target: int, values: tuple[int, ...]) -> list[str]:
        return []

    def solve(self, values: tuple[int, ...]) -> tuple[Any, list[str]]:
        raise TypeError(f"{self.name} problems are SumProblem(target, values)")


@register
class TwoSum(_SumTask):
    name = "two_sum"
    prefix = "2sum"
    complexity = "O(N..N^2)"
    formats = ("direct", "scratchpad")
    size = 2
    min_length = 2

    def _values_max(self, length: int) -> int:
        return max(99, 2 * length)

    def _steps(self, target: int, values: tuple[int, ...]) -> list[str]:
        seen: set[int] = set()
        steps = []
        for x in values:
            steps.append(f"{target}-{x}={target - x}")
            if target - x in seen:
                break
            seen.add(x)
        return steps


@register
class ThreeSum(_SumTask):
    name = "three_sum"
    prefix = "3sum"
    complexity = "O(N^2..N^3)"
    size = 3
    min_length = 3

    def _values_max(self, length: int) -> int:
        return max(99, length**2 // 4)


@register
class FourSum(_SumTask):
    name = "four_sum"
    prefix = "4sum"
    complexity = "O(N^3..N^4)"
    size = 4
    min_length = 4

    def _values_max(self, length: int) -> int:
        return max(99, length**3 // 16)


@register
class SubsetSum(_SumTask):
    name = "subset_sum"
    prefix = "subsetsum"
    complexity = "O(2^N)"
    size = None
    min_length = 1

    def _values_max(self, length: int) -> int:
        return max(99, 2**length // length)
