"""The export folder format, written and read here (the trainer writes RUN/export at the end,
`lengthwise export` any checkpoint; evaluation loads models from it, without the trainer):

EXPORT/model.safetensors   full weights (tied matrices stored once)
EXPORT/config.json         {"format": "lengthwise", "model": ModelConfig, "source": ...}
EXPORT/tokenizer.json      the run's tokenizer
EXPORT/hf/                 LlamaForCausalLM + tokenizer, for rope/nope SwiGLU models when
                           `transformers` is installed (pip install lengthwise[hf])

Llama has the same block as ours (pre-norm RMSNorm, SwiGLU, rotate-half RoPE), so the Hugging
Face folder is a renaming of tensors plus splitting our fused qkv and gate|up matrices. NoPE is
written as RoPE with linear scaling by 1e12: at 10^6 positions every rotation angle is below
1e-6 rad, so the rotation is the identity to float32 precision (the test checks the logits).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from lengthwise import __version__
from lengthwise.config import ModelConfig, format_validation_error
from lengthwise.data.tokenizer import BOS, EOS, PAD, Tokenizer, load_tokenizer
from lengthwise.errors import UserError
from lengthwise.io import atomic_dir
from lengthwise.model.gpt import GPT, ff_width
from lengthwise.model.hf import HFModel

FORMAT = "lengthwise"
HF_FORMAT, HF_MARKER = "lengthwise-hf", "lengthwise.json"  # a transformers model's export
NOPE_ROPE_FACTOR = 1e12


def is_export(path: Path) -> bool:
    """A folder lengthwise exported (its config.json says format "lengthwise", or, for a
    transformers model, its lengthwise.json says HF_FORMAT): the only kind of existing folder an
    export replaces without --overwrite."""
    for name, fmt in (("config.json", FORMAT), (HF_MARKER, HF_FORMAT)):
        try:
            if json.loads((Path(path) / name).read_text()).get("format") == fmt:
                return True
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            pass
    return False


def load_exported(path: Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer]:
    """The model (in eval mode) and tokenizer of an export folder."""
    path = Path(path)
    meta_path = path / "config.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not an exported model (no config.json)") from None
    except json.JSONDecodeError:
        raise UserError(f"{meta_path}: not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise UserError(f"{meta_path}: not a lengthwise export (format {found!r})")
    try:
        model_cfg = ModelConfig.model_validate(meta.get("model"))
    except ValidationError as e:
        raise UserError(format_validation_error(f"{meta_path}: model", e)) from None
    model = GPT(model_cfg)
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise UserError(
            f"{path / 'model.safetensors'}: does not match config.json "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    return model.to(device).eval(), load_tokenizer(path / "tokenizer.json")


def write_export(
    model: nn.Module, tokenizer_json: Path, out: Path, source: dict[str, Any], hf: bool = True
) -> str | None:
    """Write the export folder `out` atomically (replacing it: callers check beforehand that it may
    be replaced, see `is_export`). Returns why no hf/ folder was written (None if it
    was, or if `hf` is False). A transformers model (HFModel) is written as a plain
    save_pretrained folder instead, whatever `hf` says."""
    if isinstance(model, HFModel):
        write_hf_export(model, load_tokenizer(tokenizer_json), Path(out), source)
        return None
    assert isinstance(model, GPT)
    with atomic_dir(Path(out)) as tmp:
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
    return skipped


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


# ---------------------------------------------------------------------- a transformers model


def write_hf_export(
    model: HFModel, tokenizer: Tokenizer, out: Path, source: dict[str, Any]
) -> None:
    """A model trained with `model.kind: hf` as the folder its users expect: save_pretrained
    weights and config, the tokenizer as a PreTrainedTokenizerFast, and lengthwise.json (where
    it came from). Special-token ids in the config and generation config are the data
    tokenizer's, so `generate` stops at the <|eos|> that ends every training document (a
    pretrained model keeps its own EOS ids too)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf = model.hf
    fresh = source.get("pretrained") is None
    for cfg in (hf.config, hf.generation_config):
        cfg.bos_token_id, cfg.pad_token_id = tokenizer.bos_id, tokenizer.pad_id
        theirs = [] if fresh else _as_ids(getattr(cfg, "eos_token_id", None))
        eos = list(dict.fromkeys([tokenizer.eos_id, *theirs]))
        cfg.eos_token_id = eos[0] if len(eos) == 1 else eos
    with atomic_dir(out) as tmp:
        hf_logging.disable_progress_bar()  # a bar for one shard is noise in the run's log
        try:
            model.save_pretrained(tmp)
        finally:
            hf_logging.enable_progress_bar()
        PreTrainedTokenizerFast(
            tokenizer_object=tokenizer.hf, bos_token=BOS, eos_token=EOS, pad_token=PAD
        ).save_pretrained(tmp)
        meta = {"format": HF_FORMAT, "lengthwise_version": __version__, "source": source}
        (tmp / HF_MARKER).write_text(json.dumps(meta, indent=2))


def _as_ids(x: Any) -> list[int]:
    if x is None:
        return []
    return [int(x)] if isinstance(x, int) else [int(i) for i in x]
