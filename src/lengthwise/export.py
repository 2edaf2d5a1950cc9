"""Exported models: one folder that evaluation (and other tools) can load without the trainer.

    lengthwise export RUN_DIR [--checkpoint last|best|PATH] [--out DIR]

EXPORT/model.safetensors   full weights (tied matrices stored once)
EXPORT/config.json         {"format": "lengthwise", "model": ModelConfig, "source": ...}
EXPORT/tokenizer.json      the run's tokenizer
EXPORT/hf/                 LlamaForCausalLM + tokenizer, for rope/nope SwiGLU models when
                           `transformers` is installed (pip install lengthwise[hf])

Llama has the same block as ours (pre-norm RMSNorm, SwiGLU, rotate-half RoPE), so the export is a
renaming of tensors plus splitting our fused qkv and gate|up matrices. NoPE is written as RoPE
with linear scaling by 1e12: at 10^6 positions every rotation angle is below 1e-6 rad, so the
rotation is the identity to float32 precision (the test checks the logits).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model
from torch import Tensor

from lengthwise import __version__
from lengthwise.config import ModelConfig, load_config
from lengthwise.data.tokenizer import BOS, EOS, PAD, Tokenizer, load_tokenizer
from lengthwise.errors import UserError
from lengthwise.eval.exported import FORMAT, load_exported  # noqa: F401 (re-exported)
from lengthwise.io import replace_dir
from lengthwise.model.gpt import GPT, ff_width
from lengthwise.train import checkpoint

NOPE_ROPE_FACTOR = 1e12


def write_export(
    model: GPT, tokenizer_json: Path, out: Path, source: dict[str, Any], hf: bool = True
) -> str | None:
    """Write the export folder atomically. Returns why no hf/ folder was written (None if it
    was, or if `hf` is False)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        save_model(model, str(tmp / "model.safetensors"))
        meta = {
            "format": FORMAT,
            "lengthwise_version": __version__,
            "model": model.cfg.model_dump(mode="json"),
            "source": source,
        }
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
        shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
        skipped = None
        if hf:
            skipped = llama_incompatibility(model.cfg)
            if skipped is None:
                try:
                    import transformers  # noqa: F401
                except ImportError:
                    skipped = "transformers is not installed (pip install 'lengthwise[hf]')"
            if skipped is None:
                write_llama(model, load_tokenizer(tokenizer_json), tmp / "hf")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return skipped


def checkpoint_path(run_dir: Path, which: str) -> Path:
    """`last`, `best`, or a checkpoint folder."""
    root = run_dir / "checkpoints"
    if which == "last":
        found = checkpoint.latest(root)
        if found is None:
            raise UserError(f"{run_dir}: no checkpoint to export (train first)")
        return found
    if which == "best":
        if not (root / "best").is_dir():
            raise UserError(f"{run_dir}: no best checkpoint (set train.best_metric and evaluate)")
        return root / "best"
    return Path(which)


def load_checkpoint_weights(path: Path, model: GPT) -> dict[str, Any]:
    """Fill `model` with a checkpoint's weights, in one process, whichever format (one-process
    safetensors or DCP shards from a DDP/FSDP2 run). Returns the manifest."""
    manifest = checkpoint.verify(path)
    if manifest["format"] == "single":
        load_model(model, str(path / "model.safetensors"))
    else:
        from torch.distributed.checkpoint import load as dcp_load

        sd = {"model": model.state_dict()}
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
            warnings.filterwarnings("ignore", message=".*single process", category=UserWarning)
            dcp_load(sd, checkpoint_id=str(path / "dcp"), no_dist=True)
        model.load_state_dict(sd["model"])
    return manifest


def export_run(
    run_dir: Path, which: str = "last", out: Path | None = None
) -> tuple[Path, str | None]:
    """Export a run's checkpoint; returns (export folder, why hf/ was not written or None)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    path = checkpoint_path(run_dir, which)
    model = GPT(cfg.model)
    manifest = load_checkpoint_weights(path, model)
    out = Path(out) if out is not None else run_dir / "export"
    source = {"run_dir": str(run_dir), "checkpoint": path.name, "step": manifest["step"]}
    source.update({k: v for k, v in manifest.get("meta", {}).items() if k == "tokens"})
    return out, write_export(model, run_dir / "tokenizer.json", out, source)


# ---------------------------------------------------------------------- Hugging Face Llama


def llama_incompatibility(cfg: ModelConfig) -> str | None:
    """Why this model cannot be a LlamaForCausalLM, or None if it can."""
    if cfg.position not in ("rope", "nope"):
        return f"position '{cfg.position}' has no Llama equivalent (rope and nope do)"
    if cfg.mlp != "swiglu":
        return f"mlp '{cfg.mlp}' is not Llama's SwiGLU MLP"
    return None


def llama_state_dict(model: GPT) -> dict[str, Tensor]:
    """Our tensors under Llama's names; fused qkv and gate|up matrices split."""
    cfg, C, F = model.cfg, model.cfg.d_model, ff_width(model.cfg)
    sd = {"model.embed_tokens.weight": model.wte.weight, "model.norm.weight": model.norm.weight}
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = model.lm_head.weight
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = block.norm1.weight
        sd[p + "post_attention_layernorm.weight"] = block.norm2.weight
        attn, mlp = block.attn, block.mlp
        for kind in ("weight", "bias") if cfg.bias else ("weight",):
            q, k, v = getattr(attn.qkv, kind).split(C)  # rows: q heads, k heads, v heads
            sd[p + f"self_attn.q_proj.{kind}"] = q
            sd[p + f"self_attn.k_proj.{kind}"] = k
            sd[p + f"self_attn.v_proj.{kind}"] = v
            sd[p + f"self_attn.o_proj.{kind}"] = getattr(attn.proj, kind)
            gate, up = getattr(mlp.up, kind).split(F)  # MLP.forward: gate first, then up
            sd[p + f"mlp.gate_proj.{kind}"] = gate
            sd[p + f"mlp.up_proj.{kind}"] = up
            sd[p + f"mlp.down_proj.{kind}"] = getattr(mlp.down, kind)
    return {k: v.detach().float().contiguous() for k, v in sd.items()}


def write_llama(model: GPT, tokenizer: Tokenizer, out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    cfg = model.cfg
    rope_scaling = None
    if cfg.position == "nope":
        rope_scaling = {"rope_type": "linear", "factor": NOPE_ROPE_FACTOR}
    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=ff_width(cfg),
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head,
        head_dim=cfg.d_model // cfg.n_head,
        hidden_act="silu",
        max_position_embeddings=cfg.max_position,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_base,
        rope_scaling=rope_scaling,
        attention_bias=cfg.bias,
        mlp_bias=cfg.bias,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    hf_model = LlamaForCausalLM(hf_cfg)
    missing, unexpected = hf_model.load_state_dict(llama_state_dict(model), strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:  # a renaming bug, not a user error
        raise RuntimeError(f"Llama export: missing {missing}, unexpected {unexpected}")
    hf_model.save_pretrained(out)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.hf, bos_token=BOS, eos_token=EOS, pad_token=PAD
    ).save_pretrained(out)
