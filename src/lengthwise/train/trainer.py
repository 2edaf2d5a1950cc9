"""The training loop: one function per concern, a short loop that calls them.

    lengthwise train CONFIG [key.sub=value ...] [--resume]
    torchrun --nproc_per_node=N -m lengthwise train CONFIG ...   # same command, N processes

Loss normalization: every micro-batch contributes sum(token losses) / (target tokens of the
whole optimizer step, across micro-batches and ranks), so the gradient is that of the mean loss
over the step's predictions whatever the strategy, the accumulation or the world size. DDP and
FSDP2 average gradients over ranks, hence the factor world_size.
"""

from __future__ import annotations

import gc
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lengthwise.batch import Batch
from lengthwise.config import Config
from lengthwise.data.loader import BatchLoader
from lengthwise.data.stats import ModelDims, strategy_stats
from lengthwise.data.store import TokenStore, tokenizer_mismatch
from lengthwise.data.strategies import build_strategy
from lengthwise.data.tokenizer import Tokenizer, load_tokenizer
from lengthwise.errors import UserError
from lengthwise.eval.evaluator import Evaluator
from lengthwise.eval.exported import write_export
from lengthwise.io import remove_leftovers
from lengthwise.model.build import make_model
from lengthwise.rundir import RunDir
from lengthwise.train import checkpoint
from lengthwise.train.checkpoint import Checkpointer
from lengthwise.train.distributed import (
    Dist,
    all_reduce_sum,
    all_reduce_sum_tensor,
    barrier,
    destroy,
    init_distributed,
    sync_gradients,
    wrap_model,
)
from lengthwise.train.evaluation import EvalOutcome, EvalRound
from lengthwise.train.log import RunLog
from lengthwise.train.optim import build_optimizer, lr_at, penalty
from lengthwise.train.trackers import check_loggers, open_trackers


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row: the run cannot recover by skipping."""


@dataclass
class Counters:
    """The run's position, saved in every checkpoint. The budget (`Trainer.budget`) is `tokens`
    or `target_tokens`, by `train.budget_unit`; `next_eval`/`next_checkpoint` are in that unit."""

    step: int = 0
    tokens: int = 0  # global input slots (B x T x ranks, padding included)
    target_tokens: int = 0  # global real target tokens
    nonfinite_in_a_row: int = 0
    skipped_steps: int = 0
    alerts: int = 0
    alerts_significant: int = 0  # alerts whose drop is beyond the eval noise (or non-finite)
    alerts_within_noise: int = 0  # alerts whose drop is within it (unknown noise: neither)
    best: float | None = None
    next_eval: int = 0
    next_checkpoint: int = 0
    seconds: float = 0.0  # the log's clock at the last checkpoint: a resumed run continues it
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(cfg: Config, d: Dist) -> torch.device:
    want = cfg.train.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("train.device: cuda requested but no CUDA device is available")
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def autocast_for(cfg: Config, device: torch.device):
    """bf16 autocast on CUDA (precision auto or bf16); fp32 elsewhere."""
    use_bf16 = cfg.train.precision == "bf16" or (
        cfg.train.precision == "auto" and device.type == "cuda"
    )
    if use_bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def digit_ids(tokenizer_path: Path) -> list[int]:
    tok = load_tokenizer(tokenizer_path)
    ids = [tok.hf.token_to_id(str(d)) for d in range(10)]
    if any(i is None for i in ids):
        raise UserError(f"{tokenizer_path}: abacus positions need the digits 0-9 as single tokens")
    return ids  # type: ignore[return-value]


def build_model(cfg: Config, store: TokenStore, tokenizer: Tokenizer) -> tuple[nn.Module, Config]:
    """The model (our GPT or a transformers causal LM), with the config completed from the data
    (vocab size, digit ids)."""
    updates: dict[str, Any] = {}
    needed = store.meta["tokenizer"]["vocab_size"]
    if cfg.model.vocab_size is None:
        updates["vocab_size"] = needed
    elif cfg.model.vocab_size < needed:
        raise UserError(
            f"model.vocab_size: {cfg.model.vocab_size} is smaller than the tokenizer's "
            f"{needed} tokens ({cfg.data.out_dir / 'tokenizer.json'}); leave it unset to take "
            "the tokenizer's size"
        )
    if cfg.model.position == "abacus" and not cfg.model.digit_token_ids:
        updates["digit_token_ids"] = digit_ids(cfg.data.out_dir / "tokenizer.json")
    if cfg.model.kind == "hf" and cfg.model.hf.path is not None:  # type: ignore[union-attr]
        check_model_tokenizer(cfg.model.hf.path, tokenizer)  # type: ignore[union-attr]
    if updates:
        tree = cfg.model_dump()
        tree["model"].update(updates)
        cfg = Config.model_validate(tree)
    torch.manual_seed(cfg.train.seed)  # identical initialization on every rank
    model = make_model(cfg.model)
    limit = getattr(model, "max_positions", None) if cfg.model.kind == "hf" else None
    if limit is not None and cfg.batching.max_len > limit:
        raise UserError(
            f"batching.max_len: {cfg.batching.max_len} tokens, but the model's learned position "
            f"table has {limit} rows"
        )
    if limit is not None and store.positions is not None and len(store.positions):
        # task position ids (coupled format) plus the random offset of training
        top = int(store.positions.max()) + cfg.batching.position_offset_max + 1
        if top > limit:
            raise UserError(
                f"batching.position_offset_max: the store's task position ids reach {top} with "
                f"the offset, but the model's learned position table has {limit} rows"
            )
    return model, cfg


def check_model_tokenizer(folder: Path, tokenizer: Tokenizer) -> None:
    """A pretrained model reads ids of its own tokenizer: the data's must give every token of
    the folder's tokenizer.json the same id (lengthwise may append <|eos|>, <|pad|>, <|bos|>
    after them; the model's embedding grows by those rows)."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        return  # nothing to compare with: the embedding size check in build_hf_model remains
    theirs = load_tokenizer(path).hf.get_vocab(with_added_tokens=True)
    ours = tokenizer.hf.get_vocab(with_added_tokens=True)
    for token, i in sorted(theirs.items(), key=lambda kv: kv[1]):
        if ours.get(token) != i:
            raise UserError(
                f"data tokenizer: token {token!r} is id {ours.get(token)} in the data and {i} in "
                f"{path}; prepare the data with tokenizer.kind: file, path: {path}"
            )


