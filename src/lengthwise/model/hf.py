"""Any `transformers` causal LM behind the lengthwise GPT's forward contract (`model.kind: hf`).

`HFModel` wraps an `AutoModelForCausalLM` and takes what `GPT.forward` takes: the Batch's
`position_ids` (restarting per document) and `doc_ids` (None = one document per row), targets
with -100, a `KVCache` and `token_mask` for greedy decoding. So the trainer, the evaluator, the
checkpoints, DDP/FSDP2 and the eval suites treat it like our own model.

Document masking. `transformers` lets a library register an attention function
(`AttentionInterface`); we register `"lengthwise"`, which runs lengthwise's own `attention()`:
per-document SDPA on CPU (one causal SDPA call per segment length, never a T x T mask) and
FlexAttention with a document BlockMask on CUDA. The Batch's document layout reaches it as the
keyword `lengthwise_mask` (an `AttnMask`, built once per forward and shared by the layers), or
as a `doc_ids` tensor (what an HF Trainer batch carries, see lengthwise.integrations). An
implementation that has no mask function in `transformers` gets no mask built, so a packed row
costs what its documents cost alone. The other implementations get what they need: `sdpa` and
`eager` a dense (B, 1, T, T) document mask (HF's own packed path), `flash_attention_2` the
segments' cumulative lengths (varlen over the flattened rows), `flex_attention` the restarting
`position_ids`, from which `transformers` finds the documents. Decomposition rows hold one
document: plain causal attention (an all-ones padding mask, so that transformers does not read
documents off task position ids).

Never a hub name and never remote code: a fresh model comes from a config mapping, a pretrained
one from a local `save_pretrained` folder.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lengthwise.batch import IGNORE_INDEX
from lengthwise.config import ModelConfig
from lengthwise.errors import UserError
from lengthwise.model.attention import AttnMask, attention, kv_mask
from lengthwise.model.gpt import KVCache
from lengthwise.model.lm_loss import chunked_lm_loss

POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")  # learned, absolute
ATTENTION = "lengthwise"  # the name registered in transformers' AttentionInterface
# model types whose causal-LM forward is just `lm_head(base_model(...)[0])` (read in transformers
# 5.25): the training loss skips the full logits (chunked_lm_loss). Left out, so they keep the
# logits path: gemma2/gemma3 (final_logit_softcapping), cohere (logit_scale), granite
# (logits_scaling), MoE models (router outputs), and any type not checked. A head with a bias
# (phi's, gptj's) also keeps the logits path.
PLAIN_HEAD_TYPES = frozenset((
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gpt2", "gpt_neo", "gpt_neox", "olmo", "olmo2",
    "opt", "phi", "phi3", "smollm3", "stablelm", "starcoder2", "bloom", "falcon",
))  # fmt: skip

# our dropout fields -> the names architectures use for them (first one the config has wins)
DROPOUT_FIELDS = {
    "emb_dropout": ("embd_pdrop", "embedding_dropout"),
    "attn_dropout": ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob"),
    "resid_dropout": ("resid_pdrop", "hidden_dropout", "hidden_dropout_prob"),
}


def require_transformers(what: str) -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError(f"{what}: needs transformers (pip install 'lengthwise[hf]')") from None
    return transformers


@functools.cache
def register_attention() -> str:
    """Register the "lengthwise" attention implementation with transformers (once)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, lengthwise_attention)
    return ATTENTION


_doc_masks: dict[tuple, AttnMask] = {}  # doc_ids tensor -> its AttnMask, for the current forward


def _mask_of(doc_ids: Tensor) -> AttnMask:
    """One AttnMask per doc_ids tensor, shared by every layer of a forward (segments are found
    once, with one host sync, not once per layer)."""
    key = (doc_ids.data_ptr(), tuple(doc_ids.shape), doc_ids._version, doc_ids.device)
    if key not in _doc_masks:
        _doc_masks.clear()
        _doc_masks[key] = AttnMask(doc_ids)
    return _doc_masks[key]


