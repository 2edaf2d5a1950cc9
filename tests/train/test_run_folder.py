"""The run folder keeps its promises across failures (audit of 75c3811): a refused resume changes
nothing, the log equals the uninterrupted run's, a finished run stays finished, leftovers are
cleaned, the schedule survives a best checkpoint, the tokenizer is checked, modes follow the
umask, and the budget can be counted in real target tokens."""

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from lengthwise.cli import main
from lengthwise.rundir import RunDir, read_metrics
from lengthwise.train.checkpoint import step_dirs
from lengthwise.train.trainer import Trainer, train

TIMELESS = ("time", "tokens_per_s", "tflops")  # wall-clock fields differ between two runs


def _records(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMELESS} for r in read_metrics(run)]


def test_a_refused_resume_changes_nothing(make_cfg, capsys):
    """Audit A3: `--resume model.d_model=64` on a d_model 32 run crashed after overwriting
    config.yaml, so the run could not even be exported afterwards."""
    cfg = make_cfg("train.total_tokens=2560")
    train(cfg, quiet=True, stop_at_step=2)
    run = RunDir(cfg.train.out_dir)
    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    with pytest.raises(Exception, match=r"different model.d_model \(32 -> 64\)"):
        train(make_cfg("train.total_tokens=2560", "model.d_model=64"), resume=True, quiet=True)
    after = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    assert after == before
    assert main(["export", str(run.path), "--out", str(run.path.parent / "e")]) == 0
    capsys.readouterr()
    # what may change on a resume does: a longer budget and a new learning rate
    summary = train(make_cfg("train.total_tokens=3072", "optim.lr=1e-3"), resume=True, quiet=True)
    assert summary["steps"] == 6 and run.config().optim.lr == 1e-3


def test_log_of_a_resumed_run_equals_the_uninterrupted_one(make_cfg, tmp_path):
    """Audit A4: records between the checkpoint and the interruption were written twice. The
    interrupted attempt here logs 3 steps past its checkpoint (what a kill -9 leaves; the
    subprocess kill is tests/train/test_trainer.py::test_sigkill...), plus a torn last line."""
    common = ("train.checkpoint_every_tokens=2048", "eval.sets=[{name: val, split: val}]")
    common += ("eval.every_tokens=1536", "train.log_every_steps=2")
    full = make_cfg(*common, f"train.out_dir={tmp_path / 'full'}")
    train(full, quiet=True)
    half = make_cfg(*common, f"train.out_dir={tmp_path / 'half'}")
    train(half, quiet=True, stop_at_step=11)  # checkpoint at 11, log records up to 10
    metrics = tmp_path / "half" / "metrics.jsonl"
    extra = [
        json.dumps({"event": "train", "step": s, "tokens": s * 512, "loss": 9.0})
        for s in (12, 13, 14)
    ]
    metrics.write_text(metrics.read_text() + "\n".join(extra) + '\n{"event": "tr')
    shutil.rmtree(tmp_path / "half" / "export")
    (tmp_path / "half" / "summary.json").unlink()
    train(half, quiet=True, resume=True)
    assert _records(tmp_path / "half") == _records(tmp_path / "full")
    steps = [r["step"] for r in read_metrics(tmp_path / "half", "train")]
    assert steps == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    # every step's sequence length is in the log, once (Grow-P2 buckets: 8 ... 64)
    seq_lens = [t for r in read_metrics(tmp_path / "half", "train") for t in r["seq_lens"]]
    assert len(seq_lens) == 20 and set(seq_lens) <= {8, 16, 32, 64}


def test_a_fresh_start_does_not_append_to_a_dead_attempt(make_cfg):
    """Audit A4: a run whose first attempt died before its first checkpoint appended to the
    old log (steps went 100 -> 5)."""
    cfg = make_cfg("train.total_tokens=2560")
    run = RunDir(cfg.train.out_dir)
    run.path.mkdir(parents=True)
    run.metrics_path.write_text('{"event": "train", "step": 100, "tokens": 1, "time": 0}\n')
    run.summary_path.write_text("{}")
    train(cfg, quiet=True)
    assert [r["step"] for r in run.metrics("train")] == [1, 2, 3, 4, 5]
    assert run.summary()["steps"] == 5


def test_a_resume_drops_the_restore_best_record_of_the_earlier_end(tmp_path):
    """restore_best is written at a run's end, after its last checkpoint: a run resumed from
    that checkpoint (a larger budget) has not ended yet, and will write its own."""
    run = RunDir(tmp_path)
    lines = [
        {"event": "eval", "step": 4, "tokens": 2048, "time": 1.0},
        {"event": "restore_best", "step": 4, "tokens": 2048, "time": 1.0, "best_step": 2},
        {"event": "train", "step": 5, "tokens": 2560, "time": 1.5},
    ]
    run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert run.trim_metrics(4) == 2
    assert run.metrics() == lines[:1]


def test_resuming_a_finished_run_keeps_its_summary(make_cfg, capsys):
    """Audit A5: --resume on a finished run rewrote summary.json with final {} and 0 s."""
    cfg = make_cfg("train.total_tokens=2560", "eval.sets=[{name: val, split: val}]")
    train(cfg, quiet=True)
    run = RunDir(cfg.train.out_dir)
    before = {p: p.read_bytes() for p in (run.summary_path, run.metrics_path, run.config_path)}
    assert train(cfg, resume=True, quiet=True)["final"]["val/loss"] > 0
    assert "already finished (completed at step 5); nothing to train" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in before} == before
    assert run.summary()["wall_seconds"] > 0


