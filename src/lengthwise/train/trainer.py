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
import json
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lengthwise.batch import Batch
from lengthwise.config import Config, dump_config
from lengthwise.data.loader import BatchLoader
from lengthwise.data.store import TokenStore
from lengthwise.data.strategies import build_strategy
from lengthwise.data.tokenizer import load_tokenizer
from lengthwise.errors import UserError
from lengthwise.eval.evaluator import Evaluator
from lengthwise.io import atomic_write_text, copy_dir
from lengthwise.model.gpt import GPT
from lengthwise.train import checkpoint
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
from lengthwise.train.log import RunLog
from lengthwise.train.monitor import EarlyStopping, OODMonitor, direction, run_hook
from lengthwise.train.optim import build_optimizer, lr_at, penalty


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row: the run cannot recover by skipping."""


@dataclass
class Counters:
    step: int = 0
    tokens: int = 0  # global input slots (B x T x ranks), what the schedule runs on
    target_tokens: int = 0
    nonfinite_in_a_row: int = 0
    skipped_steps: int = 0
    alerts: int = 0
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


def build_model(cfg: Config, store: TokenStore) -> tuple[GPT, Config]:
    """The model, with the config completed from the data (vocab size, digit ids)."""
    updates: dict[str, Any] = {}
    if cfg.model.vocab_size is None:
        updates["vocab_size"] = store.meta["tokenizer"]["vocab_size"]
    if cfg.model.position == "abacus" and not cfg.model.digit_token_ids:
        updates["digit_token_ids"] = digit_ids(cfg.data.out_dir / "tokenizer.json")
    if updates:
        tree = cfg.model_dump()
        tree["model"].update(updates)
        cfg = Config.model_validate(tree)
    torch.manual_seed(cfg.train.seed)  # identical initialization on every rank
    return GPT(cfg.model), cfg


def split_micro_batches(batch: Batch, micro_batch_tokens: int | None) -> list[Batch]:
    """Fewest row splits so that each micro-batch holds at most `micro_batch_tokens` slots
    (one row at least)."""
    rows, T = batch.input_ids.shape
    if not micro_batch_tokens or rows * T <= micro_batch_tokens:
        return [batch]
    fits = [k for k in range(1, rows + 1) if rows % k == 0 and rows // k * T <= micro_batch_tokens]
    return batch.split_rows(fits[0] if fits else rows)


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False, quiet: bool = False) -> None:
        self.dist = init_distributed(cfg.distributed.backend, _device_type(cfg))
        self.device = resolve_device(cfg, self.dist)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.run_dir = Path(cfg.train.out_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        store = TokenStore(cfg.data.out_dir / "train")
        self.model_plain, cfg = build_model(cfg, store)
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
        self._build_evaluation(cfg)
        self.counters = Counters(
            next_eval=cfg.eval.every_tokens,
            next_checkpoint=cfg.train.checkpoint_every_tokens,
        )
        torch.manual_seed(cfg.train.seed + 1 + self.dist.rank)  # dropout etc., per rank
        self._prepare_run_dir(resume)
        self.log = RunLog(
            self.run_dir,
            cfg.train.total_tokens,
            self.counters.tokens,
            self.dist.is_main,
            cfg.train.progress and not quiet,
            cfg.train.tensorboard,
            start_seconds=self.counters.seconds,
        )

    # ------------------------------------------------------------------ set-up and resume

    def _build_evaluation(self, cfg: Config) -> None:
        """Eval sets, the OOD monitor, early stopping and the metric that picks `best`."""
        self.evaluator = None
        if cfg.eval.sets:
            self.evaluator = Evaluator(
                cfg,
                load_tokenizer(cfg.data.out_dir / "tokenizer.json"),
                self.device,
                self.dist.rank,
                self.dist.world_size,
                reduce=all_reduce_sum_tensor,
                autocast=self.autocast,
            )
        ood = self.evaluator.ood_metrics if self.evaluator else []
        self.monitor = OODMonitor(ood, alert_drop=cfg.monitor.alert_drop)
        es = cfg.monitor.early_stopping
        self.stopper = None
        if es.enabled:
            metric = es.metric or (self.evaluator.default_stop_metric if self.evaluator else None)
            if metric is None:
                raise UserError(
                    "monitor.early_stopping: no metric (set metric, or declare an eval set "
                    "with tag: ood)"
                )
            self.stopper = EarlyStopping(
                metric,
                mode=es.mode,
                patience=es.patience,
                min_delta=es.min_delta,
                stop_on_drop=es.stop_on_drop,
                check_finite=es.check_finite,
            )
        self.best_metric = cfg.train.best_metric or (self.stopper.metric if self.stopper else None)
        if cfg.monitor.restore_best and self.best_metric is None:
            raise UserError("monitor.restore_best: needs train.best_metric or early stopping")

    def _prepare_run_dir(self, resume: bool) -> None:
        last = checkpoint.latest(self.ckpt_dir)
        if last is not None and not resume:
            raise UserError(
                f"{self.run_dir}: holds checkpoints; pass --resume to continue, or choose "
                "another train.out_dir"
            )
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", dump_config(self.cfg))
            if not (self.run_dir / "data_stats.json").is_file():  # for reports: one epoch's
                self._write_data_stats()  # padding, dropped tokens, FLOPs, bucket histogram
            shutil.copyfile(
                self.cfg.data.out_dir / "tokenizer.json", self.run_dir / "tokenizer.json"
            )
        barrier()
        if resume and last is not None:
            state = checkpoint.load(last, self.model_plain, self.optimizer)
            self.loader.load_state_dict(state["loader"])
            checkpoint.set_rng_state(state["rng"])
            self.counters = Counters(**state["counters"])
            self.monitor.load_state_dict(state["monitor"])
            if self.stopper is not None and state.get("stopper"):
                self.stopper.load_state_dict(state["stopper"])

    def _write_data_stats(self) -> None:
        from lengthwise.data.stats import ModelDims, strategy_stats

        store = TokenStore(self.cfg.data.out_dir / "train")
        dims = ModelDims(self.cfg.model.n_layer, self.cfg.model.d_model)
        try:
            stats = strategy_stats(store, self.cfg.batching, dims)
        except UserError:
            return  # not one full step: the loader reports it
        atomic_write_text(self.run_dir / "data_stats.json", json.dumps(stats, indent=2))

    def _state(self) -> dict[str, Any]:
        return {
            "counters": self.counters.__dict__.copy(),
            "loader": self.loader.state_dict(),
            "rng": checkpoint.rng_state(),
            "monitor": self.monitor.state_dict(),
            "stopper": self.stopper.state_dict() if self.stopper else None,
        }

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

    def train_step(self, batch: Batch) -> dict[str, Any]:
        """One optimizer step; a non-finite loss or gradient skips the update."""
        cfg, world = self.cfg, self.dist.world_size
        lr = lr_at(self.counters.tokens, cfg.train.total_tokens, cfg.optim.lr, cfg.schedule)
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
        return {
            "loss": mean_loss,
            "grad_norm": float(grad_norm),
            "lr": lr,
            "finite": finite,
            "seq_len": T,
            "rows": rows * world,
            "slots": rows * T * world,
            "targets": int(n_global),
            "pad_fraction": float((batch.input_ids == self.pad_id).float().mean()),
            "reg": float(reg.detach()) if reg is not None else 0.0,
            "micro_batches": n_micro,
        }

    # ------------------------------------------------------------------ eval and checkpoints

    def evaluate(self) -> dict[str, float]:
        # the plain module: FSDP2 shards it in place; DDP's forward hooks are not needed
        return self.evaluator.run(self.model_plain) if self.evaluator else {}

    def watch(self, metrics: dict[str, float]) -> str | None:
        """OOD alerts (log, console, hook) and the early-stopping decision: a stop reason or
        None."""
        c = self.counters
        alerts = self.monitor.update(metrics, c.step, c.tokens)
        c.alerts += len(alerts)
        for a in alerts:
            event = a.to_dict()
            self.log.write("alert", c.tokens, **{k: v for k, v in event.items() if k != "tokens"})
            self.log.message(
                f"ALERT step {c.step}: {a.metric} = {a.value:.4g}, {a.drop:.1%} worse than its "
                f"best {a.best:.4g} (step {a.best_step})"
            )
            if self.cfg.monitor.on_alert and self.dist.is_main and a.first:  # once per drop
                problem = run_hook(self.cfg.monitor.on_alert, event)
                if problem:
                    self.log.message(f"monitor.on_alert failed: {problem}")
        if self.stopper is None:
            return None
        metric = self.stopper.metric
        if metric not in metrics:
            raise UserError(
                f"monitor.early_stopping.metric: '{metric}' is not an eval metric "
                f"({', '.join(metrics)})"
            )
        decision = self.stopper.update(metrics[metric], c.step, alert=bool(alerts))
        if decision.stop:
            self.log.write("early_stop", c.tokens, step=c.step, reason=decision.reason)
            self.log.message(f"early stop at step {c.step}: {decision.reason}")
            return decision.reason
        return None

    def save_checkpoint(self, metrics: dict[str, float] | None = None) -> Path:
        self.counters.seconds = self.log.elapsed()
        path = checkpoint.save(
            self.ckpt_dir,
            self.counters.step,
            self.model_plain,
            self.optimizer,
            self._state(),
            keep_last=self.cfg.train.keep_last,
            meta={"tokens": self.counters.tokens, **(metrics or {})},
        )
        self._saved_at = self.counters.step
        return path

    def _maybe_track_best(self, metrics: dict[str, float]) -> None:
        key = self.best_metric
        if not key:
            return
        if key not in metrics:
            raise UserError(f"train.best_metric: '{key}' is not an eval metric ({list(metrics)})")
        value = metrics[key]
        sign = 1.0 if direction(key) == "min" else -1.0
        if not math.isfinite(value):
            return
        if self.counters.best is None or sign * value < sign * self.counters.best:
            self.counters.best = value
            path = self.save_checkpoint(metrics)
            if self.dist.is_main:
                copy_dir(path, self.ckpt_dir / "best")
            barrier()

    def restore_best(self) -> int | None:
        """Load checkpoints/best into the model (monitor.restore_best); its step, or None."""
        best = self.ckpt_dir / "best"
        if not (best / checkpoint.MANIFEST).is_file():
            return None
        state = checkpoint.load(best, self.model_plain, self.optimizer)  # verifies checksums
        return int(state["counters"]["step"])

    # ------------------------------------------------------------------ the loop

    def fit(self, stop_at_step: int | None = None) -> dict[str, Any]:
        """Train to `train.total_tokens`. `stop_at_step` ends this invocation early (with a
        checkpoint) on the same schedule: time-boxed or preemptible jobs resume from there."""
        cfg, c = self.cfg, self.counters
        start, window_tokens, window_start = time.time(), 0, time.time()
        self._saved_at = c.step if c.step else -1
        metrics: dict[str, float] = {}
        stop_detail = None
        while c.tokens < cfg.train.total_tokens:
            out = self.train_step(next(self.loader))
            c.step += 1
            c.tokens += out["slots"]
            c.target_tokens += out["targets"]
            window_tokens += out["slots"]
            if not out["finite"]:
                c.nonfinite_in_a_row += 1
                c.skipped_steps += 1
                self.log.write(
                    "nonfinite", c.tokens, step=c.step, loss=out["loss"], grad_norm=out["grad_norm"]
                )
                self.log.message(f"step {c.step}: non-finite loss/gradient, step skipped")
                if c.nonfinite_in_a_row >= cfg.train.max_nonfinite_steps:
                    raise TrainingDiverged(
                        f"{c.nonfinite_in_a_row} non-finite steps in a row (last at step "
                        f"{c.step}); lower optim.lr or check the data"
                    )
            else:
                c.nonfinite_in_a_row = 0
            self.log.advance(out["slots"], loss=out["loss"], T=out["seq_len"])
            if c.step % cfg.train.log_every_steps == 0:
                now = time.time()
                tps = window_tokens / max(now - window_start, 1e-9)
                self._log_train(out, tps)
                window_tokens, window_start = 0, now
            done = c.tokens >= cfg.train.total_tokens
            paused = stop_at_step is not None and c.step >= stop_at_step and not done
            if (cfg.eval.every_tokens and c.tokens >= c.next_eval) or done:
                c.next_eval = c.tokens + cfg.eval.every_tokens
                if self.evaluator:
                    metrics = self.evaluate()
                    self.log.write("eval", c.tokens, step=c.step, **metrics)
                    self._maybe_track_best(metrics)
                    stop_detail = self.watch(metrics)
                    if stop_detail:
                        if self._saved_at != c.step:
                            self.save_checkpoint(metrics)
                        break
            if (cfg.train.checkpoint_every_tokens and c.tokens >= c.next_checkpoint) or done:
                c.next_checkpoint = c.tokens + cfg.train.checkpoint_every_tokens
                if self._saved_at != c.step:
                    self.save_checkpoint(metrics)
            if paused:
                if self._saved_at != c.step:
                    self.save_checkpoint(metrics)
                break
        reason = "completed" if c.tokens >= cfg.train.total_tokens else "paused"
        restored = None
        if stop_detail:
            reason = "early_stopping"
        if cfg.monitor.restore_best and reason != "paused":
            restored = self.restore_best()
        summary = {
            "stop_reason": reason,
            "stop_detail": stop_detail,
            "restored_best_step": restored,
            "steps": c.step,
            "tokens": c.tokens,
            "target_tokens": c.target_tokens,
            "skipped_steps": c.skipped_steps,
            "wall_seconds": round(time.time() - start, 2),
            "final": metrics,
            "best": c.best,
            "best_metric": self.best_metric,
            "alerts": c.alerts,
        }
        self._export(summary)
        self.log.close()
        return summary

    def _log_train(self, out: dict[str, Any], tokens_per_s: float) -> None:
        fields = {
            k: out[k]
            for k in ("loss", "grad_norm", "lr", "seq_len", "rows", "pad_fraction", "micro_batches")
        }
        if self.cfg.optim.l1 or self.cfg.optim.l2:
            fields["reg"] = out["reg"]
        # model FLOPs/s over all ranks (6N + causal attention per slot; see GPT.flops_per_token)
        flops = self.model_plain.flops_per_token(out["seq_len"]) * tokens_per_s
        fields["tflops"] = flops / 1e12
        if self.cfg.train.peak_tflops:
            fields["mfu"] = flops / (self.cfg.train.peak_tflops * 1e12 * self.dist.world_size)
        self.log.write(
            "train",
            self.counters.tokens,
            step=self.counters.step,
            tokens_per_s=tokens_per_s,
            epoch=self.loader.epoch,
            **fields,
        )

    def _export(self, summary: dict[str, Any]) -> None:
        """RUN/export/ (the final weights, config.json and tokenizer; see lengthwise.export; the
        Hugging Face folder is left to `lengthwise export`) and RUN/summary.json."""
        from lengthwise.export import write_export

        full = checkpoint.full_model(self.model_plain, self.cfg.model)
        if self.dist.is_main:
            source = {"run_dir": str(self.run_dir), "step": self.counters.step}
            source["tokens"] = self.counters.tokens
            write_export(
                full, self.run_dir / "tokenizer.json", self.run_dir / "export", source, hf=False
            )
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        barrier()


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
    summary = trainer.fit(stop_at_step=stop_at_step)
    # Only after success (a rank that failed exits and torchrun stops the others; a barrier here
    # would wait forever for it). DDP/FSDP2 hold the process group: free them first, so its
    # threads stop now rather than in interpreter teardown.
    del trainer
    gc.collect()
    destroy()
    return summary
