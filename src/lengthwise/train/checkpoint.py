"""Atomic, verifiable, resumable checkpoints, and the `Checkpointer` that says when one is due.

A checkpoint is a directory written under a temporary name and renamed into place, with a
`manifest.json` written last that records the sha256 of every file. Loading verifies the
manifest first, so a truncated or corrupted checkpoint is reported in one line instead of
crashing (or silently loading garbage).

Nothing a checkpoint folder holds can run code when it is loaded, whoever wrote the folder (the
manifest's checksums are written by the same hand, so they prove integrity, not origin):
- one process: `model.safetensors` (the weights, usable on their own) + `train_state.pt`
  (optimizer, counters, data-loader state, RNG states) read with `torch.load(weights_only=True)`;
- DDP/FSDP2: `torch.distributed.checkpoint` shards plus one `rank-R.pt` per rank. DCP reads its
  `.metadata` with a plain `pickle.load` and its non-tensor entries with
  `torch.load(weights_only=False)`; lengthwise gives DCP a reader whose unpickler resolves only
  the classes DCP metadata consists of (`_SafeMetadataReader`) and a planner that loads the
  non-tensor entries with `weights_only=True` (`_SafeLoadPlanner`). Anything else is refused
  with one line.

Layout: RUN/checkpoints/step-00000120/ ..., RUN/checkpoints/best/ (the best by the configured
metric), keeping the last `keep_last` step checkpoints.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint import save as dcp_save
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from lengthwise.errors import UserError
from lengthwise.io import copy_dir, remove_leftovers, replace_dir, temp_dir_beside

MANIFEST = "manifest.json"
FORMATS = ("single", "dcp")
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


def remove_partial(root: Path) -> list[Path]:
    """Delete what killed saves left in RUN/checkpoints: lengthwise's own temporary folders
    (`.step-N.tmp-*`, `.best.tmp-*`, `.NAME.old-*`, and `.tmp-*` of versions before 0.2). Call
    on the main rank before the run's first save."""
    removed = remove_leftovers(root)
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


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
        tmp_name = [str(temp_dir_beside(final)) if rank == 0 else ""]
        dist.broadcast_object_list(tmp_name, src=0)
        tmp = Path(tmp_name[0])
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp_save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
        torch.save(state, tmp / f"rank-{rank}.pt")
        dist.barrier()
    else:
        tmp = temp_dir_beside(final)
        save_model(model, str(tmp / "model.safetensors"))
        torch.save({**state, "optimizer": optimizer.state_dict()}, tmp / "train_state.pt")
    if rank == 0:
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "step": step,
            "format": "dcp" if _distributed() else "single",
            "world_size": dist.get_world_size() if _distributed() else 1,
            "meta": meta or {},
            "sha256": {p.relative_to(tmp).as_posix(): _sha256(p) for p in files},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        replace_dir(tmp, final)
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
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{manifest_path}: corrupted (not JSON)") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise UserError(f"{manifest_path}: not a lengthwise checkpoint manifest ({problem})")
    for name, digest in manifest["sha256"].items():
        f = path / name
        if not f.is_file():
            raise UserError(f"{path}: corrupted checkpoint ({name} is missing)")
        if _sha256(f) != digest:
            raise UserError(f"{path}: corrupted or truncated checkpoint ({name}: sha256 mismatch)")
    return manifest


def _manifest_problem(m: Any) -> str | None:
    if not isinstance(m, dict):
        return "expected a JSON object"
    if m.get("format") not in FORMATS:
        return f"format must be one of {', '.join(FORMATS)}"
    for key in ("step", "world_size"):
        if not isinstance(m.get(key), int) or isinstance(m.get(key), bool) or m[key] < 0:
            return f"{key} must be a non-negative integer"
    files = m.get("sha256")
    if not isinstance(files, dict) or not files:
        return "sha256 must map the checkpoint's files to their digests"
    for name, digest in files.items():
        parts = PurePosixPath(name).parts
        if not parts or name.startswith("/") or ".." in parts or "\\" in name:
            return f"file name {name!r} points outside the checkpoint"
        if not isinstance(digest, str):
            return f"digest of {name} must be a string"
    if not isinstance(m.get("meta", {}), dict):
        return "meta must be a JSON object"
    return None


def _load_safetensors(path: Path, model: nn.Module) -> None:
    try:
        load_model(model, str(path / "model.safetensors"))
    except (RuntimeError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path}: the checkpoint does not fit this model config ({first})"
        ) from None


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
        _load_safetensors(path, model)
        state = _torch_load(path / "train_state.pt")
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        return state
    model_sd, optim_sd = get_state_dict(model, optimizer)
    sd = {"model": model_sd, "optim": optim_sd}
    _dcp_load(sd, path / "dcp", no_dist=False)
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    return _torch_load(path / f"rank-{dist.get_rank()}.pt")


