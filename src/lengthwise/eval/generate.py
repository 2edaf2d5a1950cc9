"""Batched greedy generation with a KV cache, for every position kind of the lengthwise GPT.

Prompts are sorted by length and cut into batches (little padding), each batch LEFT-padded so
that every row's last prompt token sits in the last column: one forward over the prompts fills
the cache (prefill), then each step feeds one token per row. Each row's position ids start at 0
at its first real token, and padding is never attended to (`GPT.forward(token_mask=...)`), so a
row's tokens do not depend on the batch it lands in (tests/eval/test_generate.py checks batched
== alone == a naive loop that recomputes the whole sequence every step).

Task position ids (position coupling): `prompt_positions` gives each prompt token its id instead
of 0, 1, ..., and `position_fn(i, generated)` the id of each generated token before it is fed
back: `i` is the prompt's index in `prompts`, `generated` the row's tokens so far, the last one
being the token whose id is asked (called once per fed token of a row that has not stopped).
Without `position_fn`, ids continue each row's last id + 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lengthwise.model.gpt import GPT, KVCache

# (index of the prompt, tokens generated so far for it) -> position id of the last of them
PositionFn = Callable[[int, list[int]], int]


def greedy_generate(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_id: int,
    batch_size: int = 64,
    pad_id: int = 0,
    prompt_positions: list[list[int]] | None = None,
    position_fn: PositionFn | None = None,
    stop_early: bool = True,
) -> list[list[int]]:
    """The greedy continuation of each prompt (token ids), in the prompts' order: at most
    `max_new_tokens` tokens, a row stopping at its first EOS (not included). Runs in eval mode
    and inference mode; the model's training mode is restored afterwards.

    `prompt_positions[i]`: position ids of prompt i's tokens (default 0, 1, ...);
    `position_fn`: ids of generated tokens (see the module docstring); `stop_early=False`
    decodes every batch for exactly `max_new_tokens` steps even when all its rows have stopped,
    so the number of forward calls depends only on the number of prompts (the ranks of an
    FSDP2 model must make the same collective calls). The outputs are the same."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty: greedy generation needs at least one token")
        if prompt_positions is not None and len(prompt_positions[i]) != len(p):
            raise ValueError(
                f"prompt {i}: {len(prompt_positions[i])} position ids for {len(p)} tokens"
            )
    if prompt_positions is not None and len(prompt_positions) != len(prompts):
        raise ValueError(f"{len(prompt_positions)} position lists for {len(prompts)} prompts")
    out: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens <= 0 or not prompts:
        return out
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = [prompts[i] for i in rows]
                pos = None if prompt_positions is None else [prompt_positions[i] for i in rows]
                fn = None
                if position_fn is not None:
                    fn = _reindexed(position_fn, rows)
                generated = _generate_batch(
                    model, batch, max_new_tokens, eos_id, pad_id, pos, fn, stop_early
                )
                for i, ids in zip(rows, generated, strict=True):
                    out[i] = ids
    finally:
        model.train(was_training)
    return out


def _reindexed(position_fn: PositionFn, rows: list[int]) -> PositionFn:
    """position_fn for a batch: batch row b is prompt rows[b]."""
    return lambda b, generated: position_fn(rows[b], generated)


def left_pad(
    prompts: list[list[int]],
    pad_id: int,
    device: torch.device,
    positions: list[list[int]] | None = None,
) -> tuple[Tensor, ...]:
    """(input_ids, position_ids, token_mask), each (B, T_max): prompts right-aligned, positions
    0, 1, ... from each row's first real token, or the given `positions` (0 on padding), mask
    False on padding."""
    lens = torch.tensor([len(p) for p in prompts], device=device)
    T = int(lens.max())
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - len(p) :] = torch.tensor(p, dtype=torch.long)
    ids = ids.to(device)
    pos = torch.arange(T, device=device)[None, :] - (T - lens)[:, None]  # (B, T)
    mask = pos >= 0
    if positions is None:
        return ids, pos.clamp(min=0), mask
    given = torch.zeros((len(prompts), T), dtype=torch.long)
    for b, p in enumerate(positions):
        given[b, T - len(p) :] = torch.tensor(p, dtype=torch.long)
    return ids, given.to(device), mask


def _generate_batch(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    prompt_positions: list[list[int]] | None = None,
    position_fn: PositionFn | None = None,
    stop_early: bool = True,
) -> list[list[int]]:
    device = next(model.parameters()).device
    ids, pos, mask = left_pad(prompts, pad_id, device, prompt_positions)
    B, T = ids.shape
    cache = KVCache(capacity=T + max_new_tokens)
    logits = model(ids, pos, cache=cache, token_mask=mask, logits_to_keep=1)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    steps: list[Tensor] = []
    so_far: list[list[int]] = [[] for _ in range(B)]  # for position_fn only
    for step in range(max_new_tokens):
        nxt = logits[:, -1].argmax(dim=-1)  # (B,)
        nxt = torch.where(done, eos_id, nxt)  # a stopped row only repeats EOS
        steps.append(nxt)
        done = done | (nxt == eos_id)
        if step == max_new_tokens - 1 or (stop_early and bool(done.all())):
            break
        new_pos = None  # positions continue each row's
        if position_fn is not None:
            ids_now, live = nxt.tolist(), (~done).tolist()
            row_pos = []
            for b in range(B):
                so_far[b].append(ids_now[b])
                row_pos.append(position_fn(b, so_far[b]) if live[b] else 0)
            new_pos = torch.tensor(row_pos, dtype=torch.long, device=device)[:, None]
        logits = model(nxt[:, None], new_pos, cache=cache)
    generated = torch.stack(steps, dim=1).tolist()  # (B, n_steps)
    return [row[: row.index(eos_id)] if eos_id in row else row for row in generated]