def split_micro_batches(batch: Batch, micro_batch_tokens: int | None) -> list[Batch]:
    """Fewest row splits so that each micro-batch holds at most `micro_batch_tokens` slots
    (one row at least)."""
    rows, T = batch.input_ids.shape
    if not micro_batch_tokens or rows * T <= micro_batch_tokens:
        return [batch]
    fits = [k for k in range(1, rows + 1) if rows % k == 0 and rows // k * T <= micro_batch_tokens]
    return batch.split_rows(fits[0] if fits else rows)


@dataclass
class StepResult:
    """What one optimizer step did (all ranks together)."""

    loss: float  # mean token loss over the step's targets
    grad_norm: float
    lr: float
    finite: bool  # False: the update was skipped
    seq_len: int  # T of the step's rows
    rows: int
    slots: int  # rows x T: every input position, padding included
    targets: int  # real target tokens (what the loss sees)
    pad_fraction: float
    reg: float  # the L1/L2 penalty added to the loss (0 without one)
    micro_batches: int


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False, quiet: bool = False) -> None:
        """Everything is checked before anything is written: the data, the tokenizer, the
        config against the checkpoint on --resume (a refused run leaves its folder as it was)."""
        check_loggers(cfg.train.loggers)
        self.dist = init_distributed(cfg.distributed.backend, _device_type(cfg))
        self.device = resolve_device(cfg, self.dist)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.run = RunDir(Path(cfg.train.out_dir))
        store = TokenStore(cfg.data.out_dir / "train")
        tokenizer = check_tokenizer(cfg.data.out_dir / "tokenizer.json", store)
        self.model_plain, cfg = build_model(cfg, store, tokenizer)
        self.cfg = cfg
        self.model_plain.to(self.device)
        self.model = wrap_model(self.model_plain, self.dist, cfg.distributed.fsdp, self.device)
        if cfg.train.compile:
            self.model = _compile(self.model, cfg)
        self.groups = self.model_plain.param_groups(
            cfg.optim.weight_decay, cfg.optim.decay_embeddings
        )
        self.optimizer = build_optimizer(self.groups, cfg.optim, self.device)
        self.pad_id = store.meta["tokenizer"]["pad_id"]
        strategy = build_strategy(
            cfg.batching,
            store.tokens,
            store.offsets,
            self.pad_id,
            self.dist.rank,
            self.dist.world_size,
            prompt_lens=store.prompt_lens,
            positions=store.positions,
        )
        self.loader = BatchLoader(strategy)
        self.autocast = autocast_for(cfg, self.device)
        evaluator = None
        if cfg.eval.sets:
            evaluator = Evaluator(
                cfg,
                tokenizer,
                self.device,
                self.dist.rank,
                self.dist.world_size,
                reduce=all_reduce_sum_tensor,
                autocast=self.autocast,
            )
        limit = getattr(self.model_plain, "max_positions", None)
        if evaluator is not None and limit is not None and cfg.model.kind == "hf":
            need = evaluator.positions_needed()
            if need > limit:
                raise UserError(
                    f"eval.sets: an eval needs {need} positions, but the model's learned "
                    f"position table has {limit} rows; shorten the eval sets' lengths"
                )
        self.evaluation = EvalRound(cfg, evaluator, self.dist.is_main)
        self.checkpointer = Checkpointer(
            self.run.checkpoints,
            cfg.train.checkpoint_every_tokens,
            cfg.train.keep_last,
            self.dist.is_main,
        )
        self.counters = Counters(
            next_eval=cfg.eval.every_tokens,
            next_checkpoint=cfg.train.checkpoint_every_tokens,
        )
        self._seq_lens: list[int] = []  # T of each step since the last train record
        self._window_tokens, self._window_start = 0, time.time()  # for tokens/s
        torch.manual_seed(cfg.train.seed + 1 + self.dist.rank)  # dropout etc., per rank
        self.finished = self._start(resume)
        logs = self.dist.is_main and self.finished is None  # only the main rank logs
        self.log = RunLog(
            self.run,
            cfg.train.total_tokens,
            self.budget,
            logs,
            cfg.train.progress and not quiet,
            open_trackers(cfg, self.run, self.counters.tokens) if logs else [],
            start_seconds=self.counters.seconds,
        )
        hook = self.evaluation.describe_hook()
        if hook and self.finished is None:
            self.log.message(hook)
            if self.counters.step == 0:
                self.log.write("hook", 0, 0, on_alert=self.evaluation.hook)

    @property
    def run_dir(self) -> Path:
        return self.run.path

    # ------------------------------------------------------------------ set-up and resume

    def _start(self, resume: bool) -> dict[str, Any] | None:
        """Validate, then load the checkpoint on --resume, then write the run folder's files.
        Returns the summary of a run that had already finished (nothing is written then)."""
        last = checkpoint.latest(self.run.checkpoints)
        if last is not None and not resume:
            raise UserError(
                f"{self.run_dir}: holds checkpoints; pass --resume to continue, or choose "
                "another train.out_dir"
            )
        if last is not None:
            saved = check_resumable(self.run, self.cfg)
            state = checkpoint.load(last, self.model_plain, self.optimizer)
            self.loader.load_state_dict(state["loader"])
            checkpoint.set_rng_state(state["rng"])
            self.counters = Counters(**state["counters"])
            if saved is not None:
                self._move_cadences(saved)
            self.evaluation.load_state_dict(state)
            self._seq_lens = list(state.get("seq_lens", []))
            self.checkpointer.saved_at = self.counters.step
            finished = self._finished_summary()
            if finished is not None:
                return finished
        if self.dist.is_main:
            self.run.path.mkdir(parents=True, exist_ok=True)
            remove_leftovers(self.run.path)  # .export.tmp-*, .summary.json.tmp-* of a kill
            checkpoint.remove_partial(self.run.checkpoints)
            self.run.trim_metrics(self.counters.step)  # 0 on a fresh start: an empty log
            if last is None:
                self.run.summary_path.unlink(missing_ok=True)  # of an attempt that died
            self.run.write_config(self.cfg)
            if last is None or not self.run.data_stats_path.is_file():
                self._write_data_stats()
            shutil.copyfile(self.cfg.data.out_dir / "tokenizer.json", self.run.tokenizer_path)
        barrier()
        return None

    def _move_cadences(self, saved: Config) -> None:
        """A resume that changes eval.every_tokens or train.checkpoint_every_tokens: the next
        one comes the new interval after the last one (not at the mark the old interval set)."""
        c, now = self.counters, self.cfg
        for attr, old, new in (
            ("next_eval", saved.eval.every_tokens, now.eval.every_tokens),
            (
                "next_checkpoint",
                saved.train.checkpoint_every_tokens,
                now.train.checkpoint_every_tokens,
            ),
        ):
            if old != new:
                setattr(c, attr, getattr(c, attr) - old + new)

    def _finished_summary(self) -> dict[str, Any] | None:
        """The summary of a run that ended (completed or stopped early) at the checkpoint just
        loaded, unless a larger total_tokens asks for more training."""
        summary = self.run.summary()
        if not summary or summary.get("steps") != self.counters.step:
            return None
        reason = summary.get("stop_reason")
        if reason == "early_stopping" or (reason == "completed" and self.budget_spent()):
            return summary
        return None

    def _write_data_stats(self) -> None:
        store = TokenStore(self.cfg.data.out_dir / "train")
        dims = ModelDims(*self.model_plain.dims, vocab=store.meta["tokenizer"]["vocab_size"])
        try:
            stats = strategy_stats(store, self.cfg.batching, dims)
        except UserError:
            return  # not one full step: the loader reports it
        self.run.write_data_stats(stats)

    def _state(self) -> dict[str, Any]:
        return {
            "counters": self.counters.__dict__.copy(),
            "loader": self.loader.state_dict(),
            "rng": checkpoint.rng_state(),
            "seq_lens": list(self._seq_lens),  # steps not yet in a train record
            **self.evaluation.state_dict(),
        }

    # ------------------------------------------------------------------ the budget

    @property
    def budget(self) -> int:
        """Tokens spent, in `train.budget_unit`: what the schedule and the cadences run on."""
        c = self.counters
        return c.target_tokens if self.cfg.train.budget_unit == "targets" else c.tokens

    def budget_spent(self) -> bool:
        return self.budget >= self.cfg.train.total_tokens

    # ------------------------------------------------------------------ one optimizer step

    def backward(self, batch: Batch) -> tuple[torch.Tensor, float, int, torch.Tensor | None]:
        """Accumulate the step's gradients: d(mean token loss over the global step)/d(params)
        (+ the L1/L2 penalty). Returns (this rank's loss sum, global target count, number of
        micro-batches, penalty)."""
        cfg, dev = self.cfg, self.device
        n_global = all_reduce_sum(batch.n_target_tokens, dev)
        scale = self.dist.world_size / max(n_global, 1.0)
        micro = split_micro_batches(batch, cfg.train.micro_batch_tokens)
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        reg = None
        for i, mb in enumerate(micro):
            last = i == len(micro) - 1
            mb = mb.to(dev, non_blocking=True)
            with sync_gradients(self.model, last), self.autocast():
                token_loss = self.model(mb.input_ids, mb.position_ids, mb.doc_ids, mb.targets)
                loss = token_loss * scale
                if last:  # once per step; identical on every rank, so averaging keeps it
                    reg = penalty(self.groups, cfg.optim.l1, cfg.optim.l2)
                    if reg is not None:
                        loss = loss + reg
            loss.backward()
            loss_sum += token_loss.detach().double()
        return loss_sum, n_global, len(micro), reg

    def train_step(self, batch: Batch) -> StepResult:
        """One optimizer step; a non-finite loss or gradient skips the update."""
        cfg, world = self.cfg, self.dist.world_size
        lr = lr_at(self.budget, cfg.train.total_tokens, cfg.optim.lr, cfg.schedule)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        loss_sum, n_global, n_micro, reg = self.backward(batch)
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model_plain.parameters(), clip)
        mean_loss = all_reduce_sum_tensor(loss_sum).item() / max(n_global, 1.0)
        finite = math.isfinite(mean_loss) and bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        rows, T = batch.input_ids.shape
        return StepResult(
            loss=mean_loss,
            grad_norm=float(grad_norm),
            lr=lr,
            finite=finite,
            seq_len=T,
            rows=rows * world,
            slots=rows * T * world,
            targets=int(n_global),
            pad_fraction=float((batch.input_ids == self.pad_id).float().mean()),
            reg=float(reg.detach()) if reg is not None else 0.0,
            micro_batches=n_micro,
        )

    def account(self, out: StepResult) -> None:
        """Count a finished step (counters, progress, train record); a run of non-finite steps
        longer than `train.max_nonfinite_steps` raises TrainingDiverged."""
        c, cfg = self.counters, self.cfg
        before = self.budget
        c.step += 1
        c.tokens += out.slots
        c.target_tokens += out.targets
        if out.finite:
            c.nonfinite_in_a_row = 0
        else:
            c.nonfinite_in_a_row += 1
            c.skipped_steps += 1
            self.log.write("nonfinite", c.tokens, c.step, loss=out.loss, grad_norm=out.grad_norm)
            self.log.message(f"step {c.step}: non-finite loss/gradient, step skipped")
            if c.nonfinite_in_a_row >= cfg.train.max_nonfinite_steps:
                raise TrainingDiverged(
                    f"{c.nonfinite_in_a_row} non-finite steps in a row (last at step "
                    f"{c.step}); lower optim.lr or check the data"
                )
        self.log.advance(self.budget - before, loss=out.loss, T=out.seq_len)
        self._seq_lens.append(out.seq_len)
        self._window_tokens += out.slots
        if c.step % cfg.train.log_every_steps == 0:
            self._log_train(out)

    # ------------------------------------------------------------------ the loop

    def fit(self, stop_at_step: int | None = None) -> dict[str, Any]:
        """Train to `train.total_tokens`. `stop_at_step` ends this invocation early (with a
        checkpoint) on the same schedule: time-boxed or preemptible jobs resume from there."""
        if self.finished is not None:
            print(
                f"{self.run_dir}: already finished ({self.finished.get('stop_reason')} at step "
                f"{self.finished.get('steps')}); nothing to train"
            )
            return self.finished
        c = self.counters
        self._window_tokens, self._window_start = 0, time.time()
        last = EvalOutcome()  # the last eval's metrics and stop reason
        while not self.budget_spent():
            out = self.train_step(next(self.loader))
            self.account(out)
            end = self.budget_spent()
            paused = not end and stop_at_step is not None and c.step >= stop_at_step
            new_best = False
            if self.evaluation.due(c, self.budget, end):
                last = self.evaluation.run(self.model_plain, c, self.log)
                new_best = last.new_best
            if (end or last.stop_reason) and self._seq_lens:
                self._log_train(out)  # the last steps' lengths, before the final checkpoint
            stopping = end or paused or last.stop_reason is not None
            if self.checkpointer.due(c, self.budget, force=stopping or new_best):
                self.save_checkpoint(last.metrics, best=new_best)
            if stopping:
                break
        reason = "paused"
        if last.stop_reason:
            reason = "early_stopping"
        elif self.budget_spent():
            reason = "completed"
        restored = None
        if self.cfg.monitor.restore_best and reason != "paused":
            restored = self.checkpointer.restore_best(self.model_plain, self.optimizer)
        if restored is not None:  # an event for every tracker, not only summary.json
            self.log.write(
                "restore_best",
                c.tokens,
                c.step,
                best_step=restored,
                metric=self.evaluation.best_metric,
                best=c.best,
            )
        summary = {
            "stop_reason": reason,
            "stop_detail": last.stop_reason,
            "restored_best_step": restored,
            "steps": c.step,
            "tokens": c.tokens,
            "target_tokens": c.target_tokens,
            "budget_unit": self.cfg.train.budget_unit,
            "skipped_steps": c.skipped_steps,
            "wall_seconds": round(self.log.elapsed(), 2),  # the run's clock, across resumes
            "final": last.metrics,
            "best": c.best,
            "best_metric": self.evaluation.best_metric,
            "alerts": c.alerts,
            "alerts_significant": c.alerts_significant,
            "alerts_within_noise": c.alerts_within_noise,
        }
        self._export(summary)
        self.log.close()
        return summary

    def save_checkpoint(self, metrics: dict[str, float], best: bool = False) -> Path:
        self.counters.seconds = self.log.elapsed()
        return self.checkpointer.save(
            self.counters.step,
            self.model_plain,
            self.optimizer,
            self._state(),
            meta={"tokens": self.counters.tokens, **metrics},
            best=best,
        )

    def _log_train(self, out: StepResult) -> None:
        now = time.time()
        tokens_per_s = self._window_tokens / max(now - self._window_start, 1e-9)
        self._window_tokens, self._window_start = 0, now
        fields: dict[str, Any] = {
            "loss": out.loss,
            "grad_norm": out.grad_norm,
            "lr": out.lr,
            "seq_len": out.seq_len,
            "rows": out.rows,
            "pad_fraction": out.pad_fraction,
            "micro_batches": out.micro_batches,
            "seq_lens": self._seq_lens,  # every step since the last record
        }
        self._seq_lens = []
        if self.cfg.optim.l1 or self.cfg.optim.l2:
            fields["reg"] = out.reg
        # model FLOPs/s over all ranks (6N + causal attention per slot; see GPT.flops_per_token)
        flops = self.model_plain.flops_per_token(out.seq_len) * tokens_per_s
        fields["tflops"] = flops / 1e12
        if self.cfg.train.peak_tflops:
            fields["mfu"] = flops / (self.cfg.train.peak_tflops * 1e12 * self.dist.world_size)
        self.log.write(
            "train",
            self.counters.tokens,
            self.counters.step,
            tokens_per_s=tokens_per_s,
            epoch=self.loader.epoch,
            **fields,
        )

    def _export(self, summary: dict[str, Any]) -> None:
        """RUN/export/ (the final weights, config.json and tokenizer; the Hugging Face folder is
        left to `lengthwise export`) and RUN/summary.json."""
        full = checkpoint.full_model(
            self.model_plain, lambda: make_model(self.cfg.model, pretrained=False)
        )
        if self.dist.is_main:
            source = {"run_dir": str(self.run_dir), "step": self.counters.step}
            source["tokens"] = self.counters.tokens
            hf = self.cfg.model.hf
            if hf is not None and hf.path is not None:
                source["pretrained"] = str(hf.path)
            write_export(full, self.run.tokenizer_path, self.run.export_dir, source, hf=False)
            self.run.write_summary(summary)
        barrier()


