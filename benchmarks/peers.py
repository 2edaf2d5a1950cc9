"""lengthwise next to Hugging Face `Trainer` recipes: one store, one model size, one budget.

  .venv/bin/python benchmarks/peers.py [--quick] [--json] [--threads 2] [--peers NAME ...]
  (needs `pip install -e '.[bench]'`: transformers and accelerate, which HF Trainer requires)

What is held equal: the token store (the bundled corpus, `lengthwise prepare
configs/demo_text.yaml`), the model size (d_model, layers, heads, vocab, max positions: HF
`GPT2LMHeadModel`, randomly initialized, next to our GPT made GPT-2-like: learned positions,
GELU MLP, biases, tied embeddings), tokens per optimizer step (`tokens_per_step` slots: rows of
`max_len`), the optimizer (torch AdamW with our groups: weight decay on the blocks' matrices
only; same lr, betas, eps, clipping), the learning-rate schedule (`lengthwise.train.optim.lr_at`
on real tokens seen: warmup, then cosine to the budget), CPU, fp32, one process, `--threads`.

Rows:
  hf_padded       HF Trainer, whole documents truncated at max_len, `tokens_per_step / max_len`
                  per step, `DataCollatorForLanguageModeling(mlm=False)`: dynamic padding to the
                  longest in the batch, the recipe most users run
  hf_flatten      the same documents through `DataCollatorWithFlattening`: one padding-free row
                  per step, position ids restarting per document (see the probe note it prints
                  for what the CPU eager/sdpa attention does with it)
  hf_group_texts  run_clm.py's `group_texts`: the corpus concatenated and cut into max_len blocks
                  (over the whole store at once; run_clm does it per map batch of 1,000
                  documents), labels = inputs, `default_data_collator`
  concat_chunk, best_fit, decomposition_grow_p2
                  the lengthwise Trainer (`Trainer.train_step`) with config overrides; Grow-P2
                  gets one cycle per run (`cycles` = epoch steps / budget steps), since a run
                  that holds a fraction of a cycle sees only its short buckets

Llama rows (`--peers llama_...`): the same transformers `LlamaForCausalLM` (our sizes, SwiGLU,
RoPE, tied embeddings) in every row, ratios against llama_hf_padded:
  llama_hf_padded       HF Trainer + `DataCollatorForLanguageModeling`, SDPA with a padding mask
  llama_hf_dd           the stock HF Trainer loop on lengthwise's batches
                        (lengthwise.integrations.transformers: DD + Grow-P2)
  llama_concat_chunk, llama_decomposition_grow_p2
                        `lengthwise train` with `model.kind: hf` (lengthwise.model.hf)
  llama_best_fit, llama_best_fit_sdpa
                        packed rows: lengthwise's per-document attention (the `lengthwise`
                        attention implementation) vs transformers' SDPA with a dense mask

Measurements: every (row, repeat) trains in its own child process (this script with `--_one`),
so peak RSS (`ru_maxrss`, read when training ends) is per run; repeats run interleaved, A B C ..
C B A .., repeat r with seed `--seed + r` (weights, data order, dropout). A run trains until it
has seen `--budget` real tokens (or `--time-limit` training seconds). Real tokens are targets
that carry loss: not padding, not a document's first token in a padded/flattened/packed row
(HF shifts labels inside the model, so an HF row of n real labels trains n - 1). The clock
covers data loading, forward, backward and the optimizer step, and stops while weight
snapshots are written (at `--snapshots` evenly spaced token marks). After training the snapshots
are scored by one function (`val_loss`) on the same held-out documents: the val split in store
order, cut into max_len pieces (`lengthwise.eval.loss.eval_rows`), mean next-token
cross-entropy over real targets, HF models through the HF model, ours through ours.

Columns: tok/s = real tokens per training second; `vs hf_padded` = median of per-repeat ratios;
val@tokens = val loss at the budget (`-` if a run hit the time limit); val@time = val loss of the
last snapshot at or before W, W = the shortest median training time of any row (the common
wall-time budget), with tok@time the real tokens trained by then. Medians over repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lengthwise.batch import IGNORE_INDEX
from lengthwise.config import Config, ModelConfig, load_config
from lengthwise.data.store import TokenStore, prepare
from lengthwise.data.strategies import build_strategy
from lengthwise.data.tokenizer import EOS, PAD
from lengthwise.errors import UserError
from lengthwise.eval.loss import eval_rows
from lengthwise.model.gpt import ff_width
from lengthwise.train.optim import lr_at

HF_PEERS = ("hf_padded", "hf_flatten", "hf_group_texts", "llama_hf_padded", "llama_hf_dd")
OURS = {  # row name -> (batching.strategy, batching.curriculum.name)
    "concat_chunk": ("concat_chunk", "none"),
    "best_fit": ("best_fit", "none"),
    "decomposition_natural": ("decomposition", "natural"),
    "decomposition_grow_p2": ("decomposition", "grow_p2"),
    # the same Llama as llama_hf_padded, trained by `lengthwise train` with model.kind: hf
    "llama_concat_chunk": ("concat_chunk", "none"),
    "llama_decomposition_grow_p2": ("decomposition", "grow_p2"),
    # packed rows of the same Llama: lengthwise's per-document attention vs transformers' SDPA
    # with a dense (B, 1, T, T) document mask
    "llama_best_fit": ("best_fit", "none"),
    "llama_best_fit_sdpa": ("best_fit", "none"),
}
PEERS = (*HF_PEERS[:3], "concat_chunk", "best_fit", "decomposition_grow_p2")
LLAMA_PEERS = (
    "llama_hf_padded",
    "llama_hf_dd",
    "llama_concat_chunk",
    "llama_decomposition_grow_p2",
)
HF_DD = {"llama_hf_dd": ("decomposition", "grow_p2")}  # HF Trainer on lengthwise's batches
REF = "hf_padded"
GPT2_LIKE = ["model.position=learned", "model.mlp=gelu", "model.bias=true"]
FULL = {"budget": 524_288, "repeats": 3, "snapshots": 8, "eval_tokens": 65_536, "time_limit": 600}
PASSED = ("config", "threads", "max_len", "tokens_per_step", "d_model", "n_layer", "n_head")
PASSED += ("budget", "snapshots", "eval_tokens", "time_limit", "val_split")  # parent -> child
PASSED += ("position_loss", "docs")
POSITION_DOCS = 8  # the longest held-out documents scored per position
QUICK = {
    **{"max_len": 256, "tokens_per_step": 2048, "d_model": 64, "n_layer": 2, "n_head": 2},
    **{"budget": 32_768, "repeats": 2, "snapshots": 4, "eval_tokens": 8192, "time_limit": 60},
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------------------ run set-up


def run_config(args: argparse.Namespace, name: str, seed: int, out_dir: Path) -> Config:
    """The config of one run: the base config at the benchmark's size and budget, with the
    strategy of `name` for our rows (HF rows read only data, model, optim and schedule)."""
    base = load_config(args.config)
    data = []
    if args.docs == "web":  # built by the parent (run_parent / time_to_loss) before any child
        data = [f"data.out_dir={web_data_dir(base.data)}"]
        base = load_config(args.config, data)
    warmup = args.budget * base.schedule.warmup_tokens // base.train.total_tokens  # same share
    max_len = args.max_len or base.batching.max_len
    sizes = {
        k: getattr(args, k) or getattr(base.model, k) for k in ("d_model", "n_layer", "n_head")
    }
    overrides = [
        *data,
        f"batching.max_len={max_len}",
        f"batching.tokens_per_step={args.tokens_per_step or base.batching.tokens_per_step}",
        f"batching.min_bucket={min(base.batching.min_bucket, max_len)}",
        f"batching.seed={seed}",
        *(f"model.{k}={v}" for k, v in sizes.items()),
        f"model.max_position={max_len}",
        *args.model_overrides,
        "optim.l1=0",
        "optim.l2=0",
        f"schedule.warmup_tokens={warmup}",
        f"train.total_tokens={args.budget}",
        "train.budget_unit=targets",  # the schedule on real tokens, as for the HF rows
        f"train.seed={seed}",
        f"train.out_dir={out_dir / 'run'}",
        "train.device=cpu",
        "train.precision=fp32",
        "train.checkpoint_every_tokens=0",
        "train.best_metric=null",
        "train.loggers=[]",
        "train.progress=false",
        "eval.sets=[]",
        "eval.every_tokens=0",
        "monitor.early_stopping.enabled=false",
    ]
    if name in OURS or name in HF_DD:
        strategy, curriculum = {**OURS, **HF_DD}[name]
        overrides += [f"batching.strategy={strategy}", f"batching.curriculum.name={curriculum}"]
    if name.startswith("llama_"):  # the GPT's sizes, as a transformers Llama (model.kind: hf)
        sized = load_config(args.config, overrides).model
        store = TokenStore(base.data.out_dir / "train")
        hf = {"config": llama_config(sized, store.meta["tokenizer"])}
        if name in ("llama_hf_padded", "llama_best_fit_sdpa"):
            hf["attention"] = "sdpa"  # HF's recipe as users run it (a padding mask, SDPA)
        llama = {"kind": "hf", "vocab_size": store.meta["tokenizer"]["vocab_size"], "hf": hf}
        overrides.append("model=" + json.dumps(llama))
    cfg = load_config(args.config, overrides)
    if cfg.batching.strategy == "decomposition" and cfg.batching.curriculum.name == "grow_p2":
        cycles = grow_cycles(cfg, args.budget)
        cfg = load_config(args.config, [*overrides, f"batching.curriculum.cycles={cycles}"])
    return cfg


def web_data_dir(data: Any, seed: int = 0) -> Path:
    """A data folder beside `data.out_dir` (prepared first) whose train store holds the same
    tokens re-cut into web-length documents (lengthwise.data.recut; the same cut for every run):
    tokens.bin linked, new doc_offsets.npy and meta.json; the tokenizer and the other splits
    linked unchanged, so evaluation reads the real held-out documents. Built once, atomically;
    reused after."""
    from lengthwise.data.recut import WEB_MU, WEB_SIGMA, recut_offsets
    from lengthwise.io import atomic_dir

    data_dir = data.out_dir
    dest = data_dir.with_name(f"{data_dir.name}_web{seed}")
    if (dest / "train" / "meta.json").is_file():
        return dest
    prepare(data, progress=False)
    train = TokenStore(data_dir / "train")
    offsets = recut_offsets(train.n_tokens, seed)
    with atomic_dir(dest) as tmp:
        for item in data_dir.iterdir():  # stores: folders of linked files; the rest copied
            if item.name.startswith(".") or item.name == "train":
                continue
            if item.is_dir():
                (tmp / item.name).mkdir()
                for f in item.iterdir():
                    (tmp / item.name / f.name).symlink_to(f.resolve())
            else:
                shutil.copy2(item, tmp / item.name)
        (tmp / "train").mkdir()
        (tmp / "train" / "tokens.bin").symlink_to((train.path / "tokens.bin").resolve())
        np.save(tmp / "train" / "doc_offsets.npy", offsets)
        meta = {**train.meta, "n_docs": len(offsets) - 1, "sha256": {}}
        meta["recut"] = {"mu": WEB_MU, "sigma": WEB_SIGMA, "seed": seed, "from": str(data_dir)}
        (tmp / "train" / "meta.json").write_text(json.dumps(meta, indent=2))
    return dest


def grow_cycles(cfg: Config, budget: int) -> int:
    """Curriculum cycles per epoch so that one cycle spans about the run's budget."""
    store = TokenStore(cfg.data.out_dir / "train")
    pad_id = store.meta["tokenizer"]["pad_id"]
    steps = build_strategy(cfg.batching, store.tokens, store.offsets, pad_id).steps_in_epoch(0)
    return max(1, round(steps * cfg.batching.tokens_per_step / budget))


