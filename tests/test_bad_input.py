"""Bad input, one table: every row is a command line that must end with ONE stderr line
`lengthwise: error: ...` (containing the row's message), exit code 2, no traceback, and with
nothing written (`absent`) or deleted (`kept`). The commands run in-process through
`lengthwise.cli.main` on a tiny prepared corpus and a tiny trained run (module fixtures).

Adding a case is adding a row: placeholders in argv and paths are filled from `paths`
({cfg}, {run}, {file}, {tmp}, ...), and `setup` (a function of the paths) prepares anything else.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lengthwise.cli import build_parser, main
from lengthwise.config import load_config

pytestmark = pytest.mark.usefixtures("single_thread")

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"]
NOTES = "my notes, not lengthwise's"


@dataclass(frozen=True)
class Case:
    argv: list[str]
    message: str  # a substring of the one stderr line
    absent: tuple[str, ...] = ()  # paths that must not exist afterwards (nothing written)
    kept: tuple[str, ...] = ()  # files holding NOTES that must survive (nothing deleted)
    setup: Callable[[dict[str, Path]], None] | None = None


def _notes_in(folder: str) -> Callable[[dict[str, Path]], None]:
    """A folder of the user's (notes.txt, no config.yaml) where lengthwise would put a run."""

    def setup(paths: dict[str, Path]) -> None:
        path = Path(folder.format(**paths))
        path.mkdir(parents=True, exist_ok=True)
        (path / "notes.txt").write_text(NOTES)

    return setup


def _e5_quick_point() -> str:
    from lengthwise import experiments as ex

    return ex.load_spec(ex.spec_path("E5"), "E5", quick=True).points[0].name


def _copy_run(paths: dict[str, Path]) -> None:
    """{run_copy}: a copy of the trained run; {run_copy_cfg}: its config, training into it."""
    import shutil

    import yaml

    copy = paths["tmp"] / "run_copy"
    shutil.copytree(paths["run"], copy)
    tree = yaml.safe_load((copy / "config.yaml").read_text())
    tree["train"]["out_dir"] = str(copy)
    (copy / "config.yaml").write_text(yaml.safe_dump(tree))
    paths["run_copy"], paths["run_copy_cfg"] = copy, copy / "config.yaml"


def _edit_manifest(paths: dict[str, Path], edit: Callable[[dict], object]) -> None:
    _copy_run(paths)
    manifest = next((paths["run_copy"] / "checkpoints").glob("step-*/manifest.json"))
    tree = json.loads(manifest.read_text())
    edit(tree)
    manifest.write_text(json.dumps(tree))


def _hf(**hf: object) -> str:
    """The override `model={kind: hf, hf: ...}`, its braces escaped for the argv placeholders
    ({root} and {tmp} stay placeholders)."""
    value = json.dumps({"kind": "hf", "hf": hf}).replace("{", "{{").replace("}", "}}")
    for name in ("root", "tmp"):
        value = value.replace("{{" + name + "}}", "{" + name + "}")
    return "model=" + value


