"""Synthetic tasks with a length knob, a complexity class, four formats and exact answer checking.

    from lengthwise.tasks import generate_items, get_task
    task = get_task("addition")
    for item in generate_items(task, (1, 10), n=100, fmt="reversed", seed=0):
        ...  # item.prompt (no loss) + item.completion (loss), item.key, item.terms
    parsed, correct = task.check(item, generated_text)

Pure Python (stdlib only): nothing here imports torch or another lengthwise package. Formats and
their syntax: lengthwise.tasks.registry (shared rules), .arithmetic (copy, reverse, parity,
addition, multiplication) and .lists (the Scylla complexity ladder).
"""

from lengthwise.tasks.registry import (
    COMPLEXITIES,
    FORMATS,
    LEVELS,
    Item,
    Task,
    alphabet,
    generate_items,
    get_task,
    is_heldout,
    register,
    task_names,
)

# Importing the task modules registers their tasks (after the registry exists).
from lengthwise.tasks import arithmetic, lists  # noqa: E402, I001  isort: skip
from lengthwise.tasks.lists import LADDER, SumProblem  # noqa: E402  isort: skip

__all__ = [
    "COMPLEXITIES",
    "FORMATS",
    "LADDER",
    "LEVELS",
    "Item",
    "SumProblem",
    "Task",
    "alphabet",
    "arithmetic",
    "generate_items",
    "get_task",
    "is_heldout",
    "lists",
    "register",
    "task_names",
]