# -------------------------------------------------------------------------- measurement


class Recorder:
    """Real tokens, the training clock and weight snapshots of one run.

    Snapshots go to disk at evenly spaced real-token marks (and at 0 and the end) with the clock
    paused, and are scored after training: evaluation enters neither the time nor the peak RSS.
    """

    def __init__(self, budget: int, snapshots: int, folder: Path, time_limit: float = 0) -> None:
        self.budget, self.folder, self.time_limit = budget, folder, time_limit
        self.marks = [budget * k // snapshots for k in range(1, snapshots)]
        self.steps = self.tokens = self.slots = self.pads = 0
        self.seconds = 0.0
        self.points: list[dict[str, Any]] = []

    def start(self, model: torch.nn.Module) -> None:
        self._save(model)
        self.setup_rss_mb = rss_mb()
        self._t = time.perf_counter()

    def step(self, targets: int, slots: int, pads: int, model: torch.nn.Module) -> bool:
        """Count one optimizer step; True when training should stop (budget or time limit)."""
        self.seconds += time.perf_counter() - self._t
        self.steps += 1
        self.tokens += targets
        self.slots += slots
        self.pads += pads
        over_time = bool(self.time_limit) and self.seconds >= self.time_limit
        done = self.tokens >= self.budget or over_time
        if done:
            self.peak_rss_mb = rss_mb()
        if done or (self.marks and self.tokens >= self.marks[0]):
            self.marks = [m for m in self.marks if m > self.tokens]
            self._save(model)
        self._t = time.perf_counter()
        return done

    def _save(self, model: torch.nn.Module) -> None:
        path = self.folder / f"snapshot{len(self.points)}.pt"
        torch.save(model.state_dict(), path)
        self.points.append({"tokens": self.tokens, "seconds": self.seconds, "path": path})


@torch.no_grad()
def val_loss(
    logits_of: Any,
    tokens: np.ndarray,
    offsets: np.ndarray,
    max_len: int,
    max_tokens: int,
    pad_id: int,
    batch_tokens: int = 4096,
) -> float:
    """Mean next-token cross-entropy (nats) over real targets of the held-out rows of
    `eval_rows` (documents in store order cut into max_len pieces, about `max_tokens` tokens),
    right-padded (causal attention keeps padding out of real positions). `logits_of(ids)` gives
    (B, T, V) logits: one scorer for HF and lengthwise models alike."""
    starts, lens = eval_rows(offsets, max_len, max_tokens)
    order = np.argsort(-lens, kind="stable")
    loss_sum, count, i = 0.0, 0, 0
    while i < len(order):
        T = int(lens[order[i]])
        rows = order[i : i + max(1, batch_tokens // T)]
        i += len(rows)
        ids = np.full((len(rows), T), pad_id, dtype=np.int64)
        tgt = np.full((len(rows), T), IGNORE_INDEX, dtype=np.int64)
        for r, row in enumerate(rows):
            piece = np.asarray(tokens[starts[row] : starts[row] + lens[row]], dtype=np.int64)
            ids[r, : len(piece)] = piece
            tgt[r, : len(piece) - 1] = piece[1:]
        logits = logits_of(torch.from_numpy(ids)).float()
        y = torch.from_numpy(tgt)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
        loss_sum += float(loss)
        count += int((y != IGNORE_INDEX).sum())
    return loss_sum / max(count, 1)


@torch.no_grad()
def position_loss(
    logits_of: Any, tokens: np.ndarray, offsets: np.ndarray, n_tokens: int, n_docs: int
) -> dict[str, Any]:
    """Mean next-token loss at each position 0..n_tokens-2 over the `n_docs` longest held-out
    documents, each read from its start in one forward (positions past the training length are
    the point: does the model use, or break on, context it never trained on?). `docs_at`: how
    many documents reach each position (the longest documents are few: the mean gets noisier
    to the right)."""
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")[:n_docs]
    sums, counts = np.zeros(n_tokens - 1), np.zeros(n_tokens - 1, dtype=np.int64)
    for d in order:
        piece = np.asarray(tokens[offsets[d] : offsets[d] + min(lengths[d], n_tokens)])
        if len(piece) < 2:
            continue
        x = torch.from_numpy(piece.astype(np.int64))
        logits = logits_of(x[None, :-1])[0].float()
        losses = F.cross_entropy(logits, x[1:], reduction="none").numpy()
        sums[: len(losses)] += losses
        counts[: len(losses)] += 1
    seen = counts > 0
    return {"loss": (sums[seen] / counts[seen]).tolist(), "docs_at": counts[seen].tolist()}


# ----------------------------------------------------------------------------------- ours


def train_ours(cfg: Config, rec: Recorder) -> torch.nn.Module:
    """The lengthwise Trainer's optimizer step in a loop that stops on real tokens. The config
    counts the budget in real targets (`train.budget_unit=targets`), so the LR follows the same
    function of real tokens as the HF rows."""
    from lengthwise.train.trainer import Trainer

    trainer = Trainer(cfg, quiet=True)
    rec.start(trainer.model_plain)
    done = False
    while not done:
        out = trainer.train_step(next(trainer.loader))
        trainer.account(out)
        pads = round(out.pad_fraction * out.slots)
        done = rec.step(out.targets, out.slots, pads, trainer.model_plain)
    trainer.log.close()
    return trainer.model_plain


# ------------------------------------------------------------------------------------- HF


def gpt2_config(m: ModelConfig, tok: dict[str, int]) -> Any:
    """HF GPT-2 with our model's sizes, dropout, init and special tokens (`tok`: the store's
    tokenizer meta)."""
    from transformers import GPT2Config

    if (m.position, m.mlp) != ("learned", "gelu"):
        raise UserError(f"HF GPT-2 rows need a GPT-2-like model: {' '.join(GPT2_LIKE)}")
    return GPT2Config(
        vocab_size=tok["vocab_size"],
        n_positions=m.max_position,
        n_embd=m.d_model,
        n_layer=m.n_layer,
        n_head=m.n_head,
        n_inner=ff_width(m),
        activation_function="gelu",  # exact GELU, as F.gelu in ours
        resid_pdrop=m.resid_dropout,
        embd_pdrop=m.emb_dropout,
        attn_pdrop=m.attn_dropout,
        layer_norm_epsilon=m.norm_eps,
        initializer_range=m.init_std,
        tie_word_embeddings=m.tie_embeddings,
        bos_token_id=tok["bos_id"],
        eos_token_id=tok["eos_id"],
        pad_token_id=tok["pad_id"],
        use_cache=False,
    )


def llama_config(m: ModelConfig, tok: dict[str, int]) -> dict[str, Any]:
    """`model.hf.config` of a Llama with our model's sizes (SwiGLU width, RoPE base, tied
    embeddings): the one config every Llama row builds, through HF Trainer or ours."""
    return {
        "model_type": "llama",
        "vocab_size": tok["vocab_size"],
        "hidden_size": m.d_model,
        "intermediate_size": ff_width(m.model_copy(update={"mlp": "swiglu", "d_ff": None})),
        "num_hidden_layers": m.n_layer,
        "num_attention_heads": m.n_head,
        "num_key_value_heads": m.n_head,
        "max_position_embeddings": m.max_position,
        "rope_theta": m.rope_base,
        "rms_norm_eps": m.norm_eps,
        "initializer_range": m.init_std,
        "tie_word_embeddings": True,
        "bos_token_id": tok["bos_id"],
        "eos_token_id": tok["eos_id"],
        "pad_token_id": tok["pad_id"],
        "use_cache": False,
    }


def gpt2_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """`GPT.param_groups` on GPT-2: decay on the blocks' matrices, not on embeddings, norms or
    biases (HF's default grouping would also decay the embeddings)."""
    decayed = {id(p) for p in model.transformer.h.parameters() if p.ndim == 2}
    params = list(model.parameters())  # a tied matrix appears once
    return [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]


class DocRows(torch.utils.data.Dataset):
    """Documents of the store truncated at max_len, read lazily from the memmap (as a
    memory-mapped Arrow dataset would be; nothing is materialized)."""

    def __init__(self, store: TokenStore, max_len: int) -> None:
        self.tokens, self.offsets, self.max_len = store.tokens, store.offsets, max_len

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        a = int(self.offsets[i])
        b = min(int(self.offsets[i + 1]), a + self.max_len)
        return {"input_ids": self.tokens[a:b].astype(np.int64).tolist()}


class Blocks(torch.utils.data.Dataset):
    """run_clm.py's `group_texts`: the token stream cut into max_len blocks, the remainder
    dropped, labels = input_ids (the model shifts them)."""

    def __init__(self, store: TokenStore, max_len: int) -> None:
        self.tokens, self.max_len = store.tokens, max_len

    def __len__(self) -> int:
        return len(self.tokens) // self.max_len

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ids = self.tokens[i * self.max_len : (i + 1) * self.max_len].astype(np.int64).tolist()
        return {"input_ids": ids, "labels": list(ids)}


def hf_tokenizer(path: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=EOS, pad_token=PAD)


def hf_data(name: str, store: TokenStore, max_len: int, tokenizer_path: Path) -> tuple[Any, Any]:
    """(dataset, collator) of an HF row, as its recipe builds them."""
    from transformers import (
        DataCollatorForLanguageModeling,
        DataCollatorWithFlattening,
        default_data_collator,
    )

    if name in ("hf_padded", "llama_hf_padded"):
        collator = DataCollatorForLanguageModeling(hf_tokenizer(tokenizer_path), mlm=False)
        return DocRows(store, max_len), collator
    if name == "hf_flatten":
        return DocRows(store, max_len), DataCollatorWithFlattening()
    return Blocks(store, max_len), default_data_collator


def batch_counts(batch: Any) -> tuple[int, int, int]:
    """(real targets, slots, padding slots) of an HF batch. Labels are shifted inside the
    model, so a row's first label never trains: targets are labels[:, 1:] != -100."""
    labels = batch["labels"]
    mask = batch.get("attention_mask")
    pads = 0 if mask is None else int((mask == 0).sum())
    return int((labels[:, 1:] != IGNORE_INDEX).sum()), labels.numel(), pads


class CountingCollator:
    """A collator that records `batch_counts` of every batch it builds, in order: step s
    trained batch s, even when the data loader builds one batch ahead."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate
        self.counts: list[tuple[int, int, int]] = []
        self.seen = [0]  # real targets before batch s

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.collate(features)
        self.counts.append(batch_counts(batch))
        self.seen.append(self.seen[-1] + self.counts[-1][0])
        return batch


def training_args(cfg: Config, seed: int, rec: Recorder, folder: Path, **more: Any) -> Any:
    """The HF rows' TrainingArguments: CPU, no saving, logging or evaluation, our clipping."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(folder / "hf"),
        max_steps=rec.budget,  # an upper bound: the callback stops at the budget
        max_grad_norm=cfg.optim.grad_clip,
        seed=seed,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        **more,
    )


def train_hf(cfg: Config, name: str, seed: int, rec: Recorder, folder: Path) -> torch.nn.Module:
    """HF Trainer with the row's dataset and collator, our AdamW groups and our schedule on
    real tokens (a LambdaLR reading the collator's counts); a callback feeds `rec` and stops
    at the budget. The data order is the Trainer's own seeded shuffle."""
    from transformers import GPT2LMHeadModel, Trainer, TrainerCallback, set_seed
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    store = TokenStore(cfg.data.out_dir / "train")
    max_len, rows = cfg.batching.max_len, cfg.batching.tokens_per_step // cfg.batching.max_len
    dataset, collate = hf_data(name, store, max_len, cfg.data.out_dir / "tokenizer.json")
    collate = CountingCollator(collate)
    set_seed(seed)
    o = cfg.optim
    if cfg.model.kind == "hf":  # a Llama row: the model `lengthwise train` builds, unwrapped
        from lengthwise.model.build import make_model

        wrapped = make_model(cfg.model)
        model, groups = wrapped.hf, wrapped.param_groups(o.weight_decay, o.decay_embeddings)
    else:
        model = GPT2LMHeadModel(gpt2_config(cfg.model, store.meta["tokenizer"]))
        groups = gpt2_param_groups(model, o.weight_decay)
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_at(collate.seen[s], rec.budget, 1.0, cfg.schedule)
    )

    class Feed(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            rec.start(model)

        def on_step_end(self, args, state, control, **kw):
            if rec.step(*collate.counts[state.global_step - 1], model):
                control.should_training_stop = True

    trainer = Trainer(
        model=model,
        args=training_args(cfg, seed, rec, folder, per_device_train_batch_size=rows),
        train_dataset=dataset,
        data_collator=collate,
        optimizers=(opt, schedule),
        callbacks=[Feed()],
    )
    trainer.train()
    return model


def train_hf_dd(cfg: Config, seed: int, rec: Recorder, folder: Path) -> torch.nn.Module:
    """The stock HF Trainer loop on lengthwise's batches (lengthwise.integrations.transformers:
    LengthwiseTrainer + lengthwise_dataset, DD + Grow-P2), the Llama `lengthwise train` builds,
    our AdamW groups and our schedule on real tokens. No row evaluates while it trains (the
    snapshots are scored afterwards), so GeneralizationCallback has nothing to add here."""
    from transformers import TrainerCallback, set_seed
    from transformers import logging as hf_logging

    from lengthwise.integrations.transformers import LengthwiseTrainer, lengthwise_dataset
    from lengthwise.model.build import make_model

    hf_logging.set_verbosity_error()
    set_seed(seed)
    o = cfg.optim
    wrapped = make_model(cfg.model)
    model = wrapped.hf
    dataset = lengthwise_dataset(
        cfg.data.out_dir / "train", cfg.batching, model.config._attn_implementation, 0, 1
    )
    opt = torch.optim.AdamW(
        wrapped.param_groups(o.weight_decay, o.decay_embeddings), lr=o.lr, betas=o.betas, eps=o.eps
    )
    # the dataset is read lazily: when step s's lr is set, it has produced exactly s steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_at(dataset.target_tokens, rec.budget, 1.0, cfg.schedule)
    )
    last = {"targets": 0, "slots": 0}

    class Feed(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            rec.start(model)

        def on_step_end(self, args, state, control, **kw):
            targets = dataset.target_tokens - last["targets"]
            slots = dataset.tokens - last["slots"]
            last.update(targets=dataset.target_tokens, slots=dataset.tokens)
            if rec.step(targets, slots, 0, model):
                control.should_training_stop = True

    trainer = LengthwiseTrainer(
        model=model,
        args=training_args(cfg, seed, rec, folder),
        train_dataset=dataset,
        optimizers=(opt, schedule),
        callbacks=[Feed()],
    )
    trainer.train()
    return model


def flatten_probe() -> dict[str, Any]:
    """What HF GPT-2's default attention does with a `DataCollatorWithFlattening` row: the
    largest logit difference between the second of two packed documents and the same document
    alone, in training (use_cache=False, what Trainer sets) and with use_cache=True."""
    import transformers
    from transformers import DataCollatorWithFlattening, GPT2Config, GPT2LMHeadModel
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2, use_cache=False)
    model = GPT2LMHeadModel(cfg).eval()
    a, b = torch.randint(3, 64, (7,)), torch.randint(3, 64, (5,))
    row = DataCollatorWithFlattening()([{"input_ids": a.tolist()}, {"input_ids": b.tolist()}])
    diff = {}
    with torch.no_grad():
        alone = model(input_ids=b[None]).logits[0]
        for use_cache in (False, True):
            packed = model(row["input_ids"], position_ids=row["position_ids"], use_cache=use_cache)
            diff[use_cache] = float((packed.logits[0, len(a) :] - alone).abs().max())
    return {
        "transformers": transformers.__version__,
        "attn": model.config._attn_implementation,
        "position_ids": row["position_ids"][0].tolist(),
        "diff_training": diff[False],
        "diff_use_cache": diff[True],
        "masked_in_training": diff[False] < 1e-4,
    }


def flatten_note(p: dict[str, Any]) -> str:
    masked = p["masked_in_training"]
    said = "ARE masked from each other" if masked else "are NOT masked from each other"
    return (
        f"hf_flatten: transformers {p['transformers']}, attention '{p['attn']}' on CPU: the "
        f"collator gives one row with position ids restarting per document "
        f"({p['position_ids']}) and no attention mask; in training (use_cache=False) documents "
        f"{said} (max |logit diff| of a packed document vs alone {p['diff_training']:.1e}; "
        f"with use_cache=True {p['diff_use_cache']:.1e}). Either way the attention kernel "
        f"spans the whole packed row, ~(tokens per step)^2 / 2 pairs, not the sum of squared "
        f"document lengths that a varlen kernel (flash_attention_2, CUDA) computes."
    )


# ---------------------------------------------------------------------------------- child


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """Train one (row, seed) to the budget, then score its snapshots."""
    name, seed = args._one, args.seed
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cfg = run_config(args, name, seed, folder)
        rec = Recorder(args.budget, args.snapshots, folder, args.time_limit)
        if name in HF_DD:
            model = train_hf_dd(cfg, seed, rec, folder)
            logits_of = lambda x: model(input_ids=x, use_cache=False).logits
        elif name in HF_PEERS:
            model = train_hf(cfg, name, seed, rec, folder)
            logits_of = lambda x: model(input_ids=x, use_cache=False).logits
        else:
            model = train_ours(cfg, rec)
            logits_of = model
        val = TokenStore(cfg.data.out_dir / args.val_split)
        model.eval()
        for p in rec.points:
            model.load_state_dict(torch.load(p.pop("path")))
            p["val_loss"] = val_loss(
                logits_of,
                val.tokens,
                val.offsets,
                cfg.batching.max_len,
                args.eval_tokens,
                val.meta["tokenizer"]["pad_id"],
            )
        positions = None
        if args.position_loss:  # the final weights: the last snapshot loaded
            n = round(args.position_loss * cfg.batching.max_len) + 1
            positions = position_loss(logits_of, val.tokens, val.offsets, n, POSITION_DOCS)
            positions["max_len"] = cfg.batching.max_len
    return {
        "name": name,
        "seed": seed,
        "params": sum(p.numel() for p in model.parameters()),
        "steps": rec.steps,
        "real_tokens": rec.tokens,
        "reached_budget": rec.tokens >= args.budget,
        "pad_fraction": rec.pads / max(rec.slots, 1),
        "train_seconds": rec.seconds,
        "real_tokens_per_s": rec.tokens / rec.seconds,
        "peak_rss_mb": rec.peak_rss_mb,
        "setup_rss_mb": rec.setup_rss_mb,
        "curve": rec.points,
        "position_loss": positions,
    }


# --------------------------------------------------------------------------------- parent


def run_options(ap: argparse.ArgumentParser) -> None:
    """The options a child run needs (time_to_loss.py passes them through as well)."""
    ap.add_argument("--config", default="configs/demo_text.yaml")
    ap.add_argument("--quick", action="store_true", help="tiny model and budget (< 5 min)")
    ap.add_argument("--json", action="store_true", help="print only a JSON list of rows")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per run")
    ap.add_argument("--max-len", type=int, help="default: the config's")
    ap.add_argument("--tokens-per-step", type=int, help="default: the config's")
    ap.add_argument("--d-model", type=int)
    ap.add_argument("--n-layer", type=int)
    ap.add_argument("--n-head", type=int)
    ap.add_argument("--budget", type=int, help="real tokens per run")
    ap.add_argument("--repeats", type=int, help="runs per row (seeds seed, seed+1, ...)")
    ap.add_argument("--snapshots", type=int, help="weight snapshots per run")
    ap.add_argument("--eval-tokens", type=int, help="held-out tokens scored per snapshot")
    ap.add_argument("--time-limit", type=float, help="training seconds per run at most (0: none)")
    ap.add_argument("--val-split", default="val")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--docs",
        choices=("store", "web"),
        default="store",
        help="web: the training tokens re-cut into web-length documents (lengthwise.data.recut)",
    )
    ap.add_argument(
        "--position-loss",
        type=float,
        default=0.0,
        metavar="M",
        help="score the final weights per position out to M x max_len (0: off)",
    )
    ap.add_argument("--model-overrides", nargs="*", default=[], help=argparse.SUPPRESS)


