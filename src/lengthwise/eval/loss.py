"""Held-out loss and perplexity on a token store, identical whatever strategy trained the model.

Documents are read in store order and cut into rows of at most `seq_len` tokens (each row one
document piece, positions from 0, or the stored ids of a coupled task store), so every model is
scored on the same predictions. Rows are sorted by length and batched by `batch_tokens` to keep
padding low. In a distributed run each rank scores every W-th row and the sums are all-reduced
by the caller-supplied `reduce`.

The model gives logits and the token losses are taken here (fp32 cross-entropy), so that their
sum of squares gives the standard error of the mean loss next to the mean: the eval set's own
noise, which the OOD monitor weighs a drop against. It treats token losses as independent, so it
is a lower bound when losses within a document are correlated.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lengthwise.batch import IGNORE_INDEX


def eval_rows(offsets: np.ndarray, seq_len: int, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of each row: documents in order cut into seq_len pieces, up to about
    `max_tokens` tokens in all (whole documents only, at least one)."""
    lengths = np.diff(offsets)
    n_docs = max(1, int(np.searchsorted(np.cumsum(lengths), max_tokens, side="right")))
    starts, lens = [], []
    for doc in range(min(n_docs, len(lengths))):
        for off in range(0, int(lengths[doc]), seq_len):
            starts.append(int(offsets[doc]) + off)
            lens.append(min(seq_len, int(lengths[doc]) - off))
    return np.asarray(starts, dtype=np.int64), np.asarray(lens, dtype=np.int64)


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    tokens: np.ndarray,
    offsets: np.ndarray,
    seq_len: int,
    max_tokens: int,
    device: torch.device,
    pad_id: int,
    batch_tokens: int = 16384,
    rank: int = 0,
    world_size: int = 1,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    autocast: Callable[[], object] | None = None,
    prompt_lens: np.ndarray | None = None,
    positions: np.ndarray | None = None,
) -> dict[str, float]:
    """Mean next-token loss (nats), perplexity, scored tokens and `se`, the standard error of
    the mean loss (std of the token losses / sqrt(tokens)), over the rows of `eval_rows`. With
    `prompt_lens` (task stores), prompt tokens are not scored, as in training. With
    `positions` (a position id per token: TokenStore.positions of a coupled task store), the
    rows' position ids are the stored ones (no training offset) instead of 0, 1, ...

    `model(input_ids, **kw)` must return logits (B, T, V); `kw` is empty or `position_ids`."""
    was_training = model.training
    model.eval()
    starts, lens = eval_rows(offsets, seq_len, max_tokens)
    order = np.argsort(-lens, kind="stable")
    # (loss sum, targets, sum of squared losses)
    total = torch.zeros(3, dtype=torch.float64, device=device)
    i = 0
    # Global batches, rows dealt round-robin to ranks: every rank makes the same number of
    # forward calls (FSDP all-gathers parameters in each one), a rank without rows scores an
    # all-ignored dummy row.
    while i < len(order):
        T = int(lens[order[i]])
        n = max(1, batch_tokens // T) * world_size
        rows = order[i : i + n][rank::world_size]
        i += n
        ids = np.full((max(len(rows), 1), T), pad_id, dtype=np.int64)
        tgt = np.full((max(len(rows), 1), T), IGNORE_INDEX, dtype=np.int64)
        pos = None if positions is None else np.zeros((max(len(rows), 1), T), dtype=np.int64)
        for r, row in enumerate(rows):
            piece = np.asarray(tokens[starts[row] : starts[row] + lens[row]], dtype=np.int64)
            ids[r, : len(piece)] = piece
            tgt[r, : len(piece) - 1] = piece[1:]
            if pos is not None:
                pos[r, : len(piece)] = positions[starts[row] : starts[row] + lens[row]]
            if prompt_lens is not None:  # target at column c is the token at starts + c + 1
                doc = int(np.searchsorted(offsets, starts[row], side="right")) - 1
                n_prompt = int(offsets[doc] + prompt_lens[doc] - starts[row]) - 1
                tgt[r, : max(n_prompt, 0)] = IGNORE_INDEX
        x = torch.from_numpy(ids).to(device)
        y = torch.from_numpy(tgt).to(device)
        # no position_ids argument at all without stored ids: any module(x) giving logits works
        kw = {} if pos is None else {"position_ids": torch.from_numpy(pos).to(device)}
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            logits = model(x, **kw)
        token_loss = F.cross_entropy(  # fp32, as the model's own loss; 0 at ignored targets
            logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
        ).double()
        total[0] += token_loss.sum()
        total[1] += (y != IGNORE_INDEX).sum()
        total[2] += token_loss.square().sum()
    total = reduce(total)
    model.train(was_training)
    n = max(total[1].item(), 1.0)
    mean = total[0].item() / n
    var = max(total[2].item() / n - mean * mean, 0.0)  # population variance of the token losses
    return {
        "loss": mean,
        "ppl": float(np.exp(min(mean, 50.0))),
        "tokens": int(total[1].item()),
        "se": math.sqrt(var / n),
    }