def load_weights(path: Path, model: nn.Module) -> dict[str, Any]:
    """Fill `model` with a checkpoint's weights, in one process, whichever format (one-process
    safetensors or DCP shards from a DDP/FSDP2 run). Returns the manifest."""
    manifest = verify(path)
    if manifest["format"] == "single":
        _load_safetensors(path, model)
    else:
        sd = {"model": model.state_dict()}
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
            warnings.filterwarnings("ignore", message=".*single process", category=UserWarning)
            _dcp_load(sd, path / "dcp", no_dist=True)
        model.load_state_dict(sd["model"])
    return manifest


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: refused to load ({_first_line(e)})") from None


# ---------------------------------------------------------------------- DCP without pickled code

# Every class a DCP `.metadata` pickle refers to (torch 2.5-2.13), and nothing that can run code.
_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "StorageMeta",
        "MetadataIndex",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only `_METADATA_CLASSES` and torch dtypes: a pickle that names anything else
    (os.system, builtins.eval, ...) is refused before it is called."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_CLASSES or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refuses to unpickle {module}.{name}")


class _SafeMetadataReader(FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        rank = kwargs.get("rank")
        path = Path(self.path) / (".metadata" if rank is None else f"__{rank}.metadata")
        with open(path, "rb") as f:
            found = _MetadataUnpickler(f).load()
        if not isinstance(found, dcp_metadata.Metadata):
            raise pickle.UnpicklingError(f"{path.name} holds a {type(found).__name__}")
        if getattr(found, "storage_meta", None) is None:
            found.storage_meta = dcp_metadata.StorageMeta()
        found.storage_meta.load_id = getattr(self, "load_id", None)
        return found


class _SafeLoadPlanner(DefaultLoadPlanner):
    """DCP loads non-tensor entries (optimizer hyper-parameters) with `weights_only=False`:
    check the same bytes with `weights_only=True` first, which refuses anything but plain data."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        data = value.read()
        torch.load(io.BytesIO(data), weights_only=True)
        super().load_bytes(read_item, io.BytesIO(data))


def _dcp_load(state_dict: dict[str, Any], folder: Path, no_dist: bool) -> None:
    reader = _SafeMetadataReader(str(folder))
    try:
        reader.read_metadata()  # DCP would wrap the refusal in a multi-line report: check first
        dcp_load(state_dict, storage_reader=reader, planner=_SafeLoadPlanner(), no_dist=no_dist)
    except (pickle.UnpicklingError, OSError, EOFError) as e:
        raise UserError(f"{folder}: refused to load ({_first_line(e)})") from None
    except CheckpointException as e:
        unsafe = "Weights only load failed" in str(e)
        why = "pickled code in a non-tensor entry" if unsafe else _first_line(e)
        raise UserError(f"{folder}: refused to load ({why})") from None


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


# ---------------------------------------------------------------------- the trainer's side


def full_model(model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module | None:
    """The whole model in one process: `model` itself in a one-process run; under DDP/FSDP2 every
    rank joins the gather and rank 0 gets an unsharded CPU copy, built by `build` (the others
    get None)."""
    if not _distributed():
        return model
    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if dist.get_rank() != 0:
        return None
    plain = build()
    plain.load_state_dict(full)
    return plain


class Checkpointer:
    """When and where a run's checkpoints are written: every `every_tokens` of the budget,
    counted from the last periodic one (0: never), and whenever the trainer forces one (the end,
    a pause, an early stop, a new best, which is also copied to `best/`); never twice for one
    step. The periodic mark lives in the run's counters (`next_checkpoint`), so a resumed run
    keeps the schedule."""

    def __init__(self, root: Path, every_tokens: int, keep_last: int, is_main: bool) -> None:
        self.root, self.every_tokens, self.keep_last, self.is_main = (
            root,
            every_tokens,
            keep_last,
            is_main,
        )
        self.saved_at = -1  # the step of the last save (or of the checkpoint resumed from)

    @property
    def best(self) -> Path:
        return self.root / "best"

    def due(self, counters: Any, budget: int, force: bool) -> bool:
        """Whether to save after `counters.step`; moves `counters.next_checkpoint` on when the
        periodic checkpoint fires (before the save, so the saved counters hold the next one)."""
        periodic = bool(self.every_tokens) and budget >= counters.next_checkpoint
        if periodic:
            counters.next_checkpoint = budget + self.every_tokens
        return (periodic or force) and counters.step != self.saved_at

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        meta: dict[str, Any],
        best: bool = False,
    ) -> Path:
        path = save(self.root, step, model, optimizer, state, self.keep_last, meta)
        if best and self.is_main:
            copy_dir(path, self.best)
        if _distributed():
            dist.barrier()
        self.saved_at = step
        return path

    def restore_best(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> int | None:
        """Load best/ into the model (monitor.restore_best); its step, or None if there is none."""
        if not (self.best / MANIFEST).is_file():
            return None
        state = load(self.best, model, optimizer)  # verifies checksums
        return int(state["counters"]["step"])