def fill_defaults(args: argparse.Namespace, full: dict[str, Any], quick: dict[str, Any]) -> None:
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def child_cmd(args: argparse.Namespace, name: str, seed: int, overrides: list[str]) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_one", name, "--seed", str(seed)]
    for key in PASSED:
        value = getattr(args, key)
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    return [*cmd, "--model-overrides", *overrides]


def run_child(
    args: argparse.Namespace, name: str, seed: int, model_overrides: list[str]
) -> dict[str, Any]:
    """One run in a fresh process; its JSON line."""
    cmd = child_cmd(args, name, seed, model_overrides)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        log(proc.stderr)
        raise RuntimeError(f"{shlex.join(cmd)} exited with status {proc.returncode}")
    return json.loads(lines[-1])


def interleaved(args: argparse.Namespace, names: list[str], overrides: list[str]):
    """{name: [result per repeat]}: repeat r runs every name with seed + r, reversed every
    other repeat (A B C, C B A) so that a drift of the machine favours no one."""
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            m = run_child(args, name, args.seed + r, overrides)
            runs[name].append(m)
            log(f"repeat {r + 1}/{args.repeats} {name}: {m['real_tokens_per_s']:,.0f} tok/s, "
                f"val {m['curve'][-1]['val_loss']:.3f}, {m['peak_rss_mb']:,.0f} MiB")  # fmt: skip
    return runs


