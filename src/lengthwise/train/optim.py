"""AdamW with parameter groups, the learning-rate schedule by tokens, and explicit L1/L2 terms.

The schedule is a function of tokens seen, not steps: with variable sequence lengths every step
holds the same number of tokens but not the same shape, and tokens are what a comparison between
strategies must hold equal.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lengthwise.config import OptimConfig, ScheduleConfig


def build_optimizer(
    groups: list[dict], cfg: OptimConfig, device: torch.device
) -> torch.optim.AdamW:
    """`groups` from `GPT.param_groups`; fused AdamW on CUDA (one kernel for all parameters)."""
    torch_groups = [{k: v for k, v in g.items() if k != "name"} for g in groups]
    return torch.optim.AdamW(
        torch_groups,
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        fused=device.type == "cuda",
    )


def lr_at(tokens: int, total_tokens: int, peak: float, cfg: ScheduleConfig) -> float:
    """Linear warmup over `warmup_tokens`, then cosine/linear decay to min_lr_ratio * peak at
    `total_tokens` (or constant)."""
    if cfg.warmup_tokens and tokens < cfg.warmup_tokens:
        return peak * (tokens + 1) / cfg.warmup_tokens
    if cfg.decay == "constant":
        return peak
    span = max(total_tokens - cfg.warmup_tokens, 1)
    progress = min(max(tokens - cfg.warmup_tokens, 0) / span, 1.0)
    floor = peak * cfg.min_lr_ratio
    if cfg.decay == "linear":
        return floor + (peak - floor) * (1.0 - progress)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def penalty(groups: list[dict], l1: float, l2: float) -> torch.Tensor | None:
    """l1 * sum|w| + l2 * sum w^2 over the decayed weights (matrices), or None when both are 0.

    Explicit penalties sit beside AdamW's decoupled weight decay: the seed's "L1/L2 0.001-0.01"
    regularization is a loss term, which decoupled decay is not.
    """
    if not (l1 or l2):
        return None
    params: list[nn.Parameter] = [p for g in groups if g["name"] == "decay" for p in g["params"]]
    total = torch.zeros((), device=params[0].device, dtype=torch.float32)
    for p in params:
        if l1:
            total = total + l1 * p.abs().sum(dtype=torch.float32)
        if l2:
            total = total + l2 * p.pow(2).sum(dtype=torch.float32)
    return total
