"""Reading an export folder (written by lengthwise.export: model.safetensors, config.json,
tokenizer.json) without the trainer: evaluation loads models from here."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model

from lengthwise.config import ModelConfig
from lengthwise.data.tokenizer import Tokenizer, load_tokenizer
from lengthwise.errors import UserError
from lengthwise.model.gpt import GPT

FORMAT = "lengthwise"


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
    if meta.get("format") != FORMAT:
        raise UserError(f"{meta_path}: not a lengthwise export (format {meta.get('format')!r})")
    model = GPT(ModelConfig.model_validate(meta["model"]))
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise UserError(
            f"{path / 'model.safetensors'}: does not match config.json "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    return model.to(device).eval(), load_tokenizer(path / "tokenizer.json")