def check_tokenizer(path: Path, store: TokenStore) -> Tokenizer:
    """The data folder's tokenizer, which must be the one the store was prepared with: a file
    swapped after `prepare` would train on ids that mean other tokens (and be exported)."""
    if not path.is_file():
        raise UserError(f"{path}: missing (run `lengthwise prepare` on this config)")
    tokenizer = load_tokenizer(path)
    problem = tokenizer_mismatch(store.path, tokenizer)
    if problem:
        raise UserError(
            f"{problem} of {path}; restore it or rerun `lengthwise prepare --overwrite`"
        )
    return tokenizer


# what a checkpoint's weights, data position and budget depend on: a resume must not change them
_FIXED_ON_RESUME = ("data", "batching", "model", "train.budget_unit")


def check_resumable(run: RunDir, cfg: Config) -> Config | None:
    """Refuse (one line, before anything is written) a --resume whose config changes what the
    checkpoint was trained with; other settings (budget, learning rate, eval, monitor, ...) may
    change, and the new config is written once the checkpoint has loaded. Returns the run's
    saved config (None for a folder without config.yaml: the checkpoint load decides)."""
    if not run.config_path.is_file():
        return None
    saved = run.config()
    before, now = saved.model_dump(mode="json"), cfg.model_dump(mode="json")
    changed = []
    for key in _FIXED_ON_RESUME:
        section, _, name = key.partition(".")
        a, b = before[section], now[section]
        if name:
            a, b = a.get(name), b.get(name)
        changed += [f"{k} ({x!r} -> {y!r})" for k, x, y in _differences(a, b, key)]
    if changed:
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        raise UserError(
            f"{run.config_path}: --resume with a different {changed[0]}{more}; the checkpoint "
            f"was trained with the run's {', '.join(_FIXED_ON_RESUME)}: resume without "
            "changing them, or train into another train.out_dir"
        )
    return saved


