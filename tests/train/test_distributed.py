"""Two gloo processes on CPU against one process with the same global batch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lengthwise.eval.exported import load_exported
from lengthwise.export import export_run

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


TASK_SET = {"name": "copy", "kind": "task", "task": "copy", "lengths": [2, 4], "n": 7, "tag": "ood"}


def test_fsdp2_task_eval_shards_are_topped_up_and_not_counted(make_cfg, monkeypatch):
    """In one process, as rank 1 of 2 under FSDP2: 7 items give rank 1 items 1, 3, 5 plus one
    top-up (rank 0 has 4), decoded without early stopping; the top-up is not counted."""
    import lengthwise.eval.evaluator as ev
    from lengthwise.data.tokenizer import load_tokenizer
    from lengthwise.eval.accuracy import score_items
    from lengthwise.train.trainer import Trainer

    cfg = make_cfg("distributed.fsdp=true", "eval.sets=" + json.dumps([TASK_SET]))
    model = Trainer(cfg, quiet=True).model_plain
    seen = {}

    def oracle(lm, task, items, budget, batch_size):  # every answer right: counts are visible
        seen["items"], seen["stop_early"] = list(items), lm.stop_early
        return score_items(_Oracle(items), task, items, budget, batch_size)

    monkeypatch.setattr(ev, "score_items", oracle)
    tok = load_tokenizer(cfg.data.out_dir / "tokenizer.json")
    reduce_log = []
    evaluator = ev.Evaluator(cfg, tok, torch.device("cpu"), rank=1, world_size=2,
                             reduce=lambda t: reduce_log.append(t.tolist()) or t)  # fmt: skip
    items = evaluator.items["copy"]
    metrics = evaluator.run(model)
    assert seen["items"] == [items[1], items[3], items[5], items[0]]
    assert seen["stop_early"] is False
    assert reduce_log == [[3.0, 3.0, 3.0]]  # correct, parsed, total: the top-up left out
    assert metrics["copy/acc"] == 1.0
    # DDP (no lockstep): no top-up, early stopping on
    ddp = ev.Evaluator(make_cfg("eval.sets=" + json.dumps([TASK_SET])), tok,
                       torch.device("cpu"), rank=1, world_size=2)  # fmt: skip
    ddp.run(model)
    assert seen["items"] == [items[1], items[3], items[5]] and seen["stop_early"] is True


class _Oracle:
    """An EvalLM whose greedy answers are the items' completions."""

    def __init__(self, items):
        self.answers = {it.prompt: it.completion for it in items}

    def greedy(self, prompts, max_new_tokens, batch_size=64):
        return [self.answers[p] for p in prompts]


def test_fsdp2_with_task_eval_sets_matches_one_process(make_cfg, tmp_path):
    """Task eval sets under FSDP2 (refused before): two ranks decode in lockstep (no hang) and
    log the same accuracy and parse rate as one process, on a model trained on copy."""
    from lengthwise.data.store import prepare
    from lengthwise.rundir import read_metrics

    train = {"kind": "task", "task": "copy", "lengths": [2, 4], "n": 400}
    cfg = make_cfg(
        f"data.out_dir={tmp_path / 'copy_data'}",
        "data.splits=" + json.dumps({"train": train}),
        "batching.strategy=best_fit",
        "batching.curriculum.name=none",
        "optim.lr=1e-2",
        "train.total_tokens=40960",
        "eval.every_tokens=20480",
        "eval.sets=" + json.dumps([TASK_SET]),
        "distributed.fsdp=true",
    )
    prepare(cfg.data, progress=False)
    _run(cfg, tmp_path, "one", "train", 1)
    _run(cfg, tmp_path, "two", "train", 2)
    one = read_metrics(tmp_path / "one" / "run", "eval")
    two = read_metrics(tmp_path / "two" / "run", "eval")
    assert [r["step"] for r in one] == [r["step"] for r in two] and len(one) == 2
    for a, b in zip(one, two, strict=True):
        assert (a["copy/acc"], a["copy/parse_rate"]) == (b["copy/acc"], b["copy/parse_rate"])
    assert one[-1]["copy/parse_rate"] > 0  # real answers were decoded (digits), not just EOS
