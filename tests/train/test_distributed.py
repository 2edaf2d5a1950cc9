"""Two gloo processes on CPU against one process with the same global batch.

Every two-rank job runs in one torchrun launch (the module's `two_ranks` fixture; each process
pays ~3 s of start-up on a 2-core CPU), in turn in the same process group; the one-process
references run in the test's own process. Only the resume from a distributed checkpoint is a
second launch: new processes reading the DCP shards back is what it proves."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from dist_worker import run_job  # tests/train/dist_worker.py
from safetensors.torch import load_file

from lengthwise.config import Config
from lengthwise.data.store import prepare
from lengthwise.eval.exported import load_exported
from lengthwise.export import export_run
from lengthwise.rundir import read_metrics

WORKER = Path(__file__).parent / "dist_worker.py"

# torchrun gives each rank one thread (OMP_NUM_THREADS=1); the one-process references too
pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py

TASK_SET = {"name": "copy", "kind": "task", "task": "copy", "lengths": [2, 4], "n": 7, "tag": "ood"}
COPY_TRAIN = {"kind": "task", "task": "copy", "lengths": [2, 4], "n": 400}
HF_LLAMA = {"kind": "hf", "hf": {"config": {"model_type": "llama", "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1}}}  # fmt: skip


def _jobs(root: Path) -> dict[str, tuple[tuple[str, ...], str, int | None]]:
    """name: (config overrides, mode, stop_at_step). "train-ddp" is also the uninterrupted run
    of the checkpoint test ("half": the same config, stopped at step 5)."""
    copy = (  # a model trained on copy, with a task eval set, under FSDP2
        f"data.out_dir={root / 'copy_data'}",
        "data.splits=" + json.dumps({"train": COPY_TRAIN}),
        "batching.strategy=best_fit",
        "batching.curriculum.name=none",
        "optim.lr=1e-2",
        "train.total_tokens=40960",
        "eval.every_tokens=20480",
        "eval.sets=" + json.dumps([TASK_SET]),
        "distributed.fsdp=true",
    )
    best_fit = ("batching.strategy=best_fit", "batching.curriculum.name=none")
    hf = ("model=" + json.dumps(HF_LLAMA), "train.total_tokens=2560", *best_fit)
    hf_jobs = {  # without transformers its test skips, and the launch must not run them
        "hf-ddp": ((*hf, "distributed.fsdp=false"), "train", None),
        "hf-fsdp2": ((*hf, "distributed.fsdp=true"), "train", None),
    }
    return {
        "grad-decomposition": (("batching.strategy=decomposition",), "grad", None),
        "grad-best_fit": (best_fit, "grad", None),
        "train-ddp": (("distributed.fsdp=false", "train.total_tokens=5120"), "train", None),
        "train-fsdp2": (("distributed.fsdp=true", "train.total_tokens=5120"), "train", None),
        "half": (("train.total_tokens=5120",), "train", 5),
        "copy-fsdp2": (copy, "train", None),
        **(hf_jobs if importlib.util.find_spec("transformers") else {}),
    }


class Runs:
    """The jobs' configs, run folders and dumps: ROOT/WHERE/NAME/{run,dump}, WHERE "two" (two
    ranks) or "one" (one process)."""

    def __init__(self, root: Path, make_cfg_in) -> None:
        self.root, self.make_cfg_in, self.jobs = root, make_cfg_in, _jobs(root)

    def cfg(self, name: str, where: str) -> Config:
        return self.make_cfg_in(self.run_dir(name, where), *self.jobs[name][0])

    def dump(self, name: str, where: str = "two") -> Path:
        return self.root / where / name / "dump"

    def run_dir(self, name: str, where: str = "two") -> Path:
        return self.root / where / name / "run"

    def one_process(self, name: str) -> Path:
        """The job in this process, as one process with the same global batch."""
        _, mode, stop = self.jobs[name]
        run_job(self.cfg(name, "one"), self.dump(name, "one"), mode, stop)
        return self.dump(name, "one")


def _launch(jobs: list[dict], path: Path) -> None:
    """One torchrun launch of two ranks that runs `jobs` in turn."""
    path.write_text(json.dumps(jobs))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",  # a free local port
           "--nproc_per_node", "2", str(WORKER), str(path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[:4000] + "\n...\n" + proc.stderr[-1500:]


def _job(runs: Runs, name: str, **fields) -> dict:
    """The two-rank job `name` for dist_worker.py (its config written as YAML)."""
    path = runs.root / "two" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(runs.cfg(name, "two").model_dump(mode="json")))
    return {"config": str(path), "out": str(runs.dump(name)), "mode": runs.jobs[name][1], **fields}


@pytest.fixture(scope="module")
def two_ranks(make_cfg_in, tmp_path_factory) -> Runs:
    """Every job on two ranks, in one launch."""
    runs = Runs(tmp_path_factory.mktemp("dist"), make_cfg_in)
    prepare(runs.cfg("copy-fsdp2", "two").data, progress=False)  # the copy task's store
    jobs = [_job(runs, name, stop_at_step=stop) for name, (_, _, stop) in runs.jobs.items()]
    _launch(jobs, runs.root / "jobs.json")
    return runs


def _load(out: Path, rank: int) -> dict[str, torch.Tensor]:
    return load_file(out / f"rank-{rank}.safetensors")


def _losses(out: Path) -> list[float]:
    return [float(x) for x in (out / "losses.txt").read_text().split()]


@pytest.mark.parametrize("strategy", ["decomposition", "best_fit"])
def test_two_ranks_same_gradient_as_one_process(two_ranks, strategy):
    name = f"grad-{strategy}"
    one = _load(two_ranks.one_process(name), 0)
    two = two_ranks.dump(name)
    g0, g1 = _load(two, 0), _load(two, 1)
    for k in one:
        assert torch.equal(g0[k], g1[k]), k  # DDP leaves the same averaged gradient everywhere
        torch.testing.assert_close(g0[k], one[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_ranks_train_like_one_process(two_ranks, fsdp):
    name = "train-fsdp2" if fsdp else "train-ddp"
    one = two_ranks.one_process(name)
    two = two_ranks.dump(name)
    p0, p1, ref = _load(two, 0), _load(two, 1), _load(one, 0)
    for k in ref:
        assert torch.equal(p0[k], p1[k]), k  # bit-identical across ranks
        torch.testing.assert_close(p0[k], ref[k], rtol=1e-4, atol=1e-5)
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-5)


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_ranks_train_an_hf_model_like_one_process(two_ranks, fsdp):
    """model.kind: hf (a tiny Llama, packed rows) under DDP and FSDP2 (its decoder layers
    sharded one by one): the one-process run's weights and losses; the run's export, gathered
    onto rank 0, is a save_pretrained folder holding the ranks' weights."""
    transformers = pytest.importorskip("transformers", reason="model.kind: hf needs transformers")
    name = "hf-fsdp2" if fsdp else "hf-ddp"
    one = two_ranks.one_process(name)
    two = two_ranks.dump(name)
    p0, p1, ref = _load(two, 0), _load(two, 1), _load(one, 0)
    assert ref.keys() == p0.keys() and len(ref) == 21  # 2 x 9 layer tensors, norm, embed, head
    for k in ref:
        assert torch.equal(p0[k], p1[k]), k
        torch.testing.assert_close(p0[k], ref[k], rtol=1e-4, atol=1e-5)
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-5) and len(_losses(two)) == 5
    auto = transformers.AutoModelForCausalLM.from_pretrained(two_ranks.run_dir(name) / "export")
    exported = {"hf." + k: v for k, v in auto.state_dict().items()}
    assert all(torch.equal(exported[k], p0[k]) for k in p0)


