"""Trainer behaviour on a tiny model: exact loss normalization, resume, NaN guard, golden loss."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lengthwise.cli import main
from lengthwise.config import load_config
from lengthwise.data.tokenizer import load_tokenizer
from lengthwise.rundir import read_metrics
from lengthwise.train.trainer import Trainer, TrainingDiverged, train

GOLDEN = Path(__file__).parent / "golden" / "tiny_decomposition_grow_p2.json"


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model_plain.state_dict().items()}


def _grads(trainer: Trainer, batch) -> dict[str, torch.Tensor]:
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.backward(batch)
    return {n: p.grad.clone() for n, p in trainer.model_plain.named_parameters()}


def test_accumulated_micro_batches_give_the_same_gradient(make_cfg):
    # decomposition buckets of 8..64 tokens; 512 tokens per step -> 8..64 rows per step.
    whole = Trainer(make_cfg())
    split = Trainer(
        make_cfg(
            "train.micro_batch_tokens=128",
            "train.out_dir=" + str(Path(whole.run_dir).parent / "run2"),
        )
    )
    for _ in range(3):
        batch = next(whole.loader)
        assert torch.equal(batch.input_ids, next(split.loader).input_ids)
        g1, g4 = _grads(whole, batch), _grads(split, batch)
        for name in g1:
            torch.testing.assert_close(g4[name], g1[name], rtol=1e-5, atol=1e-7)
    # The normalizer is the whole step's target count: the loss gradient of a step is that of
    # the mean token loss, whatever the split.
    assert split.cfg.train.micro_batch_tokens == 128


def test_loss_normalization_equals_mean_token_loss(make_cfg):
    t = Trainer(make_cfg())
    batch = next(t.loader)
    with torch.no_grad():
        logits = t.model_plain(batch.input_ids, batch.position_ids, batch.doc_ids)
        mean = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), batch.targets.flatten(), ignore_index=-100
        )
    out = t.train_step(batch)
    assert out.loss == pytest.approx(mean.item(), rel=1e-6)
    assert out.targets == batch.n_target_tokens == int((batch.targets != -100).sum())


@pytest.mark.parametrize(
    "strategy", ["batching.strategy=decomposition", "batching.strategy=best_fit"]
)
def test_resume_is_bitwise_exact(make_cfg, tmp_path, strategy):
    overrides = [strategy, "model.resid_dropout=0.1", "model.attn_dropout=0.1"]
    if "best_fit" in strategy:
        overrides.append("batching.curriculum.name=none")
    full = train(make_cfg(*overrides, f"train.out_dir={tmp_path / 'full'}"), quiet=True)
    first = train(
        make_cfg(*overrides, f"train.out_dir={tmp_path / 'half'}"), quiet=True, stop_at_step=10
    )
    assert first["stop_reason"] == "paused" and first["steps"] == 10
    with pytest.raises(Exception, match="pass --resume"):
        train(make_cfg(*overrides, f"train.out_dir={tmp_path / 'half'}"), quiet=True)
    second = train(
        make_cfg(*overrides, f"train.out_dir={tmp_path / 'half'}"), resume=True, quiet=True
    )
    assert second["steps"] == full["steps"] == 20
    a = load_file(tmp_path / "full" / "export" / "model.safetensors")
    b = load_file(tmp_path / "half" / "export" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    losses_full = [r["loss"] for r in read_metrics(tmp_path / "full", "train")]
    losses_half = [r["loss"] for r in read_metrics(tmp_path / "half", "train")]
    assert losses_half == losses_full
    # the clock continues across the resume (it used to restart at 0)
    times = [r["time"] for r in read_metrics(tmp_path / "half", "train")]
    assert times == sorted(times) and len(times) == len(losses_full)


def test_nonfinite_steps_are_skipped_then_abort(make_cfg, monkeypatch):
    t = Trainer(make_cfg("train.max_nonfinite_steps=3"))
    before = _params(t)
    real_forward = t.model_plain.forward
    monkeypatch.setattr(
        t.model_plain, "forward", lambda *a, **k: real_forward(*a, **k) * float("nan")
    )
    t.model = t.model_plain
    out = t.train_step(next(t.loader))
    assert not out.finite
    after = _params(t)
    assert all(torch.equal(before[k], after[k]) for k in before)  # update skipped
    with pytest.raises(TrainingDiverged, match="3 non-finite steps in a row"):
        t.fit()
    events = read_metrics(t.run_dir, "nonfinite")
    assert len(events) == 3


def test_run_dir_contents_and_eval(make_cfg):
    cfg = make_cfg(
        "eval.sets=[{name: val, split: val}]",
        "eval.every_tokens=5120",
        "train.best_metric=val/loss",
        "train.checkpoint_every_tokens=5120",
    )
    summary = train(cfg, quiet=True)
    run = Path(cfg.train.out_dir)
    for name in (
        "config.yaml",
        "tokenizer.json",
        "metrics.jsonl",
        "export/model.safetensors",
        "export/config.json",
        "export/tokenizer.json",
        "data_stats.json",
        "summary.json",
    ):
        assert (run / name).is_file(), name
    evals = read_metrics(run, "eval")
    assert [e["step"] for e in evals] == [10, 20]
    # what the config says each eval logs (checked before any work) is what the evaluator logs
    assert [k for k in evals[0] if "/" in k] == cfg.eval.metric_names() == ["val/loss", "val/ppl"]
    # their standard errors under one more field: the loss SE of a few thousand tokens
    assert set(evals[0]["se"]) == {"val/loss", "val/ppl"} and 0 < evals[0]["se"]["val/loss"] < 0.1
    assert summary["alerts"] == summary["alerts_significant"] == summary["alerts_within_noise"] == 0
    assert all(e["val/loss"] > 0 for e in evals)
    assert summary["best"] == min(e["val/loss"] for e in evals)
    assert (run / "checkpoints" / "best" / "manifest.json").is_file()
    best_step = json.loads((run / "checkpoints" / "best" / "manifest.json").read_text())["step"]
    assert best_step == min(evals, key=lambda e: e["val/loss"])["step"]
    train_rows = read_metrics(run, "train")
    assert [r["step"] for r in train_rows] == list(range(1, 21))
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]


def test_corrupted_checkpoint_is_reported(make_cfg):
    cfg = make_cfg()
    train(cfg, quiet=True, stop_at_step=5)
    ckpt = Path(cfg.train.out_dir) / "checkpoints" / "step-00000005"
    data = (ckpt / "train_state.pt").read_bytes()
    (ckpt / "train_state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match="corrupted or truncated checkpoint"):
        train(cfg, resume=True, quiet=True)


def test_golden_loss(make_cfg):
    """20 steps of a tiny model: a change that should not touch numerics reproduces these
    losses; regenerate deliberately with LENGTHWISE_REGEN_GOLDEN=1."""
    cfg = make_cfg()
    train(cfg, quiet=True)
    losses = [r["loss"] for r in read_metrics(Path(cfg.train.out_dir), "train")]
    if os.environ.get("LENGTHWISE_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"torch": torch.__version__, "losses": losses}, indent=1))
    golden = json.loads(GOLDEN.read_text())["losses"]
    assert losses == pytest.approx(golden, rel=1e-4)


HF_LLAMA = {"kind": "hf", "hf": {"config": {"model_type": "llama", "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2}}}  # fmt: skip


@pytest.mark.parametrize(
    "model",
    [None, pytest.param(HF_LLAMA, marks=pytest.mark.slow)],  # hf: model.kind hf, ~13 s
    ids=["gpt", "hf"],
)
def test_sigkill_mid_run_resumes_to_the_same_parameters(make_cfg, tmp_path, single_thread, model):
    """`kill -9` of a real `lengthwise train` process after its second checkpoint; `--resume`
    ends where the uninterrupted run ends. The uninterrupted run and the resume run in this
    process (`cli.main`: what the dead process left on disk is all a resume reads; each process
    costs ~3 s of start-up), all three on one thread so that they agree bitwise."""
    import yaml

    extra = [] if model is None else ["model=" + json.dumps(model)]

    def cfg_file(name: str) -> Path:
        cfg = make_cfg(
            *extra,
            f"train.out_dir={tmp_path / name}",
            "train.checkpoint_every_tokens=1024",
            "train.total_tokens=30720",
        )
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        return path

    assert main(["train", str(cfg_file("full")), "--quiet"]) == 0
    victim = cfg_file("killed")
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lengthwise", "train", "--quiet", victim],
                            env=one_thread)  # fmt: skip
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(ckpts.glob("step-*"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "export" / "model.safetensors").exists()  # really interrupted
    assert main(["train", str(victim), "--quiet", "--resume"]) == 0
    a = load_file(tmp_path / "full" / "export" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "export" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # the log equals the uninterrupted run's: records past the checkpoint were dropped on resume
    def records(name: str) -> list[dict]:
        timeless = ("time", "tokens_per_s", "tflops")
        rows = read_metrics(tmp_path / name)
        return [{k: v for k, v in r.items() if k not in timeless} for r in rows]

    assert records("killed") == records("full") and len(records("full")) == 60


def test_abacus_config_takes_digit_ids_from_the_tokenizer(make_cfg):
    """`model.position: abacus` needs no ids in the YAML: the trainer reads the digits' token ids
    from the run's tokenizer and saves them in the resolved config."""
    cfg = make_cfg("model.position=abacus", "train.total_tokens=512")
    train(cfg, quiet=True)
    run = Path(cfg.train.out_dir)
    resolved = load_config(run / "config.yaml")
    tok = load_tokenizer(run / "tokenizer.json")
    assert resolved.model.digit_token_ids == [tok.encode(str(d))[0] for d in range(10)]


