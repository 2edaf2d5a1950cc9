"""A compact decoder-only Transformer, readable top to bottom: Attention, MLP, Block, GPT.

Pre-norm (RMSNorm), GELU or SwiGLU MLP, optional tied embeddings, GPT-2 initialization. The model
reads the Batch's `position_ids` and `doc_ids` (see lengthwise/batch.py): positional encodings
come from positions.py, document masking from attention.py, and a packed row gives every document
the logits it would get alone (tests/model/test_gpt.py checks this for every position kind).

Inference can carry a `KVCache`: a forward with a cache attends its new tokens to every cached
key and appends its own keys and values, so greedy decoding costs one token per step
(lengthwise/eval/generate.py). Left-padded prompts pass `token_mask` (False = padding, never a
key). Every position kind works with a cache; tests/model/test_kv_cache.py checks that prefill
plus cached steps give the logits of one full forward.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lengthwise.config import ModelConfig
from lengthwise.model.attention import AttnMask, attention, fold_bias, kv_mask, masked_attention
from lengthwise.model.lm_loss import chunked_lm_loss
from lengthwise.model.positions import PositionInfo, Positions, apply_rope


def ff_width(cfg: ModelConfig) -> int:
    """d_ff: as configured, else 4 d (GELU) or 8/3 d rounded up to a multiple of 64 (SwiGLU,
    which has three matrices: 8/3 keeps the parameter count of a 4 d GELU MLP)."""
    if cfg.d_ff is not None:
        return cfg.d_ff
    if cfg.mlp == "swiglu":
        return 64 * math.ceil(8 * cfg.d_model / 3 / 64)
    return 4 * cfg.d_model


class KVCache:
    """Keys and values of the tokens seen so far, for incremental decoding (inference only).

    Per layer, k and v (B, H, T_cached, D) in buffers of `capacity` tokens (grown by doubling
    when a forward goes past it); for all layers, the cached tokens' position ids (B, T_cached)
    for position biases and windows, their validity (B, T_cached) bool (False = left padding,
    never attended to; None = all real), and for abacus the index of the last cached token
    (B,), from which a number that continues in the next step keeps counting its digits.
    Create an empty cache and pass it to every `GPT.forward` of one generation.
    """

    def __init__(self, capacity: int = 0) -> None:
        self.capacity = capacity
        self.length = 0
        self.position_ids: Tensor | None = None  # (B, T_cached)
        self.key_valid: Tensor | None = None  # (B, T_cached) bool, None = no padding
        self.abacus_last: Tensor | None = None  # (B,) abacus only
        self.hf: Any = None  # transformers' own cache, when the model is model/hf.HFModel
        self._k: list[Tensor] = []
        self._v: list[Tensor] = []

    def next_positions(self, B: int, T: int, device: torch.device) -> Tensor:
        """(B, T) position ids continuing each row: last cached id + 1, 2, ... (0, 1, ... when
        the cache is empty)."""
        ar = torch.arange(T, device=device)
        if self.position_ids is None:
            return ar.expand(B, T)
        return self.position_ids[:, -1:] + 1 + ar

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new k, v (B, H, T, D) of `layer` after the cached ones; returns the keys and
        values of all tokens, cached and new (views of the buffers)."""
        B, H, T, D = k.shape
        start, end = self.length, self.length + T
        if layer == len(self._k):
            cap = max(end, self.capacity)
            self._k.append(k.new_empty(B, H, cap, D))
            self._v.append(v.new_empty(B, H, cap, D))
        if end > self._k[layer].shape[2]:
            cap = max(end, 2 * self._k[layer].shape[2])
            for bufs in (self._k, self._v):
                grown = bufs[layer].new_empty(B, H, cap, D)
                grown[:, :, :start] = bufs[layer][:, :, :start]
                bufs[layer] = grown
        self._k[layer][:, :, start:end] = k
        self._v[layer][:, :, start:end] = v
        return self._k[layer][:, :, :end], self._v[layer][:, :, :end]

    def keys(self, position_ids: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Position ids (B, T_cached + T) and validity (None = all real) of every key once the
        new tokens (positions (B, T), validity (B, T) or None) join the cached ones."""
        if self.position_ids is None:
            return position_ids, valid
        key_pos = torch.cat([self.position_ids, position_ids], dim=1)
        if self.key_valid is None and valid is None:
            return key_pos, None
        old = self.key_valid
        if old is None:
            old = torch.ones_like(self.position_ids, dtype=torch.bool)
        new = valid if valid is not None else torch.ones_like(position_ids, dtype=torch.bool)
        return key_pos, torch.cat([old, new], dim=1)

    def advance(self, key_pos: Tensor, key_valid: Tensor | None, abacus: Tensor | None) -> None:
        """After every layer has written its keys: keep `keys()` of this forward and the abacus
        index of the last token."""
        self.position_ids, self.key_valid = key_pos, key_valid
        if abacus is not None:
            self.abacus_last = abacus[:, -1]
        self.length = key_pos.shape[1]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.attn_dropout = cfg.attn_dropout
        self.resid_dropout = nn.Dropout(cfg.resid_dropout)

    def forward(
        self,
        x: Tensor,
        pos: PositionInfo,
        mask: AttnMask | Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        """`mask`: the AttnMask of the forward, or with a cache the (B, 1, T, T_all) SDPA mask
        (kv_mask with the bias folded in)."""
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, D)
        if pos.rope is not None:
            q, k = apply_rope(q, *pos.rope), apply_rope(k, *pos.rope)
        if cache is None:  # training and plain forwards
            dropout_p = self.attn_dropout if self.training else 0.0
            y = attention(q, k, v, mask, pos.bias, dropout_p)  # type: ignore[arg-type]
        else:
            assert isinstance(mask, Tensor)
            k, v = cache.update(layer, k, v)  # (B, H, T_all, D)
            y = masked_attention(q, k, v, mask)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d_ff = ff_width(cfg)
        self.swiglu = cfg.mlp == "swiglu"
        # SwiGLU: one matrix for gate and up, split after the matmul
        self.up = nn.Linear(cfg.d_model, (2 if self.swiglu else 1) * d_ff, bias=cfg.bias)
        self.down = nn.Linear(d_ff, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.resid_dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)  # (B, T, d_ff or 2 d_ff)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h)
        return self.dropout(self.down(h))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: Tensor,
        pos: PositionInfo,
        mask: AttnMask | Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        x = x + self.attn(self.norm1(x), pos, mask, cache, layer)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError(
                "ModelConfig.vocab_size is None: set it (the trainer takes it from "
                "the tokenizer) before building the model"
            )
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positions = Positions(cfg)
        self.drop = nn.Dropout(cfg.emb_dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2: N(0, init_std) everywhere, residual projections scaled by 1/sqrt(2 n_layer) so
        the residual stream's variance does not grow with depth. Positions init themselves."""
        std = self.cfg.init_std
        for module in [self.wte, self.lm_head, *self.blocks.modules()]:
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.down):
                nn.init.normal_(proj.weight, mean=0.0, std=std / math.sqrt(2 * self.cfg.n_layer))

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor | None = None,
        doc_ids: Tensor | None = None,
        targets: Tensor | None = None,
        cache: KVCache | None = None,
        token_mask: Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> Tensor:
        """Logits (B, T, V) float32, or with `targets` the float32 SUM of token cross-entropies
        over targets != -100 (the trainer divides by the step's target count).

        Inference (eval mode) only:
        - `cache`: a KVCache; the new tokens attend to every cached token and are appended.
          `position_ids` default to continuing each row's cached positions.
        - `token_mask` (B, T) bool: False marks padding (left padding of a prompt batch), which
          no token attends to (abacus counts it as a non-digit). Works with or without a cache.
        - `logits_to_keep` > 0: logits of the last that many positions only (prefill)."""
        B, T = input_ids.shape
        if cache is not None or token_mask is not None:
            x = self._trunk_cached(input_ids, position_ids, doc_ids, cache, token_mask)
        else:
            if position_ids is None:
                position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
            pos = self.positions(input_ids, position_ids, doc_ids)
            mask = AttnMask(doc_ids, pos.position_ids if pos.window else None, pos.window)
            x = self.wte(input_ids)  # (B, T, C)
            if pos.emb is not None:
                x = x + pos.emb
            x = self.drop(x)
            for block in self.blocks:
                x = block(x, pos, mask)
        if logits_to_keep > 0 and targets is None:
            x = x[:, -logits_to_keep:]
        # final norm, logits and loss in fp32 even under autocast: bf16 logits lose the small
        # probabilities that the loss (and perplexity beyond the training length) is made of
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = self.norm(x.float())
            if targets is not None:  # chunk by chunk: never the (B, T, V) logits (lm_loss.py)
                return chunked_lm_loss(x.view(B * T, -1), self.lm_head.weight, targets)
            return F.linear(x, self.lm_head.weight.float())  # (B, T, V)

    def _trunk_cached(
        self,
        input_ids: Tensor,
        position_ids: Tensor | None,
        doc_ids: Tensor | None,
        cache: KVCache | None,
        token_mask: Tensor | None,
    ) -> Tensor:
        """The blocks' output (B, T, C) for new tokens against a KV cache (an empty, throwaway
        one when only `token_mask` is given): one dense SDPA mask per forward (kv_mask), with
        the position bias over (new queries) x (cached + new keys) folded in."""
        if self.training:
            raise ValueError("a KV cache or token_mask is for inference: call model.eval() first")
        if doc_ids is not None:
            raise ValueError("a KV cache takes one document per row: pass doc_ids=None")
        cache = cache if cache is not None else KVCache()
        B, T = input_ids.shape
        if cache.position_ids is not None and cache.position_ids.shape[0] != B:
            raise ValueError(f"the cache holds {cache.position_ids.shape[0]} rows, got {B}")
        if position_ids is None:
            position_ids = cache.next_positions(B, T, input_ids.device)
        valid = None if token_mask is None else token_mask.to(torch.bool)
        key_pos, key_valid = cache.keys(position_ids, valid)
        pos = self.positions(
            input_ids,
            position_ids,
            None,
            key_position_ids=key_pos if cache.length else None,
            valid=valid,
            abacus_last=cache.abacus_last,
        )
        allowed = kv_mask(pos.position_ids, key_pos, key_valid, pos.window)
        attn_mask = fold_bias(allowed, pos.bias)
        x = self.wte(input_ids)  # (B, T, C)
        if pos.emb is not None:
            x = x + pos.emb
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, pos, attn_mask, cache, i)
        cache.advance(key_pos, key_valid, pos.abacus)
        return x

    @property
    def dims(self) -> tuple[int, int]:
        """(layers, width) for the FLOPs estimates."""
        return self.cfg.n_layer, self.cfg.d_model

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count, a shared matrix counted once. `non_embedding` leaves out the lookup
        tables (position tables, and the token embedding unless it is tied to the output head,
        where it does a matmul's work), as nanoGPT does: the N of the 6N FLOPs rule."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if not self.cfg.tie_embeddings:
                n -= self.wte.weight.numel()
            if self.cfg.position in ("learned", "abacus"):
                n -= self.positions.table.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward) for rows of `seq_len` tokens:
        6 N (N = num_params(non_embedding=True); 2 per multiply-add, x3 for the backward) plus
        attention scores and values, 2 matmuls x 2 FLOPs x d_model per (query, key) pair, over the
        seq_len / 2 keys a causal query sees on average, x3: 12 n_layer d_model seq_len / 2.
        Document-masked rows see fewer keys; the data statistics count those exactly."""
        N = self.num_params(non_embedding=True)
        return 6.0 * N + 12.0 * self.cfg.n_layer * self.cfg.d_model * seq_len / 2

    def param_groups(self, weight_decay: float, decay_embeddings: bool) -> list[dict]:
        """AdamW groups: weight decay on the 2-D weights of Linear layers in the blocks (and the
        untied output head), and on the token embedding if `decay_embeddings`; never on norms,
        biases, position tables, or FIRE/relative-bias parameters (they are a handful of numbers
        that shape attention; decaying them pulls every model toward NoPE)."""
        decayed = {id(m.weight) for m in self.blocks.modules() if isinstance(m, nn.Linear)}
        if not self.cfg.tie_embeddings:
            decayed.add(id(self.lm_head.weight))
        if decay_embeddings:
            decayed.add(id(self.wte.weight))
        decay, no_decay = [], []
        for p in self.parameters():  # shared parameters appear once
            (decay if id(p) in decayed else no_decay).append(p)
        return [
            {"name": "decay", "params": decay, "weight_decay": weight_decay},
            {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
        ]
