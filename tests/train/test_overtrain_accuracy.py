"""A real tiny run that over-trains, measured by *accuracy*: 700 addition problems (1-4 digits,
coupled format) of which 40% are trained on a wrong last digit (`label_noise`, the over-fitting
probe of Zhang et al. 2017 / Arpit et al. 2017). The model learns the rule first, so exact-match
accuracy on fresh problems (OOD) rises; then it memorizes the wrong answers, so that accuracy
falls while the training loss keeps falling. The monitor must alert and early stopping must stop
exactly where their rules say, and the restored best checkpoint must score the best accuracy.

Measured on the 2-core dev machine, one thread, ~20 s per run (train.seed 0 and 1): fresh
accuracy 0.05 -> best 0.91 / 0.92 -> 0.56 / 0.65 at the stop (patience 15 evals). Without the
noise the same run reaches 1.00 and is still at 1.00 when it stops (the fall is the
memorization of the wrong answers, not the schedule)."""

import pytest
import torch
from safetensors.torch import load_file

from lengthwise.config import Config
from lengthwise.data.store import prepare
from lengthwise.eval.accuracy import score_items
from lengthwise.eval.evaluator import task_items, training_keys
from lengthwise.eval.lengthwise_lm import LengthwiseLM
from lengthwise.rundir import read_metrics
from lengthwise.tasks import get_task
from lengthwise.train.trainer import train

PATIENCE = 15
DROP = 0.05


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def config(tmp_path) -> Config:
    task = {"task": "addition", "lengths": [1, 4], "format": "coupled"}
    return Config.model_validate(
        {
            "data": {
                "out_dir": str(tmp_path / "data"),
                "tokenizer": {"kind": "char", "alphabet": "0123456789+="},
                "splits": {"train": {"kind": "task", **task, "n": 700, "label_noise": 0.4}},
            },
            "batching": {
                "strategy": "pad",
                "tokens_per_step": 512,
                "max_len": 32,
                "position_offset_max": 8,
            },
            "model": {
                "n_layer": 2,
                "n_head": 4,
                "d_model": 64,
                "position": "relative_bias",
                "max_distance": 4,
            },
            "optim": {"lr": 3e-3, "weight_decay": 0.0},
            "schedule": {"warmup_tokens": 2048, "decay": "cosine"},
            "train": {
                "out_dir": str(tmp_path / "run"),
                "total_tokens": 2_500_000,
                "device": "cpu",
                "progress": False,
                "tensorboard": False,
                "log_every_steps": 16,
            },
            "eval": {
                "every_tokens": 32768,
                "batch_size": 300,
                "sets": [
                    {"name": "fresh", "kind": "task", **task, "n": 300, "seed": 7, "tag": "ood"},
                    {"name": "seen", "kind": "task", **task, "n": 100, "fresh": False, "seed": 0},
                ],
            },
            "monitor": {
                "alert_drop": DROP,
                "early_stopping": {"enabled": True, "metric": "fresh/acc", "patience": PATIENCE},
                "restore_best": True,
            },
        }
    )


def test_ood_accuracy_rises_then_falls_and_the_monitor_stops_at_the_right_eval(tmp_path):
    cfg = config(tmp_path)
    prepare(cfg.data, progress=False)
    summary = train(cfg, quiet=True)
    records = read_metrics(tmp_path / "run")
    evals = [r for r in records if r["event"] == "eval"]
    acc = [e["fresh/acc"] for e in evals]
    best_i = max(range(len(acc)), key=acc.__getitem__)

    # rises (from nothing to most problems right), then falls
    assert acc[0] <= 0.1 and acc[best_i] >= 0.75
    assert acc[-1] <= acc[best_i] - 0.15
    # ... while the training loss keeps falling (means of 5 train records, smoothing the noise)
    train_loss = [(r["step"], r["loss"]) for r in records if r["event"] == "train"]

    def smoothed(step: int) -> float:
        last = [loss for s, loss in train_loss if s <= step][-5:]
        return sum(last) / len(last)

    assert smoothed(evals[-1]["step"]) < 0.8 * smoothed(evals[best_i]["step"])

    # alerts: exactly the evals at which fresh/acc is > 5% below its best so far
    expected, best = [], -1.0
    for e in evals:
        if e["fresh/acc"] < best * (1 - DROP):
            expected.append(e["step"])
        best = max(best, e["fresh/acc"])
    alerts = [r for r in records if r["event"] == "alert" and r["metric"] == "fresh/acc"]
    assert [a["step"] for a in alerts] == expected and expected

    # early stopping: the PATIENCE-th eval in a row that does not beat the best
    best, wait, stop_at = -1.0, 0, None
    for e in evals:
        if e["fresh/acc"] > best:
            best, best_step, wait = e["fresh/acc"], e["step"], 0
        else:
            wait += 1
            if wait == PATIENCE:
                stop_at = e["step"]
                break
    assert stop_at == evals[-1]["step"] == summary["steps"]
    assert summary["stop_reason"] == "early_stopping"
    assert summary["restored_best_step"] == best_step == evals[best_i]["step"]

    # the exported model is the best checkpoint, and it scores the best eval's accuracy
    run_dir = tmp_path / "run"
    exported = load_file(run_dir / "export" / "model.safetensors")
    kept = load_file(run_dir / "checkpoints" / "best" / "model.safetensors")
    assert all(torch.equal(exported[k], kept[k]) for k in kept)
    items = task_items(cfg.eval.sets[0], exclude=training_keys(cfg))  # what the evals scored
    score = score_items(LengthwiseLM.from_export(run_dir / "export"), get_task("addition"), items)
    assert abs(score.to_dict()["acc"] - acc[best_i]) <= 0.01