def _losses(cfg) -> list[float]:
    train(cfg, quiet=True)
    return [r["loss"] for r in read_metrics(Path(cfg.train.out_dir), "train")]


def test_bf16_autocast_tracks_fp32(make_cfg, tmp_path):
    """The CUDA default (bf16 autocast, fp32 logits and loss) run through CPU autocast: same
    losses as fp32 to bf16 precision, every step finite."""
    fp32 = _losses(make_cfg("train.total_tokens=5120", f"train.out_dir={tmp_path / 'a'}"))
    bf16 = _losses(
        make_cfg(
            "train.total_tokens=5120", "train.precision=bf16", f"train.out_dir={tmp_path / 'b'}"
        )
    )
    assert len(bf16) == len(fp32) == 10
    assert bf16 != fp32  # autocast really ran
    assert bf16 == pytest.approx(fp32, rel=2e-2)


@pytest.mark.slow
def test_compiled_training_matches_eager(make_cfg, tmp_path):
    """train.compile=true (Inductor on CPU; ~1 minute cold) optimizes the same thing: losses
    within float32 reassociation noise of the eager run."""
    common = (
        "batching.strategy=concat_chunk",
        "batching.curriculum.name=none",
        "train.total_tokens=2560",
    )
    eager = _losses(make_cfg(*common, f"train.out_dir={tmp_path / 'eager'}"))
    compiled = _losses(
        make_cfg(*common, "train.compile=true", f"train.out_dir={tmp_path / 'compiled'}")
    )
    assert compiled == pytest.approx(eager, rel=1e-4)
