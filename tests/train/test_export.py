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
