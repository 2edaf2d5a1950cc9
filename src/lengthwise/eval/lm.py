"""The one interface every evaluation talks to, whatever the model behind it: a lengthwise GPT
(checkpoint or export folder) or a Hugging Face causal LM folder. Suites (lengths, valley,
memorization), the in-training evaluator and the lm-eval-harness adapter only use this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class EvalLM(Protocol):
    name: str  # for tables and plots

    @property
    def eos_id(self) -> int: ...

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added."""
        ...

    def decode(self, ids: list[int]) -> str: ...

    def greedy(self, prompts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[str]:
        """Greedy continuation of each prompt, stopped at EOS (not included) or after
        `max_new_tokens`; batched, with a KV cache. (A model that can decode with task
        position ids also has `greedy_with_positions`, see LengthwiseLM; it is optional.)"""
        ...

    def loglikelihood(
        self, requests: list[tuple[str, str]], batch_size: int = 64
    ) -> list[tuple[float, bool]]:
        """For each (context, continuation): sum of log p(continuation tokens | context) and
        whether greedy decoding would produce exactly the continuation."""
        ...

    def token_losses(self, ids: list[int]) -> list[float]:
        """Per-position cross-entropy of a token sequence (len(ids) - 1 values: position i is
        the loss of predicting ids[i + 1]); positions beyond the training length included."""
        ...


def split_request(
    encode: Callable[[str], list[int]], context: str, continuation: str, prefix_id: int
) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval-harness splits a request for a causal LM:
    trailing spaces of the context move to the continuation, the continuation's ids are
    encode(context + continuation) minus encode(context), an empty context is [prefix_id]."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if not context:
        return [prefix_id], encode(continuation)
    whole = encode(context + continuation)
    ctx = encode(context)
    return ctx, whole[len(ctx) :]
