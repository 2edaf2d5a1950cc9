"""`model.kind: hf` through the trainer, unchanged: the evaluator with ID/OOD text and task
sets, alerts, early stopping with the best checkpoint restored, token-normalized loss,
micro-batches, L1/L2, bitwise resume, the export (a save_pretrained folder that
AutoModelForCausalLM loads with the same logits) and `lengthwise eval --suite lengths`."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lengthwise.cli import main
from lengthwise.data.tokenizer import load_tokenizer
from lengthwise.rundir import read_metrics
from lengthwise.train import checkpoint
from lengthwise.train.trainer import Trainer, train

transformers = pytest.importorskip("transformers", reason="model.kind: hf needs transformers")
pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py

LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1}  # fmt: skip
GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}


def hf(config: dict, **fields) -> str:
    """The override that replaces the tiny config's lengthwise GPT by a transformers model."""
    return "model=" + json.dumps({"kind": "hf", "hf": {"config": config}, **fields})


SETS = [
    {"name": "val", "split": "val", "tag": "ood", "tokens": 2048},
    {"name": "train", "split": "train", "tag": "id", "tokens": 2048},
    {"name": "copy", "kind": "task", "task": "copy", "lengths": [2, 4], "n": 8, "tag": "ood"},
]


@pytest.fixture(scope="module")
def diverging(make_cfg_in, tmp_path_factory):
    """A tiny Llama at lr 1.0 (it diverges at once: val/loss 4.6, 8.0, 16.4 at steps 1-3),
    evaluated every step on ID/OOD text and an OOD task set; alerts at 0.1%, early stopping
    (patience 2) with the best checkpoint restored. The trainer is kept: its model is the
    trained HFModel."""
    run = tmp_path_factory.mktemp("hf_train") / "run"
    es = {"enabled": True, "metric": "val/loss", "patience": 2}
    cfg = make_cfg_in(
        run,
        hf(LLAMA),
        "eval.sets=" + json.dumps(SETS),
        "eval.every_tokens=512",
        "batching.strategy=best_fit",
        "batching.curriculum.name=none",
        "optim.lr=1.0",
        "train.total_tokens=4096",
        "monitor.alert_drop=0.001",
        "monitor.early_stopping=" + json.dumps(es),
        "monitor.restore_best=true",
    )
    trainer = Trainer(cfg, quiet=True)
    summary = trainer.fit()
    return trainer, summary, run


def test_evaluator_alerts_and_early_stopping(diverging):
    trainer, summary, run = diverging
    records = read_metrics(run)
    evals = [r for r in records if r["event"] == "eval"]
    assert {"val/loss", "train/loss", "copy/acc", "copy/parse_rate", "ood_mean/loss"} <= set(
        evals[0]
    )
    losses = [e["val/loss"] for e in evals]
    assert losses[1] > 1.2 * losses[0] and losses[2] > losses[1]  # the divergence is real
    # alerts: exactly the evals whose val/loss is > 0.1% above its best so far
    best, expected = float("inf"), []
    for e in evals:
        if e["val/loss"] > best * 1.001:
            expected.append(e["step"])
        best = min(best, e["val/loss"])
    alerts = [r for r in records if r["event"] == "alert" and r["metric"] == "val/loss"]
    assert [a["step"] for a in alerts] == expected == [2, 3]
    # early stopping: two evals without improvement, then the best (step 1) restored
    assert summary["stop_reason"] == "early_stopping" and summary["steps"] == 3
    assert summary["restored_best_step"] == 1 and summary["best"] == losses[0]
    exported = load_file(run / "export" / "model.safetensors")
    kept = checkpoint.load_weights(run / "checkpoints" / "best", _blank(trainer))
    assert kept["step"] == 1
    held = {k.removeprefix("hf."): v for k, v in trainer.model_plain.state_dict().items()}
    assert exported.keys() <= held.keys()
    assert all(torch.equal(exported[k], held[k]) for k in exported)


def _blank(trainer: Trainer) -> torch.nn.Module:
    from lengthwise.model.build import make_model

    return make_model(trainer.cfg.model, pretrained=False)


