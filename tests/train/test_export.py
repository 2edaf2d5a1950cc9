"""`lengthwise export`: the lengthwise folder round-trips, and rope/nope SwiGLU models become
Hugging Face LlamaForCausalLM folders with the same logits."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lengthwise.cli import main
from lengthwise.config import ModelConfig
from lengthwise.data.tokenizer import load_tokenizer
from lengthwise.eval.exported import llama_incompatibility, load_exported, write_export
from lengthwise.model.gpt import GPT
from lengthwise.train.trainer import train


def _perturbed(cfg: ModelConfig) -> GPT:
    """A model whose norms and biases are not at their init values, so a mis-mapped tensor
    shows up in the logits."""
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name else 0.0))
    return model.eval()


def test_export_cli_round_trip(make_cfg, tmp_path, capsys):
    cfg = make_cfg("train.total_tokens=2560", "model.mlp=gelu")
    train(cfg, quiet=True)
    run = Path(cfg.train.out_dir)
    out = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert "no Hugging Face folder: mlp 'gelu'" in capsys.readouterr().out
    assert not (out / "hf").exists()
    meta = json.loads((out / "config.json").read_text())
    assert meta["format"] == "lengthwise" and meta["source"]["step"] == 5
    assert meta["model"]["vocab_size"] == load_tokenizer(run / "tokenizer.json").vocab_size
    # the last checkpoint is the final model, which the trainer also exported
    a, b = load_file(out / "model.safetensors"), load_file(run / "export" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model, tok = load_exported(out)
    ids = torch.tensor([tok.encode("the quick brown fox")])
    reference = GPT(model.cfg)
    reference.load_state_dict(model.state_dict())
    assert not model.training
    torch.testing.assert_close(model(ids), reference.eval()(ids), rtol=0, atol=0)


def test_export_errors_are_one_line(make_cfg, tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    cfg = make_cfg("train.total_tokens=512")
    train(cfg, quiet=True)
    assert main(["export", str(cfg.train.out_dir), "--checkpoint", "best"]) == 2
    assert "no best checkpoint" in capsys.readouterr().err
    with pytest.raises(Exception, match="not an exported model"):
        load_exported(tmp_path)


LLAMA_CASES = {
    "rope-tied": dict(position="rope", tie_embeddings=True, bias=False),
    "rope100k-untied-bias": dict(position="rope", rope_base=1e5, tie_embeddings=False, bias=True),
    "nope-tied": dict(position="nope", tie_embeddings=True, bias=False),
}


@pytest.mark.parametrize("case", LLAMA_CASES, ids=list(LLAMA_CASES))
def test_llama_export_gives_the_same_logits(tiny_data, tmp_path, case):
    transformers = pytest.importorskip("transformers")
    tok_path = Path(tiny_data["out_dir"]) / "tokenizer.json"
    vocab = load_tokenizer(tok_path).vocab_size
    cfg = ModelConfig(
        vocab_size=vocab,
        n_layer=2,
        n_head=4,
        d_model=64,
        mlp="swiglu",
        init_std=0.1,
        **LLAMA_CASES[case],
    )
    model = _perturbed(cfg)
    out = tmp_path / "exp"
    assert write_export(model, tok_path, out, source={}) is None
    hf = transformers.LlamaForCausalLM.from_pretrained(out / "hf", dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, 300), generator=g)  # past max_len 64: positions matter
    with torch.no_grad():
        ours = model(ids)
        theirs = hf(input_ids=ids).logits
    assert ours.abs().max() > 1.0  # not a degenerate comparison
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out / "hf")
    text = "seven bright stars #12"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == load_tokenizer(tok_path).encode(
        text
    )


def test_llama_export_refuses_what_llama_cannot_express():
    assert "no Llama equivalent" in llama_incompatibility(
        ModelConfig(vocab_size=10, mlp="swiglu", position="alibi")
    )
    assert "SwiGLU" in llama_incompatibility(ModelConfig(vocab_size=10, mlp="gelu"))
    assert llama_incompatibility(ModelConfig(vocab_size=10, mlp="swiglu")) is None


def test_golden_gpt_as_llama_trains_one_step_like_the_gpt(make_cfg, tmp_path, capfd):
    """A lengthwise GPT (rope, SwiGLU, untied head with biases) exported as Llama, then one
    step of `lengthwise train` with model.kind: hf on the exported folder: the same loss and
    gradients as our GPT's step on the same batch (1e-5). Packed rows (best_fit): the
    'lengthwise' attention keeps the documents apart as our GPT does."""
    pytest.importorskip("transformers")
    import yaml

    from lengthwise.eval.exported import llama_state_dict
    from lengthwise.rundir import read_metrics
    from lengthwise.train.trainer import Trainer

    common = ("batching.strategy=best_fit", "batching.curriculum.name=none")
    gpt_cfg = make_cfg(*common, "model.mlp=swiglu", "model.tie_embeddings=false",
                       "model.bias=true", "model.init_std=0.1",
                       f"train.out_dir={tmp_path / 'gpt'}")  # fmt: skip
    ours = Trainer(gpt_cfg, quiet=True)
    gpt = ours.model_plain
    with torch.no_grad():  # norms and biases off their init values: a mis-mapping shows
        torch.manual_seed(1)
        for name, p in gpt.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name else 0.0))
    tok_path = gpt_cfg.data.out_dir / "tokenizer.json"
    assert write_export(gpt, tok_path, tmp_path / "exp", source={}) is None
    folder = tmp_path / "exp" / "hf"

    def hf_cfg(out: str):
        model = {"kind": "hf", "hf": {"path": str(folder)}}
        return make_cfg(*common, "model=" + json.dumps(model), f"train.out_dir={tmp_path / out}")

    theirs = Trainer(hf_cfg("hf"), quiet=True)
    batch = next(ours.loader)
    assert batch.doc_ids is not None and torch.equal(batch.input_ids, next(theirs.loader).input_ids)
    loss_ours, n, _, _ = ours.backward(batch)
    loss_theirs, _, _, _ = theirs.backward(batch)
    assert float(loss_theirs) == pytest.approx(float(loss_ours), rel=1e-5)
    grads = GPT(gpt.cfg)  # our gradients in a GPT's parameters, renamed as Llama's
    grads.load_state_dict({k: p.grad for k, p in gpt.named_parameters()}, strict=False)
    want = llama_state_dict(grads)
    got = {k.removeprefix("hf."): p.grad for k, p in theirs.model_plain.named_parameters()}
    assert got.keys() == want.keys()
    for k in want:
        scale = float(want[k].abs().max())  # q/k gradients are ~1e-4: 1e-5 of each tensor
        assert scale > 0, k
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5 * scale, msg=k)
    # `lengthwise train` itself logs that loss for its first step
    cfg_file = tmp_path / "hf.yaml"
    cfg_file.write_text(yaml.safe_dump(hf_cfg("run").model_dump(mode="json")))
    capfd.readouterr()
    assert main(["train", str(cfg_file), "--stop-at-step", "1", "--quiet"]) == 0
    assert "Loading weights" not in capfd.readouterr().err  # --quiet: no progress bar
    logged = read_metrics(tmp_path / "run", "train")[0]["loss"]
    assert logged == pytest.approx(float(loss_ours) / n, rel=1e-5)