HF_LLAMA = _hf(config={"model_type": "llama", "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2})  # fmt: skip


def _hf_gpt2(positions: int) -> str:
    return _hf(config={"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2,
                       "n_positions": positions})  # fmt: skip


def _hf_folder(folder: Path) -> None:
    """A transformers model folder (a config.json) whose tokenizer is not the data's."""
    from transformers import LlamaConfig

    from lengthwise.data.tokenizer import char_tokenizer

    LlamaConfig(
        vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(folder)
    char_tokenizer("abc").save(folder / "tokenizer.json")


TRAIN = ("{tmp}/run_new",)  # the config's train.out_dir: a refused train writes nothing
EVAL = ["eval", "{run}", "--suite", "lengths", "--out", "{tmp}/ev"]
CUDA = torch.cuda.is_available()

CASES = {
    # configs and overrides
    "config not utf-8": Case(["prepare", "{bad_utf8}"], "not UTF-8 text (byte 0xff at offset"),
    "override not yaml": Case(
        ["train", "{cfg}", "optim.betas=[0.9,"], "override optim.betas=[0.9,: not valid YAML", TRAIN
    ),
    "betas above 1": Case(
        ["train", "{cfg}", "optim.betas=[2,3]"],
        "optim.betas: each beta must be in [0, 1), got [2.0, 3.0]",
        TRAIN,
    ),
    "beta2 of 1": Case(
        ["train", "{cfg}", "optim.betas=[0.9,1]"],
        "optim.betas: each beta must be in [0, 1), got [0.9, 1.0]",
    ),
    "lr inf": Case(
        ["train", "{cfg}", "optim.lr=.inf"], "optim.lr: Input should be a finite", TRAIN
    ),
    "eps nan": Case(["train", "{cfg}", "optim.eps=.nan"], "optim.eps: Input should be a finite"),
    "weight decay inf": Case(
        ["train", "{cfg}", "optim.weight_decay=.inf"], "optim.weight_decay: Input should be a fin"
    ),
    "rope base inf": Case(
        ["train", "{cfg}", "model.rope_base=.inf"], "model.rope_base: Input should be a finite"
    ),
    "learned table < max_len": Case(
        ["train", "{cfg}", "model.position=learned", "model.max_position=32"],
        "model.max_position (32) must be >= batching.max_len (64) for learned positions",
        TRAIN,
    ),
    "sinusoidal table < max_len": Case(
        ["train", "{cfg}", "model.position=sinusoidal", "model.max_position=63"],
        "model.max_position (63) must be >= batching.max_len (64) for sinusoidal positions",
    ),
    "learned table < random positions": Case(
        ["train", "{cfg}", "model.position=learned", "model.random_positions_max=100"],
        "random_positions_max=100 need max_position >= 100, got 64",
    ),
    "vocab smaller than the tokenizer": Case(
        ["train", "{cfg}", "model.vocab_size=10"],
        "model.vocab_size: 10 is smaller than the tokenizer's",
        TRAIN,
    ),
    "best metric unknown": Case(  # checked before any work, not at the first eval
        ["train", "{cfg}", "train.best_metric=val/acc", "eval.sets=[{{name: val, split: val}}]"],
        "train.best_metric: 'val/acc' is not an eval metric (the eval sets log val/loss, val/ppl)",
        TRAIN,
    ),
    "early-stopping metric unknown": Case(
        ["train", "{cfg}", "monitor.early_stopping.enabled=true"]
        + ["monitor.early_stopping.metric=ood/loss"],
        "monitor.early_stopping.metric: 'ood/loss' is not an eval metric (the eval sets log "
        "none: eval.sets is empty)",
        TRAIN,
    ),
    "alert level out of range": Case(  # a one-sided test's level: 0 < level < 0.5
        ["train", "{cfg}", "monitor.alert_level=0.5"],
        "monitor.alert_level: Input should be less than 0.5",
        TRAIN,
    ),
    "the replaced tensorboard key": Case(
        ["train", "{cfg}", "train.tensorboard=false"],
        "c.yaml: train.tensorboard: replaced by train.loggers ([] turns TensorBoard off)",
        TRAIN,
    ),
    "a logger twice": Case(
        ["train", "{cfg}", "train.loggers=[tensorboard, tensorboard]"],
        "train.loggers: each logger at most once, got ['tensorboard', 'tensorboard']",
        TRAIN,
    ),
    "alert hook with no program": Case(  # was a ValueError traceback at the trainer's start
        ["train", "{cfg}", "monitor.on_alert=['']"],
        "monitor.on_alert: expected a program and its arguments, got ['']",
        TRAIN,
    ),
    # model.kind: hf (a transformers causal LM)
    "hf unknown model type": Case(
        ["train", "{cfg}", _hf(config={"model_type": "lama"})],
        "model.hf.config.model_type: unknown model type 'lama' (did you mean llama",
        TRAIN,
    ),
    "hf config key the architecture lacks": Case(
        ["train", "{cfg}", _hf(config={"model_type": "llama", "hiden_size": 8})],
        "model.hf.config.hiden_size: llama configs have no such key (did you mean hidden_size?)",
        TRAIN,
    ),
    "hf path not a model folder": Case(
        ["train", "{cfg}", _hf(path="{root}")],
        "model.hf.path: {root} is not a model folder (no config.json)",
        TRAIN,
    ),
    "hf hub name": Case(
        ["train", "{cfg}", _hf(path="Qwen/Qwen2.5-0.5B")],
        "model.hf.path: Qwen/Qwen2.5-0.5B is not a local folder; lengthwise never downloads",
        TRAIN,
    ),
    "hf tokenizer mismatch": Case(
        ["train", "{cfg}", _hf(path="{tmp}/llama")],
        "data tokenizer: token 'a' is id",
        TRAIN,
        setup=lambda paths: _hf_folder(paths["tmp"] / "llama"),
    ),
    "hf dropout the architecture lacks": Case(
        ["train", "{cfg}", HF_LLAMA, "model.resid_dropout=0.1"],
        "model.resid_dropout: llama has no such dropout",
        TRAIN,
    ),
    "hf gpt setting": Case(
        ["train", "{cfg}", HF_LLAMA, "model.n_layer=3"],
        "model: n_layer: a lengthwise GPT setting; with kind 'hf' the architecture is",
        TRAIN,
    ),
    "hf position table < max_len": Case(
        ["train", "{cfg}", _hf_gpt2(32)],
        "batching.max_len: 64 tokens, but the model's learned position table has 32 rows",
        TRAIN,
    ),
    "hf eval set past the position table": Case(  # copy items of 60-70 digits: 2 x 60 > 64
        [
            "train",
            "{cfg}",
            _hf_gpt2(64),
            "eval.sets=[{{name: c, kind: task, task: copy, lengths: [60, 70], n: 2}}]",
        ],
        "positions, but the model's learned position table has 64 rows; shorten the eval sets",
        TRAIN,
    ),  # fmt: skip
    "resume with another model": Case(
        ["train", "{run_copy_cfg}", "--resume", "model.d_model=32"],
        "--resume with a different model.d_model (16 -> 32)",
        setup=lambda paths: _copy_run(paths),
    ),
    "export manifest without sha256": Case(
        ["export", "{run_copy}", "--out", "{tmp}/e"],
        "not a lengthwise checkpoint manifest (sha256 must map",
        ("{tmp}/e",),
        setup=lambda paths: _edit_manifest(paths, lambda m: m.pop("sha256")),
    ),
    "export over a user's folder": Case(
        ["export", "{run}", "--out", "{tmp}/mine"],
        "{tmp}/mine: a non-empty folder that is not an earlier lengthwise export",
        kept=("{tmp}/mine/notes.txt",),
        setup=_notes_in("{tmp}/mine"),
    ),
    "data-stats n-layer 0": Case(
        ["data-stats", "{cfg}", "--n-layer", "0"], "--n-layer: must be >= 1"
    ),
    "report of no run": Case(["report", "{tmp}", "-o", "{tmp}/r.html"], "not a run directory"),
    # train flags
    "stop at step -1": Case(
        ["train", "{cfg}", "--stop-at-step", "-1"], "--stop-at-step: must be >= 1, got -1", TRAIN
    ),
    "stop at step 0": Case(["train", "{cfg}", "--stop-at-step", "0"], "must be >= 1, got 0"),
    # eval
    "eval multiples <= 0": Case(
        [*EVAL, "--multiples", "0", "-1"], "--multiples: must be a finite number > 0", ("{tmp}/ev",)
    ),
    "eval batch size 0": Case([*EVAL, "--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
    "eval n 0": Case([*EVAL, "--n", "0"], "--n: must be >= 1, got 0", ("{tmp}/ev",)),
    "eval cuda:99": Case(
        [*EVAL, "--device", "cuda:99"], "--device cuda:99: this machine has", ("{tmp}/ev",)
    ),
    "eval bad device": Case([*EVAL, "--device", "gpu0"], "--device gpu0: not a device"),
    "eval past max_position": Case(  # the run: learned positions, max_position 64 = max_len
        EVAL,
        "per-position loss to 4x 64 needs 256 positions, but run has a position table of "
        "max_position 64",
        ("{tmp}/ev",),
    ),
    "eval not a model": Case(  # fails after --out was created: the empty folder goes again
        ["eval", "{tmp}", "--config", "{cfg}", "--suite", "lengths", "--out", "{tmp}/ev"],
        "not a run, an export folder or a Hugging Face model folder",
        ("{tmp}/ev",),
    ),
    "eval shots negative": Case([*EVAL, "--shots", "-1"], "--shots: must be >= 0, got -1"),
    "eval shots without a task split": Case(  # the run trained on text
        [*EVAL, "--shots", "2"],
        "--shots/--format/--chat-template: the config's train split is not a task source",
        ("{tmp}/ev",),
    ),
    "eval out is a file": Case([*EVAL[:-1], "{file}"], "--out {file}: is a file, not a folder"),
    # demo and experiment outputs (nothing of the user's is deleted)
    "demo out is a file": Case(["demo", "--quick", "--out", "{file}"], "is a file, not a folder"),
    "demo out under a file": Case(
        ["demo", "--quick", "--out", "{file}/demo"], "lies under {file}, which is a file"
    ),
    "demo run name taken": Case(
        ["demo", "--quick", "--out", "{tmp}/demo"],
        "text_decomposition: a non-empty folder that is not a lengthwise run; move it or choose "
        "another --out",
        kept=("{tmp}/demo/text_decomposition/notes.txt",),
        setup=_notes_in("{tmp}/demo/text_decomposition"),
    ),
    "experiment out is a file": Case(
        ["experiment", "E5", "--quick", "--out", "{file}"], "--out {file}: is a file, not a folder"
    ),
    "experiment run name taken": Case(
        ["experiment", "E5", "--quick", "--quiet", "--out", "{tmp}/exp"],
        "a non-empty folder that is not a lengthwise run",
        ("{tmp}/exp/E5/base_config.yaml",),
        kept=("{tmp}/exp/E5/runs/{e5_point}/notes.txt",),
        setup=_notes_in("{tmp}/exp/E5/runs/{e5_point}"),
    ),
    "experiment spec budget abc": Case(
        ["experiment", "E5", "--spec", "{spec_abc}", "--out", "{tmp}/exp"],
        "budget_minutes: expected a number > 0, got 'abc'",
        ("{tmp}/exp",),
    ),
    "experiment spec threads -1": Case(
        ["experiment", "E5", "--spec", "{spec_threads}", "--out", "{tmp}/exp"],
        "threads: expected an integer >= 0, got -1",
    ),
    "E6 format a task lacks": Case(
        ["experiment", "E6", "--spec", "{spec_e6_format}", "--out", "{tmp}/exp"],
        "settings.icl: task sort has no format 'scratchpad'",
        ("{tmp}/exp/E6/runs", "{tmp}/exp/E6/train_docs.jsonl"),
    ),
    "E6 pretrained not found": Case(
        ["experiment", "E6", "--spec", "{spec_e6_model}", "--out", "{tmp}/exp"],
        "settings.pretrained: {root}/nope is neither a known model (smollm2-135m) nor a folder",
        ("{tmp}/exp/E6/runs", "{tmp}/exp/E6/train_docs.jsonl"),
    ),
}
if not CUDA:
    CASES["eval cuda without a GPU"] = Case(
        [*EVAL, "--device", "cuda"], "--device cuda: this machine has 0 CUDA", ("{tmp}/ev",)
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """A tiny char-level corpus, prepared; a config on it (train.out_dir relative: each test
    runs in its own folder); a run trained for two steps with learned positions
    (max_position = max_len = 64)."""
    root = tmp_path_factory.mktemp("bad_input")
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.choice([4, 16, 40]))) for _ in range(60)]
    for split, part in (("train", docs[:50]), ("val", docs[50:])):
        (root / f"{split}.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in part))
    cfg = root / "c.yaml"
    cfg.write_text(
        f"""
data:
  out_dir: {root / "data"}
  tokenizer: {{kind: char}}
  splits:
    train: {{kind: jsonl, path: {root / "train.jsonl"}}}
    val: {{kind: jsonl, path: {root / "val.jsonl"}}}
batching: {{strategy: concat_chunk, tokens_per_step: 128, max_len: 64}}
model: {{n_layer: 1, n_head: 2, d_model: 16, max_position: 64}}
train: {{out_dir: run_new, total_tokens: 256, progress: false, loggers: []}}
"""
    )
    assert main(["prepare", str(cfg), "--quiet"]) == 0
    run = root / "run"
    learned = ["model.position=learned", "model.max_position=64", f"train.out_dir={run}"]
    assert main(["train", str(cfg), *learned, "--quiet"]) == 0
    (root / "bad.yaml").write_bytes(b"data:\n  out_dir: x\xff\xfe\n")
    (root / "notes.txt").write_text(NOTES)
    spec = "experiment: E5\nbase: {cfg}\ngrid: [{{name: a}}]\n"
    (root / "abc.yaml").write_text(spec.format(cfg=cfg) + "budget_minutes: abc\n")
    (root / "threads.yaml").write_text(spec.format(cfg=cfg) + "threads: -1\n")
    e6 = "experiment: E6\nbase: {cfg}\ngrid: [{{name: a}}]\nsettings: {settings}\n"
    icl = "{tasks: [min, sort], icl: [{shots: 1, format: scratchpad}]}"
    (root / "e6_format.yaml").write_text(e6.format(cfg=cfg, settings=icl))
    model = f"{{tasks: [min], pretrained: '{root / 'nope'}'}}"
    (root / "e6_model.yaml").write_text(e6.format(cfg=cfg, settings=model))
    return {
        "root": root,
        "cfg": cfg,
        "run": run,
        "bad_utf8": root / "bad.yaml",
        "file": root / "notes.txt",
        "spec_abc": root / "abc.yaml",
        "spec_threads": root / "threads.yaml",
        "spec_e6_format": root / "e6_format.yaml",
        "spec_e6_model": root / "e6_model.yaml",
    }


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2(name, prepared, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    paths = {**prepared, "tmp": tmp_path, "e5_point": _e5_quick_point()}
    monkeypatch.chdir(tmp_path)  # the config's relative train.out_dir: {tmp}/run_new
    if case.setup:
        case.setup(paths)
    argv = [a.format(**paths) for a in case.argv]
    capsys.readouterr()

    rc = main(argv)

    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("lengthwise: error: "), err
    assert "Traceback" not in err
    assert case.message.format(**paths) in lines[0], lines[0]
    for p in case.absent:
        assert not Path(p.format(**paths)).exists(), p
    for p in case.kept:
        assert Path(p.format(**paths)).read_text() == NOTES, p
    assert prepared["file"].read_text() == NOTES


def test_an_override_yaml_cannot_parse_is_the_plain_string(prepared):
    """`**/*.md` is no YAML (a leading `*` is an alias) and has one reading: the string."""
    cfg = load_config(prepared["cfg"], ["data.splits.train.glob=**/*.md", "train.seed=3"])
    assert cfg.data.splits["train"].glob == "**/*.md"
    assert cfg.train.seed == 3  # other values still YAML: an int


def test_overrides_may_follow_options():
    args = build_parser().parse_args(["train", "c.yaml", "a.b=1", "--resume", "c.d=2", "--quiet"])
    assert args.config == "c.yaml" and args.overrides == ["a.b=1", "c.d=2"]
    assert args.resume and args.quiet
    args = build_parser().parse_args(["train", "c.yaml", "--stop-at-step", "3", "x=1"])
    assert args.stop_at_step == 3 and args.overrides == ["x=1"]