def test_leftovers_of_killed_saves_are_removed_at_the_next_start(make_cfg):
    """Audit A6: checkpoints/.tmp-* piled up (71 MB after 20 kills)."""
    cfg = make_cfg("train.total_tokens=2560")
    train(cfg, quiet=True, stop_at_step=2)
    ckpts = Path(cfg.train.out_dir) / "checkpoints"
    ours = [ckpts / ".tmp-abc123", ckpts / ".step-00000004.tmp-x1", ckpts / ".best.old-9-x"]
    for d in ours:
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"0" * 100)
    (ckpts / "notes.txt").write_text("mine")
    run = Path(cfg.train.out_dir)
    (run / ".export.tmp-k1").mkdir()  # a killed export, a killed summary write
    (run / ".summary.json.tmp-k2").write_text("{")
    train(cfg, resume=True, quiet=True)
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "notes.txt",
        "step-00000002",
        "step-00000005",
    ]
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


def test_a_best_checkpoint_keeps_the_periodic_schedule(make_cfg, tmp_path):
    """Audit A7: a checkpoint written for a new best saved the old next-checkpoint mark, so a run
    resumed from it checkpointed one step late (step-381 instead of step-380)."""
    common = (
        "eval.sets=[{name: val, split: val}]",
        "eval.every_tokens=2560",
        "train.best_metric=val/loss",
        "train.checkpoint_every_tokens=2560",
        "train.keep_last=100",
    )
    full = make_cfg(*common, f"train.out_dir={tmp_path / 'full'}")
    train(full, quiet=True)
    half = make_cfg(*common, f"train.out_dir={tmp_path / 'half'}")
    train(half, quiet=True, stop_at_step=5)  # step 5: eval, new best and periodic together
    state = Trainer(half, resume=True, quiet=True).counters
    assert state.next_checkpoint == 5120 and state.next_eval == 5120
    train(half, quiet=True, resume=True)
    names = [p.name for p in step_dirs(tmp_path / "full" / "checkpoints")]
    assert names == [f"step-{s:08d}" for s in (5, 10, 15, 20)]
    assert [p.name for p in step_dirs(tmp_path / "half" / "checkpoints")] == names
    assert _records(tmp_path / "half") == _records(tmp_path / "full")


def test_a_swapped_tokenizer_is_refused(make_cfg, tmp_path, capsys):
    """Audit A8: a tokenizer.json replaced after prepare trained and was exported."""
    src = Path(make_cfg().data.out_dir)
    data = tmp_path / "data"
    shutil.copytree(src, data)
    tok = json.loads((data / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = "a", "b"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (data / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(Exception, match="built with a different tokenizer"):
        train(make_cfg(f"data.out_dir={data}"), quiet=True)
    assert not Path(make_cfg().train.out_dir).exists()


def test_run_folders_follow_the_umask(make_cfg, tmp_path):
    """Audit A10: mkstemp/mkdtemp made runs and exports 0600/0700 whatever the umask."""
    old = os.umask(0o022)
    try:
        cfg = make_cfg(
            "train.total_tokens=1024",
            "eval.sets=[{name: val, split: val}]",
            "train.best_metric=val/loss",
        )
        train(cfg, quiet=True)
        run = Path(cfg.train.out_dir)
        assert main(["export", str(run), "--out", str(tmp_path / "e")]) == 0
        paths = [run, *run.rglob("*"), tmp_path / "e", *(tmp_path / "e").rglob("*")]
        modes = {stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_file()}
        assert modes == {0o644}
        assert {stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_dir()} == {0o755}
    finally:
        os.umask(old)


def test_the_budget_can_count_real_target_tokens(make_cfg):
    """B8: `train.budget_unit: targets` ends the run, and runs the schedule, on real target
    tokens (padding, prompts and document-first tokens excluded); the default counts slots."""
    pad = ("batching.strategy=pad", "batching.curriculum.name=none", "train.total_tokens=3000")
    slots = train(make_cfg(*pad), quiet=True)
    assert slots["tokens"] >= 3000 > slots["tokens"] - 512
    cfg = make_cfg(
        *pad,
        "train.budget_unit=targets",
        "train.out_dir=" + str(Path(make_cfg().train.out_dir).parent / "t"),
    )
    targets = train(cfg, quiet=True)
    records = read_metrics(cfg.train.out_dir, "train")
    assert targets["target_tokens"] >= 3000 and targets["steps"] > slots["steps"]
    assert targets["target_tokens"] - 3000 < records[-1]["rows"] * records[-1]["seq_len"]
    t = Trainer(
        make_cfg(
            *pad,
            "train.budget_unit=targets",
            "train.out_dir=" + str(Path(cfg.train.out_dir).parent / "u"),
        ),
        quiet=True,
    )
    t.account(t.train_step(next(t.loader)))
    assert t.budget == t.counters.target_tokens < t.counters.tokens


@pytest.mark.parametrize("old, loggers", [(True, ["tensorboard"]), (False, [])])
def test_a_run_written_before_train_loggers_still_loads(make_cfg, tmp_path, old, loggers):
    """config.yaml of a run from before `train.loggers` says `train.tensorboard: bool`: the
    run folder still reads (export, eval, report), while a new config with the key is refused."""
    import yaml

    cfg = make_cfg()
    run = RunDir(cfg.train.out_dir)
    run.path.mkdir(parents=True)
    tree = cfg.model_dump(mode="json")
    del tree["train"]["loggers"]
    tree["train"]["tensorboard"] = old
    run.config_path.write_text(yaml.safe_dump(tree))
    assert run.config().train.loggers == loggers
    assert run.config().model == cfg.model
