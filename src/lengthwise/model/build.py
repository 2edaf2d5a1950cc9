"""The model a ModelConfig names: the lengthwise GPT, or a transformers causal LM (kind: hf)."""

from __future__ import annotations

from torch import nn

from lengthwise.config import ModelConfig
from lengthwise.model.gpt import GPT


def make_model(cfg: ModelConfig, pretrained: bool = True) -> nn.Module:
    """`cfg.vocab_size` must be set (the trainer takes it from the tokenizer). `pretrained`
    False: a `model.hf.path` folder's architecture without its weights (a checkpoint is loaded
    into it next)."""
    if cfg.kind == "hf":
        from lengthwise.model.hf import build_hf_model

        assert cfg.vocab_size is not None
        return build_hf_model(cfg, cfg.vocab_size, pretrained=pretrained)
    return GPT(cfg)
