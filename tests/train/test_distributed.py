"""Two gloo processes on CPU against one process with the same global batch."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lengthwise.export import export_run, load_exported

WORKER = Path(__file__).parent / "dist_worker.py"


def _run(cfg, tmp_path, name, mode, nproc, *extra):
    cfg_path = tmp_path / f"{name}.yaml"
    tree = cfg.model_dump(mode="json")
    tree["train"]["out_dir"] = str(tmp_path / name / "run")
    cfg_path.write_text(yaml.safe_dump(tree))
    out = tmp_path / name / "dump"
    cmd = [sys.executable, str(WORKER), str(cfg_path), str(out), mode, *map(str, extra)]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # rendezvous on a free local port
            "--nproc_per_node",
            str(nproc),
            *cmd[1:],
        ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[:4000] + "\n...\n" + proc.stderr[-1500:]
    return out


def _load(out: Path, rank: int) -> dict[str, torch.Tensor]:
    return load_file(out / f"rank-{rank}.safetensors")


def _losses(out: Path) -> list[float]:
    return [float(x) for x in (out / "losses.txt").read_text().split()]


@pytest.mark.parametrize("strategy", ["decomposition", "best_fit"])
def test_two_ranks_same_gradient_as_one_process(make_cfg, tmp_path, strategy):
    extra = ["batching.curriculum.name=none"] if strategy == "best_fit" else []
    cfg = make_cfg(f"batching.strategy={strategy}", *extra)
    one = _load(_run(cfg, tmp_path, "one", "grad", 1), 0)
    two = _run(cfg, tmp_path, "two", "grad", 2)
    g0, g1 = _load(two, 0), _load(two, 1)
    for k in one:
        assert torch.equal(g0[k], g1[k]), k  # DDP leaves the same averaged gradient everywhere
        torch.testing.assert_close(g0[k], one[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_ranks_train_like_one_process(make_cfg, tmp_path, fsdp):
    cfg = make_cfg(f"distributed.fsdp={str(fsdp).lower()}", "train.total_tokens=5120")
    one = _run(cfg, tmp_path, "one", "train", 1)
    two = _run(cfg, tmp_path, "two", "train", 2)
    p0, p1, ref = _load(two, 0), _load(two, 1), _load(one, 0)
    for k in ref:
        assert torch.equal(p0[k], p1[k]), k  # bit-identical across ranks
        torch.testing.assert_close(p0[k], ref[k], rtol=1e-4, atol=1e-5)
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-5)


def test_distributed_checkpoint_resume(make_cfg, tmp_path):
    cfg = make_cfg("train.total_tokens=5120")
    full = _run(cfg, tmp_path, "full", "train", 2)
    _run(cfg, tmp_path, "half", "train", 2, 5)
    half_run = tmp_path / "half" / "run"
    assert (half_run / "checkpoints" / "step-00000005" / "dcp").is_dir()
    # one process reads the DCP shards back: `lengthwise export` equals what rank 0 held
    exported, _ = export_run(half_run, out=tmp_path / "exported")
    held, (model, _) = _load(tmp_path / "half" / "dump", 0), load_exported(exported)
    assert all(torch.equal(held[k], p) for k, p in model.named_parameters())
    resumed = _run(cfg, tmp_path, "half", "train", 2, "none", "resume")
    a, b = _load(full, 0), _load(resumed, 0)
    assert all(torch.equal(a[k], b[k]) for k in a)