def lengthwise_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    lengthwise_mask: AttnMask | None = None,
    doc_ids: Tensor | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers' attention-function signature: q (B, H, T, D), k, v (B, H_kv, T_k, D);
    returns (B, T, H, D). Causal attention within documents (lengthwise_mask or doc_ids; none =
    one document per row). With a mask from the model (generation: a KV cache and left padding)
    it is transformers' own SDPA function."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if kwargs.get("softcap"):
        raise ValueError("lengthwise attention has no logit softcapping: use attention 'eager'")
    window = kwargs.get("sliding_window")
    if window and query.shape[2] > window:
        raise ValueError(
            f"a sliding window of {window} tokens on rows of {query.shape[2]}: use attention "
            "'sdpa' or 'flash_attention_2' for this model"
        )
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    head_dim = query.shape[-1]
    if scaling is not None and not math.isclose(scaling * math.sqrt(head_dim), 1.0):
        query = query * (scaling * math.sqrt(head_dim))  # SDPA scales by 1/sqrt(D)
    mask = lengthwise_mask
    if mask is None and doc_ids is not None:
        mask = _mask_of(doc_ids)
    out = attention(query, key, value, mask, dropout_p=dropout)
    return out.transpose(1, 2).contiguous(), None


class HFModel(nn.Module):
    """A transformers causal LM with the lengthwise GPT's interface (forward, param_groups,
    num_params, flops_per_token, blocks, dims, max_positions)."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf
        self.attn_implementation: str = hf.config._attn_implementation
        params = inspect.signature(hf.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @property
    def config(self) -> Any:
        return self.hf.config

    @property
    def blocks(self) -> list[nn.Module]:
        """The decoder layers (what FSDP2 shards one by one): the modules transformers itself
        never splits across devices (`_no_split_modules`)."""
        names = set(getattr(self.hf, "_no_split_modules", None) or [])
        return [m for m in self.hf.modules() if type(m).__name__ in names]

    @property
    def dims(self) -> tuple[int, int]:
        """(layers, width) for the FLOPs estimates."""
        return int(self.config.num_hidden_layers), int(self.config.hidden_size)

    @property
    def max_positions(self) -> int | None:
        """Rows of a learned absolute position table (GPT-2's wpe, OPT's embed_positions);
        None for RoPE and other relative schemes, which have no hard limit."""
        for name, m in self.hf.named_modules():
            last = name.rsplit(".", 1)[-1]
            if isinstance(m, nn.Embedding) and last in (
                "wpe",
                "embed_positions",
                "position_embeddings",
            ):
                return int(m.num_embeddings)
        return None

    def _embedding_params(self) -> set[int]:
        return {id(m.weight) for m in self.hf.modules() if isinstance(m, nn.Embedding)}

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count, a tied matrix once; `non_embedding` leaves out the lookup tables
        (position tables, and the token embedding unless it is tied to the output head)."""
        seen: dict[int, nn.Parameter] = {id(p): p for p in self.parameters()}
        n = sum(p.numel() for p in seen.values())
        if non_embedding:
            head = self.hf.get_output_embeddings()
            tied = {id(head.weight)} if head is not None else set()
            n -= sum(seen[i].numel() for i in self._embedding_params() - tied if i in seen)
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """6 N + causal attention, as GPT.flops_per_token."""
        layers, width = self.dims
        return 6.0 * self.num_params(non_embedding=True) + 12.0 * layers * width * seq_len / 2

    def param_groups(self, weight_decay: float, decay_embeddings: bool) -> list[dict]:
        """AdamW groups as for the GPT: decay on matrices (Linear, GPT-2's Conv1D, an untied
        output head), not on norms, biases or position tables; token embeddings only with
        `decay_embeddings`."""
        embeddings = self._embedding_params()
        token = self.hf.get_input_embeddings().weight
        decay, no_decay = [], []
        for p in self.parameters():
            is_matrix = p.dim() >= 2 and id(p) not in embeddings
            if is_matrix or (decay_embeddings and p is token):
                decay.append(p)
            else:
                no_decay.append(p)
        return [
            {"name": "decay", "params": decay, "weight_decay": weight_decay},
            {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
        ]

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
        """As GPT.forward: logits (B, T, V) float32, or with `targets` the float32 sum of token
        cross-entropies over targets != -100."""
        B, T = input_ids.shape
        keep = logits_to_keep if targets is None else 0
        if cache is not None or token_mask is not None:
            logits = self._cached(input_ids, position_ids, cache, token_mask, keep)
        else:
            if position_ids is None:
                position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
            kwargs = dict(input_ids=input_ids, position_ids=position_ids, use_cache=False)
            kwargs.update(self._document_mask(doc_ids, B, T, input_ids.device))
            head = self._plain_head() if targets is not None else None
            if head is not None:  # the loss chunk by chunk, never the (B, T, V) logits
                hidden = self.hf.base_model(**kwargs)[0]  # (B, T, C); the loss runs in fp32
                return chunked_lm_loss(hidden.reshape(B * T, -1), head.weight, targets)
            logits = self.hf(**kwargs, logits_to_keep=keep).logits
        logits = logits.float()
        if targets is None:
            return logits
        return F.cross_entropy(
            logits.reshape(B * T, -1),
            targets.reshape(B * T),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )

    def _plain_head(self) -> nn.Linear | None:
        """The output head, if the logits are exactly `head(base_model(...)[0])` with a
        bias-free Linear head (so chunked_lm_loss may stand in for them), else None."""
        head = self.hf.get_output_embeddings()
        plain = self.config.model_type in PLAIN_HEAD_TYPES and type(head) is nn.Linear
        return head if plain and head.bias is None else None

    def _document_mask(self, doc_ids: Tensor | None, B: int, T: int, device: torch.device) -> dict:
        if self.attn_implementation == ATTENTION:  # the mask object, shared by the layers
            return {} if doc_ids is None else {"lengthwise_mask": AttnMask(doc_ids)}
        return document_kwargs(self.attn_implementation, doc_ids, B, T, device, self.hf.dtype)

    def _cached(
        self,
        input_ids: Tensor,
        position_ids: Tensor | None,
        cache: KVCache | None,
        token_mask: Tensor | None,
        logits_to_keep: int,
    ) -> Tensor:
        """Inference against a KV cache (a throwaway one for `token_mask` alone): transformers'
        own cache inside lengthwise's KVCache, which keeps the positions and key padding."""
        if self.training:
            raise ValueError("a KV cache or token_mask is for inference: call model.eval() first")
        cache = cache if cache is not None else KVCache()
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = cache.next_positions(B, T, input_ids.device)
        valid = None if token_mask is None else token_mask.to(torch.bool)
        key_pos, key_valid = cache.keys(position_ids, valid)
        if cache.hf is None:
            from transformers import DynamicCache

            cache.hf = DynamicCache()
        impl = self.attn_implementation
        if impl in (ATTENTION, "sdpa", "eager"):
            mask = as_attention_mask(kv_mask(position_ids, key_pos, key_valid), impl, self.hf.dtype)
        else:  # flash/flex build their own mask from the 2-D key padding
            ones = torch.ones_like(key_pos, dtype=torch.bool)
            mask = (key_valid if key_valid is not None else ones).long()
        out = self.hf(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=mask,
            use_cache=True,
            logits_to_keep=logits_to_keep,
            **{self._cache_kw: cache.hf},
        )
        cache.advance(key_pos, key_valid, None)
        return out.logits

    def save_pretrained(self, out: Path) -> None:
        """A plain save_pretrained folder (safetensors), loadable by AutoModelForCausalLM."""
        self.hf.save_pretrained(out, safe_serialization=True)


def document_kwargs(
    impl: str, doc_ids: Tensor | None, B: int, T: int, device: torch.device, dtype: torch.dtype
) -> dict:
    """The forward keywords with which attention implementation `impl` keeps the documents of
    B x T rows apart (see the module docstring); `lengthwise` reads `doc_ids` itself. With no
    mask at all, transformers reads documents and causality off the position ids (a new
    document wherever an id is not the previous + 1, keys allowed by id, not by column), which
    task position ids (coupled stores) do not follow: one document per row gets an explicit
    all-ones padding mask (SDPA still runs is_causal)."""
    if impl == ATTENTION:
        return {} if doc_ids is None else {"doc_ids": doc_ids}
    if impl in ("flash_attention_2", "flash_attention_3"):
        return _varlen_kwargs(doc_ids, B, T, device)
    if doc_ids is None:
        return {"attention_mask": torch.ones(B, T, dtype=torch.long, device=device)}
    if impl in ("sdpa", "eager"):
        allowed = AttnMask(doc_ids).dense(T, device)
        return {"attention_mask": as_attention_mask(allowed, impl, dtype)}
    return {}  # flex_attention: documents from the restarting position_ids


def _varlen_kwargs(doc_ids: Tensor | None, B: int, T: int, device: torch.device) -> dict:
    """FlashAttention's varlen arguments for the B x T tokens flattened: cumulative lengths of
    the segments (documents and padding runs; a whole row for one document per row). Without
    them transformers finds documents from position_ids only for one-row batches."""
    segments = [(b, 0, T) for b in range(B)] if doc_ids is None else AttnMask(doc_ids).segments()
    lengths = [e - s for _, s, e in segments]
    cu = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    cu = cu.to(device)
    longest = max(lengths)
    return {
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def as_attention_mask(allowed: Tensor, impl: str, dtype: torch.dtype) -> Tensor:
    """A 4-D boolean "may attend" mask as the implementation reads it: eager adds its mask to
    the scores, so it gets 0 / the dtype's minimum."""
    if impl != "eager":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


# ------------------------------------------------------------------------------ building


def build_hf_model(cfg: ModelConfig, vocab_size: int, pretrained: bool = True) -> HFModel:
    """The model of `cfg.hf`, in float32, with at least `vocab_size` token embeddings.
    `pretrained` False builds a folder's architecture without reading its weights (a checkpoint
    is loaded into it next). Every problem with the config or the folder is one UserError."""
    transformers = require_transformers("model.kind: hf")
    assert cfg.hf is not None
    impl = cfg.hf.attention
    if impl == ATTENTION:
        register_attention()
    if cfg.hf.path is not None:
        config = folder_config(cfg.hf.path)
    else:
        config = fresh_config(cfg.hf.config or {}, vocab_size, transformers)
    set_dropout(config, cfg)
    auto = transformers.AutoModelForCausalLM
    where = f"model.hf.path: {cfg.hf.path}" if cfg.hf.path else "model.hf.config"
    try:
        if cfg.hf.path is not None and pretrained:
            with _no_progress_bar():  # a bar per start is noise in the run's log (and --quiet)
                hf = auto.from_pretrained(
                    cfg.hf.path,
                    config=config,
                    attn_implementation=impl,
                    trust_remote_code=False,
                    local_files_only=True,
                    **{_dtype_kwarg(transformers): torch.float32},
                )
        else:
            hf = auto.from_config(config, attn_implementation=impl, trust_remote_code=False)
    except (ValueError, ImportError, OSError, KeyError, TypeError) as e:
        raise UserError(f"{where}: cannot build a causal LM ({_first_line(e)})") from None
    hf = hf.float()
    rows = hf.get_input_embeddings().num_embeddings
    if rows < vocab_size:
        if cfg.hf.path is None:
            raise UserError(
                f"model.hf.config.vocab_size: {rows} is smaller than the tokenizer's "
                f"{vocab_size} tokens; leave it out to take the tokenizer's size"
            )
        # a pretrained tokenizer plus lengthwise's <|eos|>/<|pad|>/<|bos|> (the trainer checked
        # that nothing else differs): new rows at the mean of the old ones, as HF does
        hf.resize_token_embeddings(vocab_size, mean_resizing=pretrained)
    return HFModel(hf)


def folder_config(path: Path) -> Any:
    """The config.json of a local save_pretrained folder (never a hub name)."""
    from transformers import AutoConfig

    path = Path(path)
    if not path.exists():
        looks_like_hub = len(path.parts) == 2 and not str(path).startswith((".", "/", "~"))
        hint = (
            "; lengthwise never downloads: save_pretrained the model to a local folder first"
            if looks_like_hub
            else ""
        )
        raise UserError(f"model.hf.path: {path} is not a local folder{hint}")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise UserError(f"model.hf.path: {path} is not a model folder (no config.json)")
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    except (ValueError, OSError, KeyError) as e:
        raise UserError(f"model.hf.path: {path}/config.json: {_first_line(e)}") from None


def fresh_config(mapping: dict[str, Any], vocab_size: int, transformers: Any) -> Any:
    """A transformers config from `model_type` + keys, each key checked against the
    architecture's own config (transformers would keep a misspelt key and ignore it)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    keys = dict(mapping)
    model_type = keys.pop("model_type")
    if model_type not in CONFIG_MAPPING:
        near = difflib.get_close_matches(model_type, list(CONFIG_MAPPING.keys()), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise UserError(f"model.hf.config.model_type: unknown model type '{model_type}'{hint}")
    config_class = CONFIG_MAPPING[model_type]
    defaults = config_class().to_dict()
    known = set(defaults) | set(getattr(config_class, "attribute_map", {}))
    if "rope_parameters" in known:  # transformers 5 folds these older keys into it
        known |= {"rope_theta", "rope_scaling"}
    for key in keys:
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise UserError(f"model.hf.config.{key}: {model_type} configs have no such key{hint}")
    for key, value in keys.items():  # YAML reads 1e-5 (no dot) as a string
        if isinstance(defaults.get(key), float) and isinstance(value, str):
            with contextlib.suppress(ValueError):
                keys[key] = float(value)
    keys.setdefault("vocab_size", vocab_size)
    for name, value in defaults.items():  # GPT-2's 50256 in a vocabulary of 40: no such token
        if name.endswith("_token_id") and isinstance(value, int) and value >= keys["vocab_size"]:
            keys.setdefault(name, None)
    try:
        return transformers.AutoConfig.for_model(model_type, **keys)
    except Exception as e:  # transformers validates with several exception types
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise UserError(f"model.hf.config: {' '.join(lines[:2]) or type(e).__name__}") from None


def set_dropout(config: Any, cfg: ModelConfig) -> None:
    """Our model.*_dropout onto the architecture's own dropout fields, refused where the
    architecture has no such dropout. A fresh model's dropout is ours, 0 included (GPT-2's
    config class defaults to 0.1), unless model.hf.config names the field itself; a folder
    keeps its config.json's dropout unless ours is non-zero."""
    given = set(cfg.hf.config or {}) if cfg.hf is not None else set()
    fresh = cfg.hf is not None and cfg.hf.path is None
    for ours, theirs in DROPOUT_FIELDS.items():
        p = getattr(cfg, ours)
        name = next((n for n in theirs if hasattr(config, n)), None)
        if name in given and p != 0:
            raise UserError(
                f"model.{ours}: {p}, and model.hf.config.{name} sets the same dropout; set one"
            )
        if p == 0 and (name is None or name in given or not fresh):
            continue
        if name is None:
            raise UserError(
                f"model.{ours}: {config.model_type} has no such dropout (its config has none of "
                f"{', '.join(theirs)}); set it to 0"
            )
        setattr(config, name, p)


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _dtype_kwarg(transformers: Any) -> str:
    major = int(transformers.__version__.split(".")[0])
    return "dtype" if major >= 5 else "torch_dtype"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
