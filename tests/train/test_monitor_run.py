"""A real tiny run that over-fits: 48 addition problems trained for many epochs. The loss on fresh
problems (OOD: never in the training data) falls, then rises while the training loss keeps
falling; the monitor must alert and early stopping must stop exactly where its rules say, and
the best checkpoint is restored."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lengthwise.config import Config
from lengthwise.data.store import prepare
from lengthwise.rundir import read_metrics
from lengthwise.train.trainer import train


@pytest.fixture(scope="module")
def overfit_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("overfit")
    data = {
        "out_dir": str(root / "data"),
        "tokenizer": {"kind": "char"},
        "splits": {
            "train": {"kind": "task", "task": "addition", "lengths": [2, 3], "n": 48},
            "fresh": {"kind": "task", "task": "addition", "lengths": [2, 3], "n": 200, "seed": 9},
        },
    }
    prepare(Config.model_validate({"data": data}).data, progress=False)
    return data


def run(data, out: Path, **monitor) -> tuple[dict, list[dict]]:
    cfg = Config.model_validate(
        {
            "data": data,
            "batching": {"strategy": "best_fit", "tokens_per_step": 256, "max_len": 32},
            "model": {"n_layer": 2, "n_head": 2, "d_model": 64, "position": "rope"},
            "optim": {"lr": 3e-3, "weight_decay": 0.0},
            "schedule": {"warmup_tokens": 512, "decay": "constant"},
            "train": {
                "out_dir": str(out),
                "total_tokens": 40960,
                "progress": False,
                "loggers": [],
                "log_every_steps": 4,
            },
            "eval": {
                "every_tokens": 1024,
                "sets": [
                    {"name": "fresh", "split": "fresh", "tag": "ood", "tokens": 10**5},
                    {
                        "name": "seen",
                        "kind": "task",
                        "task": "addition",
                        "lengths": [2, 3],
                        "n": 24,
                        "fresh": False,
                        "seed": 0,
                        "tag": "id",
                    },
                ],
            },
            "monitor": {"alert_drop": 0.05, **monitor},
        }
    )
    summary = train(cfg, quiet=True)
    return summary, read_metrics(out)


def test_alerts_follow_the_rule_and_the_run_really_overfits(overfit_data, tmp_path):
    summary, records = run(overfit_data, tmp_path / "run")
    evals = [r for r in records if r["event"] == "eval"]
    losses = [e["fresh/loss"] for e in evals]
    best_i = min(range(len(losses)), key=losses.__getitem__)
    assert 0 < best_i < len(losses) - 3 and losses[-1] > 1.2 * losses[best_i]  # U-shaped
    train_loss = {r["step"]: r["loss"] for r in records if r["event"] == "train"}
    assert train_loss[evals[-1]["step"]] < train_loss[evals[best_i]["step"]]  # still falling
    # alerts: exactly the evals at which fresh/loss is > 5% above its best so far
    # (first: the eval before was not in alert, i.e. a new drop episode)
    expected, firsts, best, dropped = [], [], float("inf"), False
    for e in evals:
        now = e["fresh/loss"] > best * 1.05
        if now:
            expected.append(e["step"])
            firsts.append(not dropped)
        dropped, best = now, min(best, e["fresh/loss"])
    alerts = [r for r in records if r["event"] == "alert"]
    assert [a["step"] for a in alerts] == expected and expected
    assert [a["first"] for a in alerts] == firsts
    assert summary["alerts"] == len(alerts) and summary["stop_reason"] == "completed"
    assert {"seen/acc", "seen/parse_rate", "ood_mean/loss"} <= set(evals[0])


def test_early_stopping_stops_at_patience_and_restores_best(overfit_data, tmp_path):
    es = {"enabled": True, "metric": "fresh/loss", "patience": 3}
    summary, records = run(overfit_data, tmp_path / "run", early_stopping=es, restore_best=True)
    evals = [r for r in records if r["event"] == "eval"]
    # replay the rule by hand: stop at the 3rd eval in a row that does not beat the best
    best, wait, stop_at = float("inf"), 0, None
    for e in evals:
        if e["fresh/loss"] < best:
            best, best_step, wait = e["fresh/loss"], e["step"], 0
        else:
            wait += 1
            if wait == 3:
                stop_at = e["step"]
                break
    assert stop_at == evals[-1]["step"]  # nothing was evaluated after the stop
    stops = [r for r in records if r["event"] == "early_stop"]
    assert [s["step"] for s in stops] == [stop_at] and "did not improve" in stops[0]["reason"]
    assert summary["stop_reason"] == "early_stopping" and summary["steps"] == stop_at
    assert summary["restored_best_step"] == best_step and summary["best"] == best
    run_dir = tmp_path / "run"
    exported = load_file(run_dir / "export" / "model.safetensors")
    kept = load_file(run_dir / "checkpoints" / "best" / "model.safetensors")
    assert all(torch.equal(exported[k], kept[k]) for k in kept)


def test_stop_on_drop_and_alert_hook(overfit_data, tmp_path):
    """The hook is an argv list run without a shell: it gets the alert as JSON on stdin, and the
    run's log names it before the first step."""
    hook_file = tmp_path / "alerts.jsonl"
    copy_stdin = f"import sys; open({str(hook_file)!r}, 'a').write(sys.stdin.read())"
    hook = [sys.executable, "-c", copy_stdin]
    es = {"enabled": True, "metric": "fresh/loss", "patience": 1000, "stop_on_drop": True}
    summary, records = run(overfit_data, tmp_path / "run", early_stopping=es, on_alert=hook)
    assert records[0] == {**records[0], "event": "hook", "step": 0, "on_alert": hook}
    alerts = [r for r in records if r["event"] == "alert"]
    assert len(alerts) == 1 and summary["steps"] == alerts[0]["step"]
    event = json.loads(hook_file.read_text())
    assert event["metric"] == "fresh/loss" and event["step"] == alerts[0]["step"]
    assert event["drop"] > 0.05 and event["first"] is True
