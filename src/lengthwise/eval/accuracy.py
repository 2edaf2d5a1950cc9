"""Exact-match accuracy of task items under greedy decoding, for any EvalLM.

Every item counts in the denominator: an answer that does not parse is wrong, and the parse
rate is reported next to the accuracy (Scylla drops unparseable answers from the denominator,
which inflates accuracy; we do not).

Items that carry position ids (the `coupled` format, `Item.positions`) are decoded with the
task's ids (`lm.greedy_with_positions`, which a lengthwise GPT has) so that generation sees the
positions training saw. An EvalLM without that method (a Hugging Face model) ignores coupling
and decodes the same text with its own positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lengthwise.eval.lm import EvalLM
from lengthwise.tasks import Item, Task


@dataclass
class TaskScore:
    correct: int = 0
    parsed: int = 0
    total: int = 0
    per_item: list[bool] = field(default_factory=list)  # in item order
    outputs: list[str] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)  # per item, as the model reads it
    generated_tokens: list[int] = field(default_factory=list)  # per item, stop token excluded

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    @property
    def parse_rate(self) -> float:
        return self.parsed / self.total if self.total else float("nan")

    def to_dict(self) -> dict[str, float]:
        """Accuracy, parse rate and the inference cost per item: prompt and generated tokens
        (mean and max), which grow with few-shot demonstrations and with the problem."""
        return {
            "acc": self.accuracy,
            "parse_rate": self.parse_rate,
            "correct": self.correct,
            "parsed": self.parsed,
            "n": self.total,
            "prompt_tokens_mean": _mean(self.prompt_tokens),
            "prompt_tokens_max": max(self.prompt_tokens, default=0),
            "gen_tokens_mean": _mean(self.generated_tokens),
            "gen_tokens_max": max(self.generated_tokens, default=0),
        }


def _mean(xs: list[int]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def prompt_length(lm: EvalLM, prompt: str) -> int:
    """Tokens the model reads for a prompt: after an HF model's prompt template; an empty
    prompt is one start token."""
    template = getattr(lm, "prompt_template", "{prompt}")
    return len(lm.encode(template.replace("{prompt}", prompt))) or 1


def answer_budget(lm: EvalLM, items: list[Item]) -> int:
    """New tokens to generate: the longest expected completion plus one, so a correct answer
    must be followed by EOS (an answer with trailing junk does not parse as correct)."""
    return max((len(lm.encode(it.completion)) for it in items), default=0) + 1


def positions_needed(lm: Any, items: list[Item]) -> int:
    """Position ids greedy decoding of `items` uses: the task's ids (the coupled format), else
    prompt plus answer budget (the last generated token is never fed back)."""
    if items and all(it.positions is not None for it in items):
        return max(max(it.positions) for it in items) + 1  # type: ignore[arg-type]
    budget = answer_budget(lm, items)
    return max((len(lm.encode(it.prompt)) for it in items), default=0) + budget - 1


def score_items(
    lm: EvalLM,
    task: Task,
    items: list[Item],
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    stop: str | None = None,
) -> TaskScore:
    """Greedy answers to every item, checked by the task (with the task's position ids when
    the items carry them and the model can use them), and the tokens each item cost: its prompt
    as the model reads it, and its answer re-encoded (the stop token not counted).

    `stop`: the answer ends at the first occurrence of this text (excluded), as an EOS would end
    it. Few-shot prompts in plain text need it: a model that learned the pattern goes on with
    the separator and the next problem (lm-eval-harness's ``until``)."""
    budget = max_new_tokens or answer_budget(lm, items)
    prompts = [it.prompt for it in items]
    coupled = bool(items) and all(it.positions is not None for it in items)
    if coupled and hasattr(lm, "greedy_with_positions"):
        outputs = lm.greedy_with_positions(
            prompts, task.positions_for, budget, batch_size=batch_size
        )
    else:
        outputs = lm.greedy(prompts, budget, batch_size=batch_size)
    if stop:
        outputs = [out.split(stop, 1)[0] for out in outputs]
    score = TaskScore()
    count = hasattr(lm, "encode")  # stand-in models of tests may only `greedy`: no counts
    for item, out in zip(items, outputs, strict=True):
        parsed, correct = task.check(item, out)
        score.total += 1
        score.parsed += bool(parsed)
        score.correct += bool(correct)
        score.per_item.append(bool(correct))
        score.outputs.append(out)
        if count:
            score.prompt_tokens.append(prompt_length(lm, item.prompt))
            score.generated_tokens.append(len(lm.encode(out)))
    return score