def test_distributed_checkpoint_resume(two_ranks, tmp_path):
    half_run = two_ranks.run_dir("half")
    assert (half_run / "checkpoints" / "step-00000005" / "dcp").is_dir()
    # one process reads the DCP shards back: `lengthwise export` equals what rank 0 held
    exported, _ = export_run(half_run, out=tmp_path / "exported")
    held, (model, _) = _load(two_ranks.dump("half"), 0), load_exported(exported)
    assert all(torch.equal(held[k], p) for k, p in model.named_parameters())
    # new processes resume from the DCP checkpoint and end where the uninterrupted run did
    resumed = tmp_path / "resumed"
    _launch([_job(two_ranks, "half", resume=True, out=str(resumed))], tmp_path / "jobs.json")
    a, b = _load(two_ranks.dump("train-ddp"), 0), _load(resumed, 0)
    assert all(torch.equal(a[k], b[k]) for k in a)


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

    def oracle(
        lm, task, items, budget, batch_size, stop=None
    ):  # every answer right: counts are visible
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


def test_fsdp2_with_task_eval_sets_matches_one_process(two_ranks):
    """Task eval sets under FSDP2 (refused before): two ranks decode in lockstep (no hang) and
    log the same accuracy and parse rate as one process, on a model trained on copy."""
    two_ranks.one_process("copy-fsdp2")
    one = read_metrics(two_ranks.run_dir("copy-fsdp2", "one"), "eval")
    two = read_metrics(two_ranks.run_dir("copy-fsdp2"), "eval")
    assert [r["step"] for r in one] == [r["step"] for r in two] and len(one) == 2
    for a, b in zip(one, two, strict=True):
        assert (a["copy/acc"], a["copy/parse_rate"]) == (b["copy/acc"], b["copy/parse_rate"])
        assert a["se"] == b["se"]  # the SEs are over all 7 items, not one rank's share
    assert one[-1]["copy/parse_rate"] > 0  # real answers were decoded (digits), not just EOS
