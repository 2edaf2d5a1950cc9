"""Few-shot prompts for the task suites (`lengthwise eval --shots K`).

K demonstrations are drawn with a fixed seed from the in-distribution length range, in the
task's format (a scratchpad demonstration shows its steps), and never share a problem key with a
test item: the test items are drawn after the demonstrations, excluding their keys. The rewrite
happens on the prompt text, before tokenization, so every EvalLM scores few-shot items unchanged;
`Task.check` reads the generated text as before (for scratchpad, the answer after the last
``|``). A chat template (Hugging Face tokenizers only, and only when asked) turns each
demonstration into a user/assistant turn pair and the test prompt into the last user turn.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lengthwise.errors import UserError
from lengthwise.tasks import Item, Task, generate_items

SEPARATOR = "\n"  # between demonstrations and before the test prompt (plain text prompts)


def check_format(task: Task, fmt: str, shots: int) -> None:
    """One line for a format the task lacks, and for coupled items with demonstrations (the
    task's position ids describe one problem, not a prompt of several)."""
    if fmt not in task.formats:
        raise UserError(
            f"--format {fmt}: task '{task.name}' has no such format "
            f"(choose from {', '.join(task.formats)})"
        )
    if shots and fmt == "coupled":
        raise UserError(
            f"--shots {shots}: the coupled format's position ids describe a single problem; "
            "use --shots 0 or another --format"
        )


def demonstrations(
    task: Task,
    lengths: tuple[int, int],
    k: int,
    fmt: str,
    seed: int,
    exclude_keys: set[str] | None = None,
    what: str = "--shots",
) -> list[Item]:
    """`k` distinct items of `task` in `fmt`, lengths drawn from `lengths` (lo, hi), none with a
    key in `exclude_keys`; deterministic from `seed`. `what` names the setting in errors."""
    if k < 0:
        raise UserError(f"{what} {k}: must be >= 0")
    # generate_items reads `exclude` at each draw: keys added here keep the demonstrations
    # distinct (the sentinel keeps the set non-empty, so generate_items uses this very set)
    exclude = {*(exclude_keys or ()), "\0"}
    demos: list[Item] = []
    try:
        for it in generate_items(task, tuple(lengths), k, fmt, 40_000 + seed, exclude=exclude):
            exclude.add(it.key)  # demonstrations are distinct from each other too
            demos.append(it)
    except ValueError:
        raise UserError(
            f"{what} {k}: task '{task.name}' has fewer than {k} distinct problems at lengths "
            f"{lengths[0]}-{lengths[1]} (beside the test items); choose fewer shots"
        ) from None
    return demos


def few_shot_prompt(demos: list[Item], item: Item, separator: str = SEPARATOR) -> str:
    """The demonstrations (prompt + completion each), in order, then the test prompt."""
    return "".join(d.prompt + d.completion + separator for d in demos) + item.prompt


def chat_prompt(tokenizer: Any, demos: list[Item], item: Item) -> str:
    """The tokenizer's chat template over user/assistant turns, ending with a generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("--chat-template: the model's tokenizer has no chat_template")
    messages = []
    for d in demos:
        messages += [
            {"role": "user", "content": d.prompt},
            {"role": "assistant", "content": d.completion},
        ]
    messages.append({"role": "user", "content": item.prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def check_chat_folder(path: Path) -> None:
    """--chat-template for a Hugging Face folder: its tokenizer alone is loaded and checked,
    before the model (so a refusal costs no model load)."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    except Exception:  # the model load reports a broken folder in its own words
        return
    if not getattr(tok, "chat_template", None):
        raise UserError(f"--chat-template: {path.name}'s tokenizer has no chat_template")


def check_chat(lm: Any) -> None:
    """Refuse --chat-template, before any work, for a model without a chat-templated tokenizer."""
    tok = getattr(lm, "tokenizer", None)
    if not getattr(tok, "chat_template", None):
        raise UserError(
            f"--chat-template: {getattr(lm, 'name', 'the model')}'s tokenizer has no "
            "chat_template (Hugging Face models with one only)"
        )


def with_demos(lm: Any, demos: list[Item], items: list[Item], chat: bool = False) -> list[Item]:
    """`items` with their prompts rewritten: few-shot text, or the chat template when `chat`.
    Expected completions, answers and keys are unchanged, so `Task.check` applies as before."""
    if chat:
        check_chat(lm)
        return [
            dataclasses.replace(it, prompt=chat_prompt(lm.tokenizer, demos, it)) for it in items
        ]
    if not demos:
        return items
    return [dataclasses.replace(it, prompt=few_shot_prompt(demos, it)) for it in items]


@dataclass(frozen=True)
class FewShot:
    """The suites' few-shot settings: `shots` demonstrations drawn with `seed`, items in `fmt`
    (None: the training split's format), the chat template only when `chat`."""

    shots: int = 0
    fmt: str | None = None
    chat: bool = False
    seed: int = 0

    def format_for(self, src_format: str) -> str:
        return self.fmt or src_format

    def check(self, tasks: list[Task], src_format: str, lm: Any = None) -> None:
        """Every refusal before any work: bad shots, a format a task lacks, and with `lm` a
        chat template requested for a tokenizer without one."""
        if self.shots < 0:
            raise UserError(f"--shots {self.shots}: must be >= 0")
        for task in tasks:
            check_format(task, self.format_for(src_format), self.shots)
        if self.chat and lm is not None:
            check_chat(lm)

    @property
    def stop(self) -> str | None:
        """Where an answer ends besides EOS: at the separator of plain-text demonstrations
        (a chat turn ends with the template's end-of-turn token instead)."""
        return SEPARATOR if self.shots and not self.chat else None

    @property
    def active(self) -> bool:
        """Whether anything differs from plain zero-shot prompts in the training format."""
        return bool(self.shots or self.fmt or self.chat)

    def to_dict(self) -> dict[str, Any]:
        return {"shots": self.shots, "shots_seed": self.seed, "chat_template": self.chat}
