"""Loading a run folder never runs code, and export never deletes what it did not write
(audit of 75c3811, defects A1 and A2)."""

import hashlib
import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, load_model

from lengthwise.cli import main
from lengthwise.model.gpt import GPT
from lengthwise.rundir import RunDir
from lengthwise.train import checkpoint
from lengthwise.train.trainer import train


class Payload:
    """Unpickling this calls os.system: a harmless `touch MARKER` stands for any command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _as_dcp_checkpoint(run: Path) -> Path:
    """Rewrite the run's last checkpoint in the DCP layout a DDP/FSDP2 run writes (dcp/ +
    rank-0.pt), with a manifest whose checksums are right: what an attacker can also write."""
    ckpt = checkpoint.latest(run / "checkpoints")
    cfg = RunDir(run).config()
    model = GPT(cfg.model)
    load_model(model, str(ckpt / "model.safetensors"))
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(ckpt / "dcp"), no_dist=True)
    state = torch.load(ckpt / "train_state.pt", weights_only=True)
    state.pop("optimizer")
    torch.save(state, ckpt / "rank-0.pt")
    (ckpt / "model.safetensors").unlink()
    (ckpt / "train_state.pt").unlink()
    _write_manifest(ckpt)
    return ckpt


def _write_manifest(ckpt: Path) -> None:
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest = {
        "step": int(ckpt.name.split("-")[1]),
        "format": "dcp",
        "world_size": 1,
        "meta": {},
        "sha256": {p.relative_to(ckpt).as_posix(): _sha(p) for p in files},
    }
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def dcp_run(make_cfg, tmp_path):
    cfg = make_cfg("train.total_tokens=1024")
    train(cfg, quiet=True, stop_at_step=1)
    run = Path(cfg.train.out_dir)
    return cfg, run, _as_dcp_checkpoint(run)


def test_a_dcp_checkpoint_still_exports(dcp_run, tmp_path):
    _, run, ckpt = dcp_run
    assert main(["export", str(run), "--out", str(tmp_path / "e")]) == 0
    a = load_file(tmp_path / "e" / "model.safetensors")
    model = GPT(RunDir(run).config().model)
    checkpoint.load_weights(ckpt, model)
    assert all(torch.equal(a[k], v) for k, v in model.state_dict().items() if k in a)


def test_pickled_code_in_dcp_metadata_never_runs(dcp_run, tmp_path, capsys, monkeypatch):
    cfg, run, ckpt = dcp_run
    marker = tmp_path / "MARKER"
    (ckpt / "dcp" / ".metadata").write_bytes(pickle.dumps(Payload(marker), protocol=4))
    _write_manifest(ckpt)  # the checksums are right: they prove integrity, not origin
    assert main(["export", str(run), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "refused to load" in err and "posix.system" in err and len(err.splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "e").exists()
    with pytest.raises(Exception, match="refused to load"):
        train(cfg, resume=True, quiet=True)
    assert not marker.exists()
    # the payload is live: plain pickle (what DCP uses) would have run it
    pickle.loads((ckpt / "dcp" / ".metadata").read_bytes())
    assert marker.exists()


def test_pickled_code_in_dcp_entries_never_runs(tmp_path):
    """DCP reads non-tensor entries (optimizer hyper-parameters) with weights_only=False; the
    planner checks them with weights_only=True first."""
    marker = tmp_path / "MARKER"
    planner = checkpoint._SafeLoadPlanner()
    with pytest.raises(pickle.UnpicklingError):
        planner.load_bytes(None, io.BytesIO(pickle.dumps(Payload(marker), protocol=2)))
    assert not marker.exists()


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda m: m.pop("sha256"), "sha256 must map"),
        (lambda m: m.update(format="pickle"), "format must be one of"),
        (lambda m: m.update(world_size="1"), "world_size must be"),
        (lambda m: m["sha256"].update({"../../x": "0"}), "points outside the checkpoint"),
    ],
)
def test_a_bad_manifest_is_one_line(make_cfg, capsys, edit, problem):
    cfg = make_cfg("train.total_tokens=512")
    train(cfg, quiet=True)
    ckpt = checkpoint.latest(Path(cfg.train.out_dir) / "checkpoints")
    manifest = json.loads((ckpt / "manifest.json").read_text())
    edit(manifest)
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    assert main(["export", str(cfg.train.out_dir)]) == 2
    err = capsys.readouterr().err
    assert problem in err and len(err.splitlines()) == 1


def test_export_never_deletes_what_it_did_not_write(make_cfg, tmp_path, capsys):
    cfg = make_cfg("train.total_tokens=512")
    train(cfg, quiet=True)
    run = str(cfg.train.out_dir)
    mine = tmp_path / "d"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    assert main(["export", run, "--out", str(mine)]) == 2
    assert "not an earlier lengthwise export" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "x"
    a_file = tmp_path / "f.txt"
    a_file.write_text("keep")
    for extra in ([], ["--overwrite"]):  # a file is never replaced by a folder
        assert main(["export", run, "--out", str(a_file), *extra]) == 2
        assert a_file.read_text() == "keep"
    # an earlier export, an empty folder, a new path: replaced or created
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "new", tmp_path / "new", empty):
        assert main(["export", run, "--out", str(out)]) == 0
        assert (out / "model.safetensors").is_file()
    assert main(["export", run, "--out", str(mine), "--overwrite"]) == 0
    assert (mine / "model.safetensors").is_file() and not (mine / "notes.txt").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