def _differences(a: Any, b: Any, key: str) -> list[tuple[str, Any, Any]]:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [(key, a, b)]
    found = []
    for k in sorted(set(a) | set(b)):
        found += _differences(a.get(k), b.get(k), f"{key}.{k}")
    return found


def _device_type(cfg: Config) -> str:
    if cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def _compile(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """torch.compile, opt-in. Decomposition and chunking steps come in a handful of static shapes
    (one per bucket or warmup length), so shapes are compiled statically with a cache large
    enough for all of them; `pad` varies T every step and gets dynamic shapes."""
    import torch._dynamo

    n_buckets = cfg.batching.max_len.bit_length() - cfg.batching.min_bucket.bit_length() + 1
    torch._dynamo.config.cache_size_limit = max(
        torch._dynamo.config.cache_size_limit, 4 * n_buckets
    )
    return torch.compile(model, dynamic=cfg.batching.strategy == "pad")


def train(
    cfg: Config, resume: bool = False, quiet: bool = False, stop_at_step: int | None = None
) -> dict[str, Any]:
    trainer = Trainer(cfg, resume=resume, quiet=quiet)
    try:
        summary = trainer.fit(stop_at_step=stop_at_step)
    except BaseException:
        trainer.log.close(failed=True)  # the W&B and MLflow runs end as failed, not running
        raise
    # Only after success (a rank that failed exits and torchrun stops the others; a barrier here
    # would wait forever for it). DDP/FSDP2 hold the process group: free them first, so its
    # threads stop now rather than in interpreter teardown.
    del trainer
    gc.collect()
    destroy()
    return summary
