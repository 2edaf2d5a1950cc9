"""`data-stats`: what each batching strategy costs and trains on the same store and the same
tokens per step, measured by walking one epoch of step plans (no token reads).

FLOPs per step (training = forward + backward = 3x forward, Kaplan et al. 2020 / PaLM appendix B):
  dense   = 6 * N * (B * T)                    N = 12 * n_layer * d_model^2 (non-embedding)
  attn    = 12 * n_layer * d_model * P         P = causal (query, key) pairs computed:
            B * T(T+1)/2 for rows without a document mask (padding included, as a dense kernel
            computes it), sum of l(l+1)/2 over segments for document-masked rows (the ideal
            block-sparse kernel; FlexAttention skips whole masked 128x128 blocks, so it is close)
  total   = dense + attn
Ratios are per step relative to `concat_chunk` on the same tokens per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lengthwise.config import STRATEGY_NAMES, BatchingConfig
from lengthwise.data.plan import plan_counts
from lengthwise.data.store import TokenStore
from lengthwise.data.strategies import build_strategy
from lengthwise.errors import UserError


@dataclass(frozen=True)
class ModelDims:
    n_layer: int = 4
    d_model: int = 256

    @property
    def non_embedding_params(self) -> int:
        return 12 * self.n_layer * self.d_model**2


def _curriculum_applies(strategy: str, curriculum: str) -> bool:
    if curriculum == "seq_len_warmup":
        return strategy.startswith("concat_chunk")
    return curriculum == "none" or strategy == "decomposition"


def config_for(base: BatchingConfig, strategy: str) -> BatchingConfig | None:
    """`base` with another strategy, its curriculum kept where it applies (else none).
    None when the strategy cannot run with these sizes (decomposition needs powers of two)."""
    tree = base.model_dump()
    tree["strategy"] = strategy
    if not _curriculum_applies(strategy, base.curriculum.name):
        tree["curriculum"]["name"] = "none"
    try:
        return BatchingConfig.model_validate(tree)
    except ValueError:
        return None


def strategy_stats(
    store: TokenStore, cfg: BatchingConfig, model: ModelDims = ModelDims()
) -> dict[str, Any]:
    strategy = build_strategy(
        cfg, store.tokens, store.offsets, pad_id=store.meta["tokenizer"]["pad_id"]
    )
    steps = strategy.steps_in_epoch(0)
    if steps == 0:
        raise UserError(
            f"{store.path}: not one full step of {cfg.tokens_per_step} tokens with "
            f"strategy {cfg.strategy}; lower batching.tokens_per_step"
        )
    fields = ("input_tokens", "pad_tokens", "target_tokens", "attn_pairs", "cross_doc_pairs")
    totals = dict.fromkeys(fields, 0)
    slots = 0
    seq_lens = np.empty(steps, dtype=np.int64)
    for step in range(steps):
        c = plan_counts(strategy.plan(0, step))
        for f in fields:
            totals[f] += getattr(c, f)
        slots += c.rows * c.seq_len
        seq_lens[step] = c.seq_len
    n = store.n_tokens
    dense = 6 * model.non_embedding_params * slots / steps
    attn = 12 * model.n_layer * model.d_model * totals["attn_pairs"] / steps
    return {
        "strategy": cfg.strategy,
        "curriculum": cfg.curriculum.name,
        "steps_per_epoch": steps,
        "store_tokens": n,
        "input_tokens": totals["input_tokens"],
        "target_tokens": totals["target_tokens"],
        "pad_tokens": totals["pad_tokens"],
        "pad_fraction": totals["pad_tokens"] / slots,
        "dropped_tokens": n - totals["input_tokens"],
        "dropped_fraction": (n - totals["input_tokens"]) / n,
        "cross_doc_pairs": totals["cross_doc_pairs"] / steps,
        "attn_pairs": totals["attn_pairs"] / steps,
        "attn_flops": attn,
        "total_flops": dense + attn,
        "mean_seq_len": float(seq_lens.mean()),
        "seq_len_profile": _profile(seq_lens),
        "summary": strategy.epoch_summary(0),
    }


def all_strategy_stats(
    store: TokenStore,
    base: BatchingConfig,
    strategies: tuple[str, ...] = STRATEGY_NAMES,
    model: ModelDims = ModelDims(),
) -> list[dict[str, Any]]:
    """Stats for every strategy that can run with `base`'s sizes, with FLOP ratios relative to
    concat_chunk (always computed, as the reference)."""
    rows = []
    for name in dict.fromkeys(("concat_chunk", *strategies)):
        cfg = config_for(base, name)
        if cfg is not None:
            rows.append(strategy_stats(store, cfg, model))
    ref = rows[0]
    for r in rows:
        r["attn_flops_ratio"] = r["attn_flops"] / ref["attn_flops"]
        r["total_flops_ratio"] = r["total_flops"] / ref["total_flops"]
    by_name = {r["strategy"]: r for r in rows}
    return [by_name[s] for s in strategies if s in by_name]


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'strategy':<22}{'curriculum':<16}{'steps':>7}{'trained tok':>13}{'pad %':>8}"
        f"{'dropped %':>10}{'x-doc pairs/step':>18}{'attn FLOPs':>12}{'total FLOPs':>13}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['strategy']:<22}{r['curriculum']:<16}{r['steps_per_epoch']:>7}"
            f"{r['target_tokens']:>13,}{100 * r['pad_fraction']:>8.2f}"
            f"{100 * r['dropped_fraction']:>10.2f}{r['cross_doc_pairs']:>18,.0f}"
            f"{r['attn_flops_ratio']:>11.3f}x{r['total_flops_ratio']:>12.3f}x"
        )
    return "\n".join(lines)


def _profile(seq_lens: np.ndarray, parts: int = 8) -> list[float]:
    """Mean sequence length per eighth of the epoch: a curriculum's shape in eight numbers."""
    return [float(c.mean()) for c in np.array_split(seq_lens, min(parts, len(seq_lens)))]


def format_summaries(rows: list[dict[str, Any]]) -> str:
    """Per-strategy details: scalar facts, bucket histogram and curriculum profile."""
    lines = []
    for r in rows:
        s = r["summary"]
        facts = ", ".join(
            f"{k}={v:,}"
            if isinstance(v, int)
            else f"{k}={v:.4g}"
            if isinstance(v, float)
            else f"{k}={v}"
            for k, v in s.items()
            if isinstance(v, int | float | str)
        )
        lines.append(f"{r['strategy']}: mean seq len {r['mean_seq_len']:.0f}; {facts}")
        if "bucket_lengths" in s:
            for key in ("pieces_per_bucket", "tokens_per_bucket", "batches_per_bucket"):
                pairs = zip(s["bucket_lengths"], s[key], strict=True)
                lines.append(f"  {key:<19}" + " ".join(f"{b}:{n:,}" for b, n in pairs))
        profile = " ".join(f"{x:.0f}" for x in r["seq_len_profile"])
        lines.append(f"  seq len per eighth of the epoch: {profile}")
    return "\n".join(lines)
