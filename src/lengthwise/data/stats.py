"""`data-stats`: what each batching strategy costs and trains on the same store and the same
tokens per step, measured by walking one epoch of step plans (no token reads).

FLOPs per step (training = forward + backward = 3x forward, Kaplan et al. 2020 / PaLM appendix B):
  dense   = 6 * N * (B * T)                    N = weights used once per token in a matmul:
            12 * n_layer * d_model^2 (the blocks) + vocab * d_model (the LM head, tied or not: a
            matmul per token, often half the dense FLOPs of a small model), or the exact count
            of a built model (benchmarks/throughput.py passes it; same formula)
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
from pydantic import ValidationError

from lengthwise.config import STRATEGY_NAMES, BatchingConfig
from lengthwise.data.plan import plan_counts
from lengthwise.data.store import TokenStore
from lengthwise.data.strategies import build_strategy
from lengthwise.errors import UserError


@dataclass(frozen=True)
class ModelDims:
    """What the FLOP count needs of a model (the module docstring's formula). `vocab` 0 leaves
    the LM head out; `exact_matmul_params` replaces the estimate of N."""

    n_layer: int = 4
    d_model: int = 256
    vocab: int = 0
    exact_matmul_params: int | None = None

    @property
    def matmul_params(self) -> int:
        if self.exact_matmul_params is not None:
            return self.exact_matmul_params
        return 12 * self.n_layer * self.d_model**2 + self.vocab * self.d_model

    def flops(self, slots: float, attn_pairs: float) -> tuple[float, float]:
        """(dense, attention) training FLOPs of `slots` positions and `attn_pairs` pairs."""
        return 6.0 * self.matmul_params * slots, 12.0 * self.n_layer * self.d_model * attn_pairs


def _curriculum_applies(strategy: str, curriculum: str) -> bool:
    if curriculum == "seq_len_warmup":
        return strategy.startswith("concat_chunk")
    return curriculum == "none" or strategy == "decomposition"


def config_for(base: BatchingConfig, strategy: str) -> BatchingConfig | None:
    """`base` with another strategy, its curriculum kept where it applies (else none).
    None when the strategy cannot run with these sizes (decomposition needs powers of two)."""
    try:
        return _config_for(base, strategy)
    except UserError:
        return None


def _config_for(base: BatchingConfig, strategy: str) -> BatchingConfig:
    """`config_for`, with a one-line UserError saying why the sizes do not fit `strategy`."""
    tree = base.model_dump()
    tree["strategy"] = strategy
    if not _curriculum_applies(strategy, base.curriculum.name):
        tree["curriculum"]["name"] = "none"
    try:
        return BatchingConfig.model_validate(tree)
    except ValidationError as e:
        reason = e.errors()[0]["msg"].removeprefix("Value error, ")
        raise UserError(f"{strategy}: batching: {reason}") from None


def strategy_stats(
    store: TokenStore, cfg: BatchingConfig, model: ModelDims = ModelDims()
) -> dict[str, Any]:
    strategy = build_strategy(
        cfg, store.tokens, store.offsets, pad_id=store.meta["tokenizer"]["pad_id"]
    )
    steps = strategy.steps_in_epoch(0)
    if steps == 0:
        raise UserError(
            f"{cfg.strategy}: not one full step of {cfg.tokens_per_step} tokens in "
            f"{store.path}; lower batching.tokens_per_step"
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
    dense, attn = model.flops(slots / steps, totals["attn_pairs"] / steps)
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
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Stats for each of `strategies` that can run on this store with `base`'s sizes, and for
    each other one why not (one line: sizes that do not fit it, no piece long enough for
    decomposition's smallest bucket, not one full step). FLOP ratios are relative to
    concat_chunk, computed as the reference whether asked for or not (None if it cannot run)."""
    rows: dict[str, dict[str, Any]] = {}
    not_applicable: dict[str, str] = {}
    for name in dict.fromkeys(("concat_chunk", *strategies)):
        try:
            rows[name] = strategy_stats(store, _config_for(base, name), model)
        except UserError as e:
            not_applicable[name] = str(e).removeprefix(f"{name}: ")
    ref = rows.get("concat_chunk")
    for r in rows.values():
        for key in ("attn_flops", "total_flops"):
            r[f"{key}_ratio"] = r[key] / ref[key] if ref else None
    return (
        [rows[s] for s in strategies if s in rows],
        {s: not_applicable[s] for s in strategies if s in not_applicable},
    )


def json_records(
    strategies: tuple[str, ...], rows: list[dict[str, Any]], not_applicable: dict[str, str]
) -> list[dict[str, Any]]:
    """One record per strategy asked for, in that order: its stats, or {"strategy": name,
    "not_applicable": reason}."""
    by_name = {r["strategy"]: r for r in rows}
    return [
        by_name.get(s) or {"strategy": s, "not_applicable": not_applicable[s]} for s in strategies
    ]


def format_not_applicable(not_applicable: dict[str, str]) -> str:
    return "\n".join(f"{name}: not applicable: {why}" for name, why in not_applicable.items())


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
            f"{_ratio(r['attn_flops_ratio']):>12}{_ratio(r['total_flops_ratio']):>13}"
        )
    return "\n".join(lines)


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}x"


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
