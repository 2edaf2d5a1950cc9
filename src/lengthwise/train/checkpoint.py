"""Atomic, verifiable, resumable checkpoints.

A checkpoint is a directory written under a temporary name and renamed into place, with a
`manifest.json` written last that records the sha256 of every file. Loading verifies the
manifest first, so a truncated or corrupted checkpoint is reported in one line instead of
crashing (or silently loading garbage), and tensors are read with `weights_only=True`, so no
pickled code runs.

One process: `model.safetensors` (the weights, usable on their own) + `train_state.pt`
(optimizer, counters, data-loader state, RNG states). Distributed runs (DDP or FSDP2) save model
and optimizer with `torch.distributed.checkpoint` (each rank writes its shards; DCP's own
`.metadata` file is a pickle written by PyTorch, which is why the manifest is verified before
DCP reads it) plus one `rank-R.pt` per rank for its loader and RNG states.

Layout: RUN/checkpoints/step-00000120/ ..., RUN/checkpoints/best/ (the best by the configured
metric), keeping the last `keep_last` step checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_model, save_model
from torch import nn

from lengthwise.errors import UserError

MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dirs(root: Path) -> list[Path]:
    """Complete step checkpoints (with a manifest), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest(root: Path) -> Path | None:
    dirs = step_dirs(root)
    return dirs[-1] if dirs else None


def _distributed() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def save(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep_last: int,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write RUN/checkpoints/step-NNNNNNNN atomically; `state` is this rank's plain state
    (counters, loader, rng). Every rank calls this in a distributed run."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    rank = dist.get_rank() if _distributed() else 0
    if _distributed():
        tmp_name = [str(Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))) if rank == 0 else ""]
        dist.broadcast_object_list(tmp_name, src=0)
        tmp = Path(tmp_name[0])
        from torch.distributed.checkpoint import save as dcp_save
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp_save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
        torch.save(state, tmp / f"rank-{rank}.pt")
        dist.barrier()
    else:
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
        save_model(model, str(tmp / "model.safetensors"))
        torch.save({**state, "optimizer": optimizer.state_dict()}, tmp / "train_state.pt")
    if rank == 0:
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "step": step,
            "format": "dcp" if _distributed() else "single",
            "world_size": dist.get_world_size() if _distributed() else 1,
            "meta": meta or {},
            "sha256": {str(p.relative_to(tmp)): _sha256(p) for p in files},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in step_dirs(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    if _distributed():
        dist.barrier()
    return final


def verify(path: Path) -> dict[str, Any]:
    """The manifest of a complete, intact checkpoint; UserError in one line otherwise."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"{path}: not a complete checkpoint (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{manifest_path}: corrupted (not JSON)") from None
    for name, digest in manifest["sha256"].items():
        f = path / name
        if not f.is_file():
            raise UserError(f"{path}: corrupted checkpoint ({name} is missing)")
        if _sha256(f) != digest:
            raise UserError(f"{path}: corrupted or truncated checkpoint ({name}: sha256 mismatch)")
    return manifest


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore model (and optimizer) in place; returns this rank's plain state."""
    manifest = verify(path)
    world = dist.get_world_size() if _distributed() else 1
    if manifest["world_size"] != world:
        raise UserError(
            f"{path}: saved by {manifest['world_size']} processes, resuming with {world}: "
            "the data order is per rank, so resume with the same world size"
        )
    if manifest["format"] == "single":
        load_model(model, str(path / "model.safetensors"))
        state = torch.load(path / "train_state.pt", weights_only=True, map_location="cpu")
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        return state
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    sd = {"model": model_sd, "optim": optim_sd}
    dcp_load(sd, checkpoint_id=str(path / "dcp"))
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    return torch.load(path / f"rank-{dist.get_rank()}.pt", weights_only=True, map_location="cpu")


def full_model(model: nn.Module, model_cfg: Any) -> nn.Module | None:
    """The whole model in one process: `model` itself in a one-process run; under DDP/FSDP2 every
    rank joins the gather and rank 0 gets an unsharded CPU copy (the others get None)."""
    if not _distributed():
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from lengthwise.model.gpt import GPT

    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if dist.get_rank() != 0:
        return None
    plain = GPT(model_cfg)
    plain.load_state_dict(full)
    return plain
