"""Process-group set-up for `torchrun`, and model wrapping (DDP or FSDP2).

Without torchrun (no RANK in the environment) everything here is a no-op and the same training
code runs in one process. With it, every rank reads its own rows of the same global batch (see
lengthwise.data.strategy) and gradients are averaged by DDP or FSDP2's reduce-scatter.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str, device_type: str) -> Dist:
    """Join the process group that torchrun describes in the environment (or do nothing)."""
    if "RANK" not in os.environ:
        return Dist()
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def all_reduce_sum(value: float | int, device: torch.device) -> float:
    if not dist.is_initialized():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def all_reduce_sum_tensor(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def wrap_model(model: nn.Module, d: Dist, fsdp: bool, device: torch.device) -> nn.Module:
    """DDP by default; FSDP2 (`fully_shard` on each block, then the root) when asked."""
    if not d.enabled:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:  # type: ignore[attr-defined]
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def sync_gradients(model: nn.Module, last_micro_batch: bool):
    """Reduce gradients across ranks only on the last micro-batch of a step: DDP's `no_sync`
    context, FSDP2's `set_requires_gradient_sync`; a no-op in one process."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(last_micro_batch)
        return nullcontext()
    if last_micro_batch or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()


def destroy() -> None:
    """Leave the process group once every rank is done with it: a rank that tears down its
    gloo connections while a peer still uses them can abort the peer."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
