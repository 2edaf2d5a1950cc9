"""`LengthwiseLM`: the EvalLM protocol (lengthwise/eval/lm.py) for a lengthwise GPT and its
tokenizer, from live objects or from an export folder (`lengthwise export`).

- `greedy`: batched greedy decoding with a KV cache (lengthwise/eval/generate.py).
- `greedy_with_positions`: the same with a task's position ids (the `coupled` format: prompt
  and each generated character get the ids the task's rule gives the text so far). Not part of
  the EvalLM protocol: `score_items` uses it where a model has it; other models (Hugging Face)
  decode coupled items as plain text with their own positions.
- `loglikelihood`: context + continuation in one forward per batch (right-padded: causal
  attention never lets a real token see the padding after it), split as lm-eval-harness does
  (trailing spaces of the context move to the continuation, the continuation's tokens are those
  of encode(context + continuation) after encode(context)).
- `token_losses`: one forward over the whole sequence, no cache. Sequences longer than the
  training length are the point (length robustness); learned and sinusoidal positions raise a
  clear error past `max_position`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from lengthwise.config import TABLED_POSITIONS
from lengthwise.data.tokenizer import Tokenizer
from lengthwise.eval.generate import greedy_generate
from lengthwise.eval.lm import split_request
from lengthwise.model.gpt import GPT


class LengthwiseLM:
    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        device: str | torch.device = "cpu",
        name: str = "lengthwise",
        stop_early: bool = True,
    ) -> None:
        """`stop_early=False`: greedy decoding runs a fixed number of steps per batch
        (generate.greedy_generate), which an FSDP2-sharded model needs on every rank."""
        self.device = torch.device(device)
        self.stop_early = stop_early
        # the mode is left alone (a live training model stays in training mode): every method
        # runs in eval mode and restores the mode afterwards
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.name = name

    @classmethod
    def from_export(cls, path: str | Path, device: str | torch.device = "cpu") -> LengthwiseLM:
        """The model and tokenizer of an export folder; named after the folder."""
        from lengthwise.eval.exported import load_exported

        model, tokenizer = load_exported(Path(path), device=device)
        return cls(model, tokenizer, device=device, name=Path(path).name or "lengthwise")

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_positions(self) -> int | None:
        """Positions the model can embed: `max_position` for a learned or sinusoidal table,
        None (no limit) for the others (a transformers model says itself). Suites check it
        before they start."""
        if not isinstance(self.model, GPT):
            return getattr(self.model, "max_positions", None)
        cfg = self.model.cfg
        return cfg.max_position if cfg.position in TABLED_POSITIONS else None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def greedy(self, prompts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[str]:
        """Greedy continuation of each prompt, stopped at EOS (not included) or after
        `max_new_tokens`. An empty prompt starts from EOS, the token that precedes every
        document in training."""
        ids = [self.encode(p) or [self.eos_id] for p in prompts]
        out = greedy_generate(
            self.model,
            ids,
            max_new_tokens,
            eos_id=self.eos_id,
            batch_size=batch_size,
            pad_id=self.tokenizer.pad_id,
            stop_early=self.stop_early,
        )
        return [self.decode(o) for o in out]

    def greedy_with_positions(
        self,
        prompts: list[str],
        positions_for: Callable[[str, str], list[int]],
        max_new_tokens: int,
        batch_size: int = 64,
    ) -> list[str]:
        """`greedy` with task position ids: `positions_for(prompt, completion_so_far)` gives an
        id per character (Task.positions_for); the prompt's ids come from
        positions_for(prompt, ""), each generated token's from the text generated so far
        (its last id). Character ids are token ids, so this needs a character tokenizer; a
        generated token that is not one character (a special token) reads as a non-digit."""
        ids = [self.encode(p) for p in prompts]
        prompt_pos = [list(positions_for(p, "")) for p in prompts]
        for p, i, pos in zip(prompts, ids, prompt_pos, strict=True):
            if not i or len(i) != len(p) or len(pos) != len(p):
                raise ValueError(
                    f"task position ids need one token per character (a character tokenizer); "
                    f"prompt {p!r} is {len(i)} tokens"
                )
        chars: dict[int, str] = {}

        def char(t: int) -> str:
            if t not in chars:
                c = self.decode([t])
                chars[t] = c if len(c) == 1 else "\0"  # not a character of any task
            return chars[t]

        def position_fn(i: int, generated: list[int]) -> int:
            return positions_for(prompts[i], "".join(char(t) for t in generated))[-1]

        out = greedy_generate(
            self.model,
            ids,
            max_new_tokens,
            eos_id=self.eos_id,
            batch_size=batch_size,
            pad_id=self.tokenizer.pad_id,
            prompt_positions=prompt_pos,
            position_fn=position_fn,
            stop_early=self.stop_early,
        )
        return [self.decode(o) for o in out]

    def split_request(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lengthwise.eval.lm.split_request with this model's tokenizer; an empty context
        is scored after eos_id."""
        return split_request(self.encode, context, continuation, self.eos_id)

    def loglikelihood(
        self, requests: list[tuple[str, str]], batch_size: int = 64
    ) -> list[tuple[float, bool]]:
        """For each (context, continuation): sum of log p(continuation tokens | context) and
        whether greedy decoding would produce exactly the continuation (an empty continuation:
        (0.0, True))."""
        pairs = [self.split_request(c, x) for c, x in requests]
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        todo = [i for i, (_, cont) in enumerate(pairs) if cont]
        todo.sort(key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))  # longest first
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(todo), batch_size):
                    rows = todo[start : start + batch_size]
                    seqs = [pairs[i][0] + pairs[i][1] for i in rows]
                    T = max(len(s) for s in seqs) - 1  # inputs: all but the last token
                    ids = torch.full((len(rows), T), self.tokenizer.pad_id, dtype=torch.long)
                    for b, s in enumerate(seqs):
                        ids[b, : len(s) - 1] = torch.tensor(s[:-1], dtype=torch.long)
                    logits = self.model(ids.to(self.device))  # (B, T, V)
                    for b, i in enumerate(rows):
                        ctx, cont = pairs[i]
                        first = len(ctx) - 1  # the input position that predicts cont[0]
                        lg = logits[b, first : first + len(cont)]  # (n_cont, V)
                        target = torch.tensor(cont, device=lg.device)
                        logp = torch.log_softmax(lg, dim=-1).gather(1, target[:, None])
                        greedy = bool((lg.argmax(dim=-1) == target).all())
                        results[i] = (float(logp.double().sum()), greedy)
        finally:
            self.model.train(was_training)
        return results

    def token_losses(self, ids: list[int]) -> list[float]:
        """Per-position cross-entropy of a token sequence (len(ids) - 1 values: position i is
        the loss of predicting ids[i + 1]), from one forward without a cache."""
        if len(ids) < 2:
            return []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                x = torch.tensor(ids, dtype=torch.long, device=self.device)
                logits = self.model(x[None, :-1])[0]  # (T - 1, V)
                losses = F.cross_entropy(logits, x[1:], reduction="none")
        finally:
            self.model.train(was_training)
        return losses.tolist()
