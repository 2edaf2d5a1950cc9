"""Validated configuration: one small pydantic model per component, loaded from YAML.

Unknown keys and bad values are `UserError`s naming the dotted key, e.g.
``configs/x.yaml: batching.max_len: must be a power of two, got 1000``. Dotted overrides
(``batching.max_len=512``) are applied before validation, so they are checked the same way.
Relative paths are resolved against the current working directory, like most training tools.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lengthwise.errors import UserError


class Strict(BaseModel):
    # allow_inf_nan=False: `.inf` or `.nan` in any float field (lr, eps, weight decay, ...) is an
    # error naming the key, not a run whose every step is skipped as non-finite
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class SourceConfig(Strict):
    """Where documents come from. One file = one document for `text_dir`; one item = one
    document for `task` (prompt without loss + completion with loss; see lengthwise.tasks)."""

    kind: Literal["text_dir", "jsonl", "parquet", "hf_disk", "task"]  # where documents come from
    path: Path | None = None  # a folder (text_dir) or a file/folder of files
    glob: str = "**/*.txt"  # text_dir: recursive pattern relative to `path`
    text_field: str = "text"  # jsonl field, parquet column, HF dataset column
    split: str | None = None  # hf_disk: the split of a DatasetDict (None: a plain Dataset)
    max_docs: int | None = Field(default=None, gt=0)  # keep only the first N documents
    # kind: task
    task: str | list[str] | None = None  # a lengthwise.tasks name, or several (interleaved)
    lengths: list[int] = Field(default_factory=lambda: [1, 10])  # [lo, hi] inclusive
    n: int = Field(default=10_000, gt=0)  # items (in all, shared evenly between tasks)
    format: str = "direct"  # direct | reversed | scratchpad | index_hints
    seed: int = 0  # task: the generator seed (task k of a list gets seed + k)
    params: dict[str, Any] = Field(default_factory=dict)  # task parameters, e.g. {k: 2}
    # seen: no item uses a held-out term (operand, list number; lengthwise.tasks.is_heldout), so
    # eval sets with `values: unseen` test values training never showed
    values: Literal["all", "seen", "unseen"] = "all"
    heldout: float = Field(default=0.1, gt=0, lt=1)  # share of terms held out
    # share of documents whose last answer digit is replaced by another digit: an over-fitting
    # probe (Zhang et al. 2017, Arpit et al. 2017): a model learns the rule first, then memorizes
    # the wrong answers, and its accuracy on fresh problems falls
    label_noise: float = Field(default=0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _needs_path(self) -> SourceConfig:
        if self.kind == "task":
            if not self.task:
                raise ValueError("a 'task' source needs 'task' (e.g. addition)")
            if len(self.lengths) != 2 or not 1 <= self.lengths[0] <= self.lengths[1]:
                raise ValueError(f"lengths must be [lo, hi] with 1 <= lo <= hi, got {self.lengths}")
        elif self.path is None:
            raise ValueError(f"a '{self.kind}' source needs a 'path'")
        return self


class TokenizerConfig(Strict):
    """`bpe`: train a byte-level BPE on the `train_split`; `file`: load an existing
    tokenizer.json; `char`: one token per character (synthetic tasks)."""

    kind: Literal["bpe", "char", "file"] = "bpe"  # bpe | char | file (see above)
    vocab_size: int = Field(default=8192, ge=260)  # bpe: target vocabulary, special tokens included
    path: Path | None = None  # file: an existing tokenizer.json
    train_split: str = "train"  # bpe: the split it is trained on
    # bpe: train on the first N documents only
    train_max_docs: int | None = Field(default=None, gt=0)
    alphabet: str | None = None  # char: the characters; None = printable ASCII
    bos: bool = False  # prepend BOS to every document

    @model_validator(mode="after")
    def _file_needs_path(self) -> TokenizerConfig:
        if self.kind == "file" and self.path is None:
            raise ValueError("kind 'file' needs a 'path' to a tokenizer.json")
        return self


class DataConfig(Strict):
    """`lengthwise prepare` writes one token store per split under `out_dir/<split>/`."""

    out_dir: Path  # token stores and tokenizer.json go here
    tokenizer: TokenizerConfig = TokenizerConfig()
    splits: dict[str, SourceConfig]
    encode_batch_docs: int = Field(default=1024, gt=0)  # documents per encode_batch call

    @model_validator(mode="after")
    def _has_train(self) -> DataConfig:
        if not self.splits:
            raise ValueError("at least one split is needed")
        if self.tokenizer.kind in ("bpe",) and self.tokenizer.train_split not in self.splits:
            raise ValueError(f"tokenizer.train_split '{self.tokenizer.train_split}' is not a split")
        return self


CurriculumName = Literal["none", "natural", "grow_p2", "grow_linear", "shrink", "seq_len_warmup"]
StrategyName = Literal["pad", "concat_chunk", "concat_chunk_docmask", "best_fit", "decomposition"]
STRATEGY_NAMES: tuple[str, ...] = StrategyName.__args__  # type: ignore[attr-defined]


class CurriculumConfig(Strict):
    """Which bucket (decomposition) or sequence-length cap (chunking) each step uses.

    `cycles` repeats the grow/shrink pattern within an epoch (the DD paper uses 8).
    `seq_len_warmup` grows the chunk length linearly from `min_len` to `max_len` over
    `warmup_fraction` of the first epoch's steps, rounded down to a multiple of `multiple`.
    """

    name: CurriculumName = "none"  # length schedule over steps (grow_p2: short buckets first)
    cycles: int = Field(default=8, ge=1)  # grow/shrink patterns per epoch
    longest_first: bool = False  # natural/grow: start from the longest bucket
    min_len: int = Field(default=64, ge=8)  # seq_len_warmup: the first chunk length
    # seq_len_warmup: share of epoch 0 spent growing
    warmup_fraction: float = Field(default=0.3, gt=0.0, le=1.0)
    multiple: int = Field(default=8, ge=1)  # seq_len_warmup: chunk lengths are multiples of this


class BatchingConfig(Strict):
    """How documents become fixed-token-count steps. `tokens_per_step` is global (all ranks)."""

    # how documents become rows (README: Batching strategies)
    strategy: StrategyName = "decomposition"
    # tokens per optimizer step, all ranks together
    tokens_per_step: int = Field(default=16384, gt=0)
    max_len: int = Field(default=1024, ge=2)  # longest row; decomposition: the largest bucket
    min_bucket: int = Field(default=32, ge=1)  # decomposition: shortest kept piece
    # documents longer than max_len: split all (repeat) or a random window
    long_doc_rule: Literal["repeat", "random"] = "repeat"
    curriculum: CurriculumConfig = CurriculumConfig()
    seed: int = 0  # shuffling and sampling of batches
    # Stores with task position ids (the `coupled` format, positions.bin): in training, every id
    # of a row is shifted by one random offset in [0, position_offset_max] drawn from
    # (seed, epoch, step, row), the random starting id of position coupling. No effect on
    # other stores, and never in evaluation (ids as stored).
    position_offset_max: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> BatchingConfig:
        if self.tokens_per_step % self.max_len:
            raise ValueError(
                f"tokens_per_step ({self.tokens_per_step}) must be a multiple of "
                f"max_len ({self.max_len})"
            )
        cur = self.curriculum.name
        if self.strategy == "decomposition":
            for key in ("max_len", "min_bucket"):
                if not is_power_of_two(getattr(self, key)):
                    raise ValueError(
                        f"{key} must be a power of two for decomposition, got {getattr(self, key)}"
                    )
            if self.min_bucket > self.max_len:
                raise ValueError("min_bucket must be <= max_len")
            if cur == "seq_len_warmup":
                raise ValueError("seq_len_warmup is for concat_chunk strategies; use grow_p2 etc.")
        elif cur not in ("none", "seq_len_warmup"):
            raise ValueError(f"curriculum '{cur}' needs strategy 'decomposition'")
        elif cur == "seq_len_warmup" and not self.strategy.startswith("concat_chunk"):
            raise ValueError("seq_len_warmup applies to concat_chunk and concat_chunk_docmask")
        return self


PositionName = Literal[
    "learned", "sinusoidal", "rope", "nope", "alibi", "fire", "abacus", "relative_bias"
]
TABLED_POSITIONS = ("learned", "sinusoidal")  # a table of max_position rows: nothing past it


HFAttention = Literal["lengthwise", "sdpa", "eager", "flash_attention_2", "flex_attention"]


class HFModelConfig(Strict):
    """A `transformers` causal LM (model.kind: hf): a fresh one from `config`, or a local
    `save_pretrained` folder at `path`. Never a hub name, never remote code."""

    # a fresh model: `model_type` (llama, qwen2, gpt2, ...) plus that architecture's config keys
    config: dict[str, Any] | None = None
    path: Path | None = None  # a local save_pretrained folder: continued pretraining, fine-tuning
    # lengthwise: per-document SDPA on CPU, FlexAttention on CUDA (model/hf.py); sdpa/eager get
    # a dense document mask; flash_attention_2/flex_attention find documents from position_ids
    attention: HFAttention = "lengthwise"

    @model_validator(mode="after")
    def _one_source(self) -> HFModelConfig:
        if (self.config is None) == (self.path is None):
            raise ValueError("set exactly one of config (a fresh model) and path (a folder)")
        if self.config is not None and not isinstance(self.config.get("model_type"), str):
            raise ValueError("config needs a model_type (e.g. llama, qwen2, gpt2)")
        return self


# the lengthwise GPT's architecture fields: a `model.kind: hf` config sets these in model.hf
GPT_ONLY_FIELDS = (
    "n_layer", "n_head", "d_model", "d_ff", "mlp", "tie_embeddings", "bias", "norm_eps",
    "init_std", "position", "max_position", "rope_base", "random_positions_max",
    "max_distance", "window", "digit_token_ids", "abacus_max_digits", "abacus_offset",
)  # fmt: skip


class ModelConfig(Strict):
    """A decoder-only Transformer (see lengthwise/model/gpt.py), or any `transformers` causal LM
    (kind: hf, see lengthwise/model/hf.py). `vocab_size` None: taken from the tokenizer of the
    data config."""

    kind: Literal["lengthwise", "hf"] = "lengthwise"  # lengthwise: our GPT; hf: model.hf
    hf: HFModelConfig | None = None  # kind hf: the transformers model
    vocab_size: int | None = Field(default=None, gt=0)  # None: from the tokenizer
    n_layer: int = Field(default=4, ge=1)  # Transformer blocks
    n_head: int = Field(default=4, ge=1)  # attention heads per block
    d_model: int = Field(default=256, ge=8)  # residual width
    d_ff: int | None = Field(default=None, gt=0)  # None: 4*d_model (gelu), 8/3*d_model (swiglu)
    mlp: Literal["gelu", "swiglu"] = "gelu"  # gelu MLP or SwiGLU
    tie_embeddings: bool = True  # output head shares the token embedding
    bias: bool = False  # biases in linear layers and norms
    norm_eps: float = Field(default=1e-5, gt=0)  # LayerNorm/RMSNorm epsilon
    # normal init std (residual projections scaled by 1/sqrt(2 n_layer))
    init_std: float = Field(default=0.02, gt=0)
    # dropout after the embeddings (0.1-0.3 regularizes)
    emb_dropout: float = Field(default=0.0, ge=0.0, le=0.5)
    attn_dropout: float = Field(default=0.0, ge=0.0, le=0.5)  # dropout on attention weights
    resid_dropout: float = Field(default=0.0, ge=0.0, le=0.5)  # dropout on each block's output
    position: PositionName = "rope"  # positional encoding (model/positions.py)
    # learned/sinusoidal table size: at least batching.max_len (and random_positions_max)
    max_position: int = Field(default=2048, gt=0)
    rope_base: float = Field(default=10000.0, gt=1.0)  # rope: the frequency base
    # Randomized positions (Ruoss et al. 2023): in training, each row's positions are a sorted
    # random subset of [0, random_positions_max); 0 = off.
    random_positions_max: int = Field(default=0, ge=0)
    # relative_bias: per-head learned bias on position differences clipped to max_distance;
    # window > 0 also masks keys whose position differs by `window` or more.
    max_distance: int = Field(default=128, ge=1)
    # relative_bias: keys with |position_ids[q] - position_ids[k]| >= window masked (0 = off)
    window: int = Field(default=0, ge=0)
    # abacus (McLeish et al. 2024): token ids of the digits 0-9, each digit embedded by its index
    # within its number (1-based); a random offset in [0, abacus_offset] is added in training.
    digit_token_ids: list[int] = Field(default_factory=list)
    # abacus: embedding table size (longest number + offset)
    abacus_max_digits: int = Field(default=128, ge=1)
    abacus_offset: int = Field(default=0, ge=0)  # abacus: largest random offset in training

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.kind == "hf":
            if self.hf is None:
                raise ValueError("kind 'hf' needs model.hf (config: {model_type: ...} or path)")
            # non-default values, not fields set: a dumped config (RUN/config.yaml) has them all
            fields = type(self).model_fields
            gpt_only = [
                f
                for f in GPT_ONLY_FIELDS
                if getattr(self, f) != fields[f].get_default(call_default_factory=True)
            ]
            if gpt_only:
                raise ValueError(
                    f"{gpt_only[0]}: a lengthwise GPT setting; with kind 'hf' the architecture "
                    "is model.hf.config (or the folder's config.json)"
                )
            return self
        if self.hf is not None:
            raise ValueError("model.hf is read only with kind: hf")
        if self.d_model % self.n_head:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
            )
        if self.position == "rope" and (self.d_model // self.n_head) % 2:
            raise ValueError("rope needs an even head dimension")
        if self.position in TABLED_POSITIONS and self.max_position < self.random_positions_max:
            r = self.random_positions_max
            raise ValueError(
                f"{self.position} positions with random_positions_max={r} need "
                f"max_position >= {r}, got {self.max_position}"
            )
        return self


class OptimConfig(Strict):
    """AdamW with parameter groups: no weight decay on norms, biases and embeddings unless
    `decay_embeddings`. `l2` and `l1` add explicit penalties (coefficient x sum of squares or
    absolute values of the decayed weights) to the loss; the seed recommends 0.001-0.01."""

    lr: float = Field(default=1e-3, gt=0)  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas, each in [0, 1)
    eps: float = Field(default=1e-8, gt=0)  # AdamW epsilon
    weight_decay: float = Field(default=0.1, ge=0)  # decoupled weight decay on matrices
    decay_embeddings: bool = False  # also decay the embeddings
    l1: float = Field(default=0.0, ge=0)  # coefficient of the L1 penalty added to the loss
    l2: float = Field(default=0.0, ge=0)  # coefficient of the L2 penalty added to the loss
    grad_clip: float = Field(default=1.0, ge=0)  # 0 = off

    @field_validator("betas")
    @classmethod
    def _betas_below_one(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):  # torch's AdamW raises on the first step
            raise ValueError(f"each beta must be in [0, 1), got {list(betas)}")
        return betas


class ScheduleConfig(Strict):
    """Learning rate by tokens seen (not steps: VSL steps differ in shape, not in tokens)."""

    warmup_tokens: int = Field(default=0, ge=0)  # linear warmup length
    # shape after warmup, down to min_lr_ratio x lr
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)  # final learning rate / lr


class TrainConfig(Strict):
    out_dir: Path = Path("runs/default")  # the run directory
    # training budget, counted in `budget_unit`; the learning-rate schedule, eval.every_tokens and
    # checkpoint_every_tokens count in the same unit
    total_tokens: int = Field(default=1_000_000, gt=0)
    # slots: every input position of every row on every rank (padding included: what is
    # computed); targets: real target tokens only (what the loss sees: no padding, prompt tokens
    # or document-first tokens), the fair unit between strategies that pad and those that don't
    budget_unit: Literal["slots", "targets"] = "slots"
    micro_batch_tokens: int | None = Field(default=None, gt=0)  # None: no accumulation
    seed: int = 0  # model init, dropout, data order
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA
    compile: bool = False  # torch.compile the model
    # abort after this many non-finite losses in a row
    max_nonfinite_steps: int = Field(default=5, ge=1)
    log_every_steps: int = Field(default=10, ge=1)  # train records in metrics.jsonl
    checkpoint_every_tokens: int = Field(default=0, ge=0)  # 0 = only at the end
    keep_last: int = Field(default=2, ge=1)  # periodic checkpoints kept
    # keeps checkpoints/best by this eval metric (e.g. val/loss, add_2x/acc; direction from the
    # name); None: the early-stopping metric when early stopping is on
    best_metric: str | None = None
    progress: bool = True  # progress bar (tokens/s, ETA)
    # trackers fed beside metrics.jsonl (always written): every numeric field as a scalar, and
    # alerts, early stops, the restored best step, skipped steps and the hook as events.
    # wandb and mlflow are extras (pip install 'lengthwise[wandb]' / 'lengthwise[mlflow]');
    # W&B syncs online when logged in, WANDB_MODE=offline keeps it in RUN/wandb
    loggers: list[Literal["tensorboard", "wandb", "mlflow"]] = ["tensorboard"]
    # W&B project and MLflow experiment the run is logged to
    project: str = Field(default="lengthwise", min_length=1)
    run_name: str | None = None  # W&B and MLflow run name; None: the run folder's name
    # None: MLFLOW_TRACKING_URI when set, else sqlite:///RUN/mlflow.db (artifacts in
    # RUN/mlartifacts); e.g. http://host:5000 for a tracking server
    mlflow_tracking_uri: str | None = None
    peak_tflops: float | None = Field(default=None, gt=0)  # per device, for the MFU estimate

    @field_validator("loggers")
    @classmethod
    def _loggers_once(cls, loggers: list[str]) -> list[str]:
        if len(set(loggers)) != len(loggers):
            raise ValueError(f"each logger at most once, got {loggers}")
        return loggers


class EvalSetConfig(Strict):
    """One evaluation set, tagged in-distribution or out-of-distribution. `text`: loss and
    perplexity on a prepared split. `task`: exact-match accuracy (greedy decoding) and parse rate
    on generated items of a lengthwise.tasks task; `fresh` drops items that occur in the
    training split (when that split is a task source); `values: unseen` keeps only items with a
    term the training split held out (train with `values: seen` and the same `heldout`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")  # metric prefix: NAME/loss, NAME/acc
    tag: Literal["id", "ood"] = "id"  # id or ood: ood sets feed the monitor and ood_mean
    kind: Literal["text", "task"] = "text"  # text: loss/perplexity; task: exact-match accuracy
    split: str | None = None  # text
    tokens: int = Field(default=65536, gt=0)  # text: tokens scored per eval
    task: str | None = None  # task
    lengths: list[int] = Field(default_factory=lambda: [1, 10])  # task: [lo, hi] item lengths
    n: int = Field(default=200, gt=0)  # task: items
    format: str = "direct"  # task: a format of the task
    seed: int = 1  # task: the generator seed
    params: dict[str, Any] = Field(default_factory=dict)  # task parameters
    fresh: bool = True  # task: drop items that are in the training split
    # task: unseen = only items with a held-out term
    values: Literal["all", "seen", "unseen"] = "all"
    heldout: float = Field(default=0.1, gt=0, lt=1)  # task: the training source's held-out share
    max_new_tokens: int | None = Field(default=None, gt=0)  # None: from the longest answer
    shots: int = Field(default=0, ge=0)  # task: demonstrations before each item (few-shot)
    shots_seed: int = 0  # task: the demonstrations' seed
    # task: [lo, hi] demonstration lengths (None: the train split's if a task source, else lengths)
    shots_lengths: list[int] | None = None

    @model_validator(mode="after")
    def _check(self) -> EvalSetConfig:
        if self.kind == "text" and not self.split:
            raise ValueError(f"eval set '{self.name}': a text set needs 'split'")
        if self.kind == "task" and not self.task:
            raise ValueError(f"eval set '{self.name}': a task set needs 'task'")
        if self.kind == "task" and (len(self.lengths) != 2 or self.lengths[0] > self.lengths[1]):
            raise ValueError(f"eval set '{self.name}': lengths must be [lo, hi]")
        sl = self.shots_lengths
        if sl is not None and (len(sl) != 2 or not 1 <= sl[0] <= sl[1]):
            raise ValueError(f"eval set '{self.name}': shots_lengths must be [lo, hi], 1 <= lo")
        if self.shots and self.format == "coupled":
            raise ValueError(
                f"eval set '{self.name}': shots need a format other than coupled (its position "
                "ids describe a single problem)"
            )
        return self


class EvalConfig(Strict):
    every_tokens: int = Field(default=0, ge=0)  # 0 = only at the end
    sets: list[EvalSetConfig] = Field(default_factory=list)
    batch_size: int = Field(default=64, gt=0)  # rows per generation batch

    def metric_names(self) -> list[str]:
        """What each eval logs (lengthwise.eval.evaluator): text sets `SET/loss`, `SET/ppl`;
        task sets `SET/acc`, `SET/parse_rate`; `ood_mean/acc` and `ood_mean/loss` over the OOD
        sets' main metrics."""
        names = []
        for s in self.sets:
            names += [f"{s.name}/{m}" for m in _SET_METRICS[s.kind]]
        for kind, key in (("task", "acc"), ("text", "loss")):
            if any(s.tag == "ood" and s.kind == kind for s in self.sets):
                names.append(f"ood_mean/{key}")
        return names


_SET_METRICS = {"text": ("loss", "ppl"), "task": ("acc", "parse_rate")}


class EarlyStoppingConfig(Strict):
    """Lightning EarlyStopping semantics, on an eval metric (default: the mean of the OOD sets'
    main metric, `ood_mean/acc` if there are OOD task sets, else `ood_mean/loss`)."""

    enabled: bool = False  # stop on the metric below
    metric: str | None = None  # None: ood_mean/acc (OOD task sets) or ood_mean/loss
    mode: Literal["min", "max"] | None = None  # None: from the metric's name
    patience: int = Field(default=3, ge=1)  # evals without improvement
    min_delta: float = Field(default=0.0, ge=0)  # smallest change that counts as an improvement
    stop_on_drop: bool = False  # stop at the first OOD alert
    check_finite: bool = True  # stop when the metric is NaN or infinite


class MonitorConfig(Strict):
    """OOD alerts: an OOD metric worse than its best by more than `alert_drop` (relative) logs an
    `alert` event, prints a line and runs `on_alert` (the event as JSON on stdin). Each alert
    says whether the drop is larger than the eval set's own noise (its z-score against the
    standard errors of the value and the best; lengthwise.train.monitor)."""

    alert_drop: float = Field(default=0.05, gt=0)  # relative drop from the best that alerts
    # one-sided false-alarm rate of the noise test
    alert_level: float = Field(default=0.05, gt=0, lt=0.5)  # (0.05: significant when z >= 1.645)
    # alert only on drops beyond the eval noise;
    alert_only_significant: bool = False  # drops of unknown noise, non-finite values still alert
    # no relative-drop alert from a best whose absolute value is below this:
    min_best: float = Field(default=0.0, ge=0)  # 0.053 -> 0.0 is no "100% drop"; 0 = off
    # program run at the first eval of each OOD drop, the alert as JSON on stdin: an argv list
    # (["notify-send", "lengthwise"]) or a string split into words like a shell would, but never
    # run by a shell (no pipes, `;`, redirections or variables). It runs what the config says:
    # the run's log shows it before the first step.
    on_alert: list[str] | str | None = None
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    restore_best: bool = False  # at the end, export the best checkpoint's weights

    @field_validator("on_alert")
    @classmethod
    def _hook_argv(cls, command: list[str] | str | None) -> list[str] | None:
        return None if command is None else hook_argv(command)


def hook_argv(command: str | list[str]) -> list[str]:
    """`monitor.on_alert` as an argv list: a list is taken as is, a string is split like a shell
    would split words (quotes respected) but no shell runs it: no pipes, redirections, `;`,
    variables or globs, so a shared config can run only the one program it names."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv or not all(isinstance(a, str) and a for a in argv):
        raise ValueError(f"expected a program and its arguments, got {command!r}")
    return argv


class DistributedConfig(Strict):
    fsdp: bool = False  # FSDP2 (fully_shard) instead of DDP under torchrun
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on CUDA, else gloo


# keys that are gone, with what replaced them: a config (or an older run's config.yaml) that
# still sets one gets this line, not a bare "unknown key"
_REPLACED_KEYS = {
    ("train", "tensorboard"): "replaced by train.loggers ([] turns TensorBoard off)",
}


class Config(Strict):
    data: DataConfig
    batching: BatchingConfig = BatchingConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    monitor: MonitorConfig = MonitorConfig()
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, tree: Any) -> Any:
        for (section, key), why in _REPLACED_KEYS.items():
            node = tree.get(section) if isinstance(tree, dict) else None
            if isinstance(node, dict) and key in node:
                raise ValueError(f"{section}.{key}: {why}")
        return tree

    @model_validator(mode="after")
    def _check_positions(self) -> Config:
        m, b = self.model, self.batching
        if m.position in TABLED_POSITIONS and m.max_position < b.max_len:
            raise ValueError(
                f"model.max_position ({m.max_position}) must be >= batching.max_len ({b.max_len}) "
                f"for {m.position} positions: the table has no row past max_position"
            )
        return self

    @model_validator(mode="after")
    def _check_eval(self) -> Config:
        names = [s.name for s in self.eval.sets]
        if len(set(names)) != len(names):
            raise ValueError(f"eval.sets: names must be unique, got {names}")
        names = self.eval.metric_names()
        stop = self.monitor.early_stopping
        if (
            stop.enabled
            and stop.metric is None
            and not any(n.startswith("ood_mean/") for n in names)
        ):
            raise ValueError(
                "monitor.early_stopping: no metric (set metric, or declare an eval set with "
                "tag: ood)"
            )
        if self.monitor.restore_best and not (self.train.best_metric or stop.enabled):
            raise ValueError("monitor.restore_best: needs train.best_metric or early stopping")
        for key, metric in (
            ("train.best_metric", self.train.best_metric),
            ("monitor.early_stopping.metric", stop.metric if stop.enabled else None),
        ):
            if metric is not None and metric not in names:
                have = ", ".join(names) if names else "none: eval.sets is empty"
                raise ValueError(
                    f"{key}: '{metric}' is not an eval metric (the eval sets log {have})"
                )
        for s in self.eval.sets:
            if s.kind == "text" and s.split not in self.data.splits:
                raise ValueError(
                    f"eval set '{s.name}': split '{s.split}' is not in data.splits "
                    f"({', '.join(self.data.splits)})"
                )
            train = self.data.splits.get("train")
            held_out = train is not None and train.values == "seen" and train.heldout == s.heldout
            if s.values == "unseen" and train is not None and train.kind == "task" and not held_out:
                raise ValueError(
                    f"eval set '{s.name}': values 'unseen' needs the train split to hold "
                    f"them out (data.splits.train.values: seen, heldout: {s.heldout})"
                )
        return self


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {key}: '{part}' is not a section")
    node[parts[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides; values are parsed as YAML (`8`, `true`, `[1, 2]`), see
    `parse_override_value`."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}': expected key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), parse_override_value(key.strip(), raw))
    return tree


def parse_override_value(key: str, raw: str) -> Any:
    """An override's value read as YAML, as the config file would read it (`8`, `true`,
    `[1, 2]`, `null`). A value that YAML cannot parse is taken as the plain string it is:
    `data.splits.train.glob=**/*.md` (YAML reads a leading `*` as an alias) means the glob
    `**/*.md`, and no other reading exists. A value that begins like a list, a mapping or a
    quoted string (`[`, `{`, `"`, `'`) was meant as one, so there an error names the override
    (`optim.betas=[0.9,`) instead of a string the validator would reject less clearly."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        if raw.lstrip()[:1] in ("[", "{", '"', "'"):
            why = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UserError(f"override {key}={raw}: not valid YAML ({why})") from None
        return raw


def format_validation_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {key + ': ' if key else ''}{msg}{more}"


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML file's top-level mapping; a missing file, bytes that are not UTF-8, bad YAML or a
    non-mapping are one-line UserErrors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} file not found")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})"
        ) from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return tree


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    tree = apply_overrides(read_yaml_mapping(path), overrides or [])
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise UserError(format_validation_error(str(path), e)) from None


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