def at_time(curve: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The last snapshot written at or before `seconds` of training."""
    return [p for p in curve if p["seconds"] <= seconds][-1]


def reference(runs: dict[str, list[dict[str, Any]]], name: str) -> str | None:
    """hf_padded, or llama_hf_padded for the Llama rows when it ran (same model, HF's recipe)."""
    if name.startswith("llama_") and "llama_hf_padded" in runs:
        return "llama_hf_padded"
    return REF if REF in runs else None


def paired_ratio(runs: dict[str, list[dict[str, Any]]], name: str, key: str) -> float | None:
    ref = reference(runs, name)
    if ref is None:
        return None
    pairs = zip(runs[name], runs[ref], strict=True)
    return statistics.median(a[key] / b[key] for a, b in pairs)


def summarize(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per name: medians over repeats, ratios to hf_padded paired per repeat, and
    val loss at equal real tokens and at the common wall-time budget."""
    budget_s = min(statistics.median(m["train_seconds"] for m in ms) for ms in runs.values())
    rows = []
    for name, ms in runs.items():
        tps = [m["real_tokens_per_s"] for m in ms]
        timed = [at_time(m["curve"], budget_s) for m in ms]
        full = all(m["reached_budget"] for m in ms)
        rows.append(
            {
                "name": name,
                "params": ms[0]["params"],
                "steps": statistics.median(m["steps"] for m in ms),
                "real_tokens": statistics.median(m["real_tokens"] for m in ms),
                "real_tokens_per_s": statistics.median(tps),
                "ratio_tokens_per_s": paired_ratio(runs, name, "real_tokens_per_s"),
                "spread": (max(tps) - min(tps)) / statistics.median(tps),
                "peak_rss_mb": statistics.median(m["peak_rss_mb"] for m in ms),
                "setup_rss_mb": statistics.median(m["setup_rss_mb"] for m in ms),
                "ratio_peak_rss": paired_ratio(runs, name, "peak_rss_mb"),
                "pad_fraction": statistics.median(m["pad_fraction"] for m in ms),
                "train_seconds": statistics.median(m["train_seconds"] for m in ms),
                "val_loss_equal_tokens": (
                    statistics.median(m["curve"][-1]["val_loss"] for m in ms) if full else None
                ),
                "equal_time_s": budget_s,
                "val_loss_equal_time": statistics.median(p["val_loss"] for p in timed),
                "tokens_equal_time": statistics.median(p["tokens"] for p in timed),
                "seeds": [m["seed"] for m in ms],
                "repeats_real_tokens_per_s": tps,
            }
        )
    return rows


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'name':<24}{'params':>10}{'steps':>7}{'tok/s':>9}{'vs hf_padded':>14}{'spread':>8}"
        f"{'peak RSS MiB':>14}{'vs hf_padded':>14}{'setup MiB':>11}{'pad %':>7}{'val@tokens':>12}"
        f"{'val@time':>10}{'tok@time':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:<24}{r['params']:>10,}{r['steps']:>7.0f}{r['real_tokens_per_s']:>9,.0f}"
            f"{fmt(r['ratio_tokens_per_s'], '.2f', 'x'):>14}{100 * r['spread']:>7.1f}%"
            f"{r['peak_rss_mb']:>14,.0f}{fmt(r['ratio_peak_rss'], '.2f', 'x'):>14}"
            f"{r['setup_rss_mb']:>11,.0f}"
            f"{100 * r['pad_fraction']:>7.1f}{fmt(r['val_loss_equal_tokens'], '.3f'):>12}"
            f"{r['val_loss_equal_time']:>10.3f}{r['tokens_equal_time']:>10,.0f}"
        )
    return "\n".join(lines)


def command_line() -> str:
    exe = os.path.relpath(sys.executable)
    return shlex.join([sys.executable if exe.startswith("..") else exe, *sys.argv])


def hf_version() -> str:
    try:
        return f"transformers {version('transformers')}, accelerate {version('accelerate')}; "
    except PackageNotFoundError:
        return ""


def describe(args: argparse.Namespace, cfg: Config, wall: float) -> list[str]:
    """The header lines: command, machine, model and budget."""
    rows = cfg.batching.tokens_per_step // cfg.batching.max_len
    m = cfg.model
    return [
        f"command: {command_line()}",
        f"machine: cpu, {args.threads} thread(s) per run; torch {torch.__version__}; "
        f"{hf_version()}fp32; one process per run; wall {wall:.0f} s",
        f"model: d_model {m.d_model}, {m.n_layer} layers, {m.n_head} heads, max positions "
        f"{m.max_position}; "
        + (
            "every row the same transformers LlamaForCausalLM (SwiGLU, RoPE, tied embeddings)"
            if all(n.startswith("llama_") for n in args.peers)
            else f"ours GPT-2-like ({', '.join(GPT2_LIKE)}), HF GPT2LMHeadModel"
            + (
                ", llama_* rows a transformers LlamaForCausalLM"
                if any(n.startswith("llama_") for n in args.peers)
                else ""
            )
        ),
        f"data: {cfg.data.out_dir / 'train'}; {cfg.batching.tokens_per_step:,} tokens/step "
        f"({rows} rows of {cfg.batching.max_len}); budget {args.budget:,} real tokens per run; "
        f"val: ~{args.eval_tokens:,} tokens of '{args.val_split}'; lr {cfg.optim.lr:g}, warmup "
        f"{cfg.schedule.warmup_tokens:,} tokens, {cfg.schedule.decay}",
        f"{args.repeats} interleaved repeats (seeds {args.seed}..{args.seed + args.repeats - 1}); "
        "medians. tok/s = real (non-pad) target tokens per training second.",
    ]


def run_parent(args: argparse.Namespace) -> int:
    wall = time.perf_counter()
    cfg = run_config(args, "concat_chunk", args.seed, Path(tempfile.gettempdir()))
    prepare(cfg.data, progress=False)  # once here, so children never race to build the store
    runs = interleaved(args, args.peers, GPT2_LIKE)
    rows = summarize(runs)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for line in describe(args, cfg, time.perf_counter() - wall):
        print(line)
    print(format_table(rows))
    print(
        f"val@tokens: at the budget; val@time: last snapshot at or before "
        f"W = {rows[0]['equal_time_s']:.1f} s of training (the fastest row's median), "
        f"{args.snapshots} snapshots per run"
    )
    if "llama_hf_padded" in args.peers and any(
        n.startswith("llama_") and n != "llama_hf_padded" for n in args.peers
    ):
        print("llama_* rows: the 'vs hf_padded' columns are against llama_hf_padded")
    if "hf_flatten" in args.peers:
        print(flatten_note(flatten_probe()))
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run_options(ap)
    ap.add_argument("--peers", nargs="+", choices=(*HF_PEERS, *OURS), default=list(PEERS))
    ap.add_argument("--_one", choices=(*HF_PEERS, *OURS), help=argparse.SUPPRESS)
    return ap


def main() -> int:
    args = parser().parse_args()
    fill_defaults(args, FULL, QUICK)
    try:
        if args._one:
            print(json.dumps(run_one(args)), flush=True)
            return 0
        return run_parent(args)
    except UserError as e:
        print(f"peers: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a child failed; its stderr is above
        print(f"peers: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
