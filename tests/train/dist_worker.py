"""Run under torchrun by test_distributed.py: train (or take gradients) and dump what each rank
holds, so the test can compare ranks with each other and with a single process.

    torchrun --nproc_per_node=2 tests/train/dist_worker.py CONFIG OUT MODE [STOP_AT_STEP]
MODE: "train" (fit, then dump parameters and losses) or "grad" (gradients of the first step).
"""

import gc
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from lengthwise.config import load_config
from lengthwise.rundir import read_metrics
from lengthwise.train.distributed import destroy
from lengthwise.train.trainer import Trainer


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP2 DTensor -> whole


def main() -> None:
    config, out, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    stop = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] != "none" else None
    resume = len(sys.argv) > 5 and sys.argv[5] == "resume"
    trainer = Trainer(load_config(config), resume=resume, quiet=True)
    rank = dist.get_rank() if dist.is_initialized() else 0
    out.mkdir(parents=True, exist_ok=True)
    if mode == "grad":
        trainer.backward(next(trainer.loader))
        tensors = {
            n: full_tensor(p.grad).contiguous() for n, p in trainer.model_plain.named_parameters()
        }
    else:
        trainer.fit(stop_at_step=stop)
        tensors = {
            n: full_tensor(p.detach()).contiguous()
            for n, p in trainer.model_plain.named_parameters()
        }
        if rank == 0:
            losses = [r["loss"] for r in read_metrics(trainer.run_dir, "train")]
            (out / "losses.txt").write_text("\n".join(map(repr, losses)))
    save_file({k: v.cpu() for k, v in tensors.items()}, str(out / f"rank-{rank}.safetensors"))
    del trainer, tensors  # free DDP/FSDP2 (they hold the process group), as train() does
    gc.collect()
    destroy()


if __name__ == "__main__":
    main()