def test_export_is_a_folder_automodel_loads_with_the_same_logits(diverging, tmp_path):
    trainer, _, run = diverging
    ids = torch.tensor([load_tokenizer(run / "tokenizer.json").encode("the quick brown fox")])
    model = trainer.model_plain.eval()
    with torch.no_grad():
        want = model(ids)
    # the trainer's export, and `lengthwise export` of the best checkpoint: the same model
    assert main(["export", str(run), "--checkpoint", "best", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "lengthwise.json").read_text())["source"]["step"] == 1
    for folder in (run / "export", tmp_path / "b"):
        auto = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
        assert type(auto).__name__ == "LlamaForCausalLM"
        with torch.no_grad():
            torch.testing.assert_close(auto(input_ids=ids).logits, want, rtol=1e-6, atol=1e-6)
        tok = transformers.AutoTokenizer.from_pretrained(folder)
        assert tok("the quick", add_special_tokens=False)["input_ids"] == ids[0, :9].tolist()
        marker = json.loads((folder / "lengthwise.json").read_text())
        assert marker["format"] == "lengthwise-hf"
        assert auto.config.eos_token_id == load_tokenizer(run / "tokenizer.json").eos_id


def test_eval_lengths_suite_on_an_hf_run(diverging, tmp_path):
    """`lengthwise eval RUN --suite lengths` reads the run's export (the restored best model:
    its loss at positions 0-64 is about the logged val/loss of step 1, not the 16 of step 3)."""
    _, summary, run = diverging
    out = tmp_path / "ev"
    argv = ["eval", str(run), "--suite", "lengths", "--text-split", "val", "--multiples", "1", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    text = json.loads((out / "lengths.json").read_text())["text"]
    assert len(text["per_position_loss"]) == 128
    assert text["band_loss"]["0-64"] == pytest.approx(summary["best"], rel=0.05)


def test_loss_normalization_micro_batches_and_l2(make_cfg, tmp_path):
    """The step's loss is the mean token loss; four micro-batches give the one-batch gradient;
    optim.l2 adds l2 * sum w^2 over the decayed matrices (the param groups of the HF model)."""
    whole = Trainer(make_cfg(hf(GPT2), "optim.l2=0.01"))
    split = Trainer(make_cfg(hf(GPT2), "optim.l2=0.01", "train.micro_batch_tokens=128",
                             f"train.out_dir={tmp_path / 'split'}"))  # fmt: skip
    batch = next(whole.loader)
    assert torch.equal(batch.input_ids, next(split.loader).input_ids)
    with torch.no_grad():
        logits = whole.model_plain(batch.input_ids, batch.position_ids, batch.doc_ids)
        mean = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), batch.targets.flatten(), ignore_index=-100
        )
    grads = []
    for t in (whole, split):
        t.optimizer.zero_grad(set_to_none=True)
        loss_sum, n, micro, reg = t.backward(batch)
        assert float(loss_sum) / n == pytest.approx(mean.item(), rel=1e-6)
        decay = [p for g in t.groups if g["name"] == "decay" for p in g["params"]]
        l2 = 0.01 * sum(float(p.detach().pow(2).sum()) for p in decay)
        assert float(reg.detach()) == pytest.approx(l2)
        grads.append({k: p.grad.clone() for k, p in t.model_plain.named_parameters()})
        assert micro == (1 if t is whole else 4)
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("arch", ["llama-best_fit", "gpt2-decomposition"], ids=["llama", "gpt2"])
def test_resume_is_bitwise_exact(make_cfg, tmp_path, arch):
    """Dropout on (its RNG state is in the checkpoint): paused at step 3 and resumed, the run
    ends with the uninterrupted run's weights and losses, bit for bit."""
    name, strategy = arch.split("-")
    model = hf(LLAMA, attn_dropout=0.1) if name == "llama" else hf(GPT2, resid_dropout=0.1)
    common = (model, f"batching.strategy={strategy}", "train.total_tokens=3072")
    if strategy == "best_fit":
        common += ("batching.curriculum.name=none",)
    full = train(make_cfg(*common, f"train.out_dir={tmp_path / 'full'}"), quiet=True)
    half = make_cfg(*common, f"train.out_dir={tmp_path / 'half'}")
    assert train(half, quiet=True, stop_at_step=3)["steps"] == 3
    assert train(half, resume=True, quiet=True)["steps"] == full["steps"] == 6
    a = load_file(tmp_path / "full" / "export" / "model.safetensors")
    b = load_file(tmp_path / "half" / "export" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[r["loss"] for r in read_metrics(tmp_path / n, "train")] for n in ("full", "half")]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    exported = json.loads((tmp_path / "half" / "export" / "config.json").read_text())
    assert exported["model_type"] == name


