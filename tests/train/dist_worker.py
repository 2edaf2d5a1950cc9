"""Run under torchrun by test_distributed.py: train (or take gradients) and dump what each rank
holds, so the test can compare ranks with each other and with a single process.

    torchrun --nproc_per_node=2 tests/train/dist_worker.py JOBS.json

JOBS.json is a list of jobs run in turn in one process group (each process pays ~3 s of Python
and torch start-up on a 2-core CPU, so one launch runs many jobs): {"config": YAML, "out": DIR,
"mode": "train" | "grad", "stop_at_step": int | null, "resume": bool}. "train": fit, then dump
parameters and (rank 0) losses; "grad": the gradients of the first step. Each job builds its own
Trainer (the process group is joined once and reused) and frees it before the next.
The test imports `run_job` to compute the one-process references in its own process.
"""

import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from lengthwise.config import Config, load_config
from lengthwise.rundir import read_metrics
from lengthwise.train.distributed import barrier, destroy
from lengthwise.train.trainer import Trainer


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP2 DTensor -> whole


def run_job(
    cfg: Config, out: Path, mode: str, stop_at_step: int | None = None, resume: bool = False
) -> None:
    """Write OUT/rank-R.safetensors (parameters after fit, or first-step gradients) and, for
    "train" on rank 0, OUT/losses.txt (the logged train losses)."""
    trainer = Trainer(cfg, resume=resume, quiet=True)
    rank = dist.get_rank() if dist.is_initialized() else 0
    out.mkdir(parents=True, exist_ok=True)
    if mode == "grad":
        trainer.backward(next(trainer.loader))
        tensors = {
            n: full_tensor(p.grad).contiguous() for n, p in trainer.model_plain.named_parameters()
        }
    else:
        trainer.fit(stop_at_step=stop_at_step)
        tensors = {
            n: full_tensor(p.detach()).contiguous()
            for n, p in trainer.model_plain.named_parameters()
        }
        if rank == 0:
            losses = [r["loss"] for r in read_metrics(trainer.run_dir, "train")]
            (out / "losses.txt").write_text("\n".join(map(repr, losses)))
    save_file({k: v.cpu() for k, v in tensors.items()}, str(out / f"rank-{rank}.safetensors"))
    del trainer, tensors  # free DDP/FSDP2 before the next job builds its own, as train() does
    gc.collect()
    barrier()  # every rank is done with this job's model before any starts the next


def main() -> None:
    for job in json.loads(Path(sys.argv[1]).read_text()):
        run_job(
            load_config(job["config"]),
            Path(job["out"]),
            job["mode"],
            job.get("stop_at_step"),
            job.get("resume", False),
        )
    destroy()  # once, after the last job: the group outlives every Trainer


if __name__ == "__main__":
    main()