def test_report_describes_the_transformers_model(diverging, tmp_path):
    """The report's model and position rows come from the transformers config, not from the
    GPT fields' defaults in RUN/config.yaml (it said "4 layers × d_model 256" and "rope")."""
    from lengthwise.report import build_report

    _, _, run = diverging
    page = build_report([run], tmp_path / "r.html").read_text()
    assert "llama: 2 layers × width 32, 2 heads" in page and "llama&#x27;s own" in page


def test_a_pretrained_folder_grows_by_lengthwise_special_tokens(tiny_data, make_cfg, tmp_path):
    """A folder whose tokenizer lacks <|eos|>, <|pad|>, <|bos|> (a real pretrained model's):
    data prepared with that tokenizer.json gets them appended, the model's embedding grows by
    those rows, its own rows unchanged, and it trains."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    from lengthwise.config import Config
    from lengthwise.data.store import prepare

    chars = sorted(set("".join(chr(c) for c in range(32, 127))))
    vocab = {c: i for i, c in enumerate(["<unk>", *chars])}
    theirs = HFTokenizer(models.WordLevel(vocab, "<unk>"))
    theirs.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    theirs.decoder = decoders.Fuse()
    folder = tmp_path / "pretrained"
    config = transformers.LlamaConfig(vocab_size=len(chars) + 1, **{
        k: v for k, v in LLAMA.items() if k != "model_type"})  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    theirs.save(str(folder / "tokenizer.json"))
    data = {**tiny_data, "out_dir": str(tmp_path / "data")}
    data["tokenizer"] = {"kind": "file", "path": str(folder / "tokenizer.json")}
    prepare(Config.model_validate({"data": data}).data, progress=False)
    model = {"kind": "hf", "hf": {"path": str(folder)}}
    cfg = make_cfg(f"data={json.dumps(data)}", f"model={json.dumps(model)}",
                   "train.total_tokens=1024")  # fmt: skip
    trainer = Trainer(cfg, quiet=True)
    rows = trainer.model_plain.hf.get_input_embeddings().weight
    before = load_file(folder / "model.safetensors")["model.embed_tokens.weight"]
    assert rows.shape[0] == before.shape[0] + 3  # <|eos|>, <|pad|>, <|bos|>
    assert torch.equal(rows[: before.shape[0]], before)
    assert trainer.fit()["steps"] == 2
    losses = [r["loss"] for r in read_metrics(cfg.train.out_dir, "train")]
    assert len(losses) == 2 and all(0 < x < 10 for x in losses)


def test_task_position_ids_past_a_learned_table_are_refused(tmp_path):
    """A coupled addition store carries its own position ids; with the training offset they
    must fit GPT-2's learned table, or the run would crash at its first long step."""
    from lengthwise.config import Config
    from lengthwise.data.store import TokenStore, prepare
    from lengthwise.errors import UserError
    from lengthwise.train.trainer import build_model

    src = {"kind": "task", "task": "addition", "lengths": [1, 3], "n": 40, "format": "coupled"}
    tree = {
        "data": {"out_dir": str(tmp_path / "d"), "tokenizer": {"kind": "char"},
                 "splits": {"train": src}},
        "batching": {"strategy": "best_fit", "tokens_per_step": 256, "max_len": 32,
                     "min_bucket": 8},
        "model": {"kind": "hf", "hf": {"config": {**GPT2, "n_positions": 32}}},
    }  # fmt: skip
    cfg = Config.model_validate(tree)
    prepare(cfg.data, progress=False)
    store = TokenStore(cfg.data.out_dir / "train")
    tokenizer = load_tokenizer(cfg.data.out_dir / "tokenizer.json")
    top = int(store.positions.max()) + 1
    assert top <= 32
    build_model(cfg, store, tokenizer)  # fits without an offset
    tree["batching"]["position_offset_max"] = 33 - top
    with pytest.raises(UserError, match="reach 33 with the offset, but .* has 32 rows"):
        build_model(Config.model_validate(tree), store, tokenizer)
