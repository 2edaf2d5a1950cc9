"""The eval sets of a run config (`eval.sets`), scored together: what the trainer calls at each
eval and what the monitor watches.

Metrics are named `SET/METRIC`: text sets give `SET/loss` and `SET/ppl`, task sets `SET/acc` and
`SET/parse_rate`. The main metric of a set is `loss` (text) or `acc` (task); the means of the OOD
sets' main metrics are `ood_mean/acc` and `ood_mean/loss` (the default early-stopping metric).

Task items are generated once, deterministically from the set's seed (with `shots: K`, each
prompt starts with K demonstrations from the in-distribution lengths: a few-shot metric the
monitor can watch like any other); with `fresh: true`, items
whose problem occurs in the training split (a task source) are replaced by fresh ones, so an OOD
set never tests memorized items. In a distributed run each rank scores every W-th item and the
counts are summed (text loss is split the same way by evaluate_loss); with FSDP2 the ranks
decode in lockstep (equal shards, a fixed number of steps), since every forward is collective.

Noise: after `run`, `noise` holds the standard error of each metric at that eval (the OOD
monitor weighs a drop against it): sqrt(p(1-p)/n) for `acc` and `parse_rate` on n items, the SE
of the mean token loss for `loss` (lengthwise.eval.loss), ppl * se(loss) for `ppl` (first
order), and sqrt(sum se_i^2) / k for the mean of k sets (`ood_mean/*`; the sets' items are
independent). It is kept apart from the metrics, which are exactly `cfg.eval.metric_names()`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lengthwise.config import Config, EvalSetConfig
from lengthwise.data.sources import task_source_items
from lengthwise.data.store import TokenStore
from lengthwise.data.tokenizer import Tokenizer
from lengthwise.errors import UserError
from lengthwise.eval.accuracy import answer_budget, positions_needed, score_items
from lengthwise.eval.fewshot import FewShot, demonstrations, with_demos
from lengthwise.eval.lengthwise_lm import LengthwiseLM
from lengthwise.eval.loss import evaluate_loss
from lengthwise.tasks import Item, Task, generate_items, get_task


def task_of(spec: EvalSetConfig) -> Task:
    try:
        task = get_task(spec.task, **spec.params)  # type: ignore[arg-type]
    except (ValueError, TypeError) as e:
        raise UserError(f"task '{spec.task}': {e}") from None
    if spec.format not in task.formats:
        raise UserError(
            f"task '{spec.task}': no format '{spec.format}' (choose from {', '.join(task.formats)})"
        )
    return task


def training_keys(cfg: Config, split: str = "train") -> set[str]:
    """Problem keys of the training split's items (empty when it is not a task source)."""
    src = cfg.data.splits.get(split)
    if src is None or src.kind != "task":
        return set()
    return {it.key for it in task_source_items(src)}


def shot_lengths(cfg: Config, spec: EvalSetConfig) -> tuple[int, int]:
    """Where a set's demonstrations come from: `shots_lengths`, else the training split's length
    range when it is a task source (the in-distribution lengths), else the set's own."""
    if spec.shots_lengths is not None:
        return spec.shots_lengths[0], spec.shots_lengths[1]
    src = cfg.data.splits.get("train")
    if src is not None and src.kind == "task":
        return src.lengths[0], src.lengths[1]
    return spec.lengths[0], spec.lengths[1]


def task_items(
    spec: EvalSetConfig, exclude: set[str], demo_lengths: tuple[int, int] | None = None
) -> list[Item]:
    """The set's items; with `shots`, their prompts carry the demonstrations (drawn from
    `demo_lengths`, default the set's lengths), and no item is a demonstration."""
    task = task_of(spec)
    demos = demonstrations(
        task,
        demo_lengths or (spec.lengths[0], spec.lengths[1]),
        spec.shots,
        spec.format,
        spec.shots_seed,
        what=f"eval set '{spec.name}': shots",
    )
    skip = (exclude if spec.fresh else set()) | {d.key for d in demos}
    items = generate_items(
        task,
        tuple(spec.lengths),
        spec.n,
        spec.format,
        spec.seed,
        exclude=skip or None,
        values=spec.values,
        heldout=spec.heldout,
    )
    return with_demos(None, demos, list(items))


def main_metric(spec: EvalSetConfig) -> str:
    return f"{spec.name}/{'acc' if spec.kind == 'task' else 'loss'}"


class Evaluator:
    def __init__(
        self,
        cfg: Config,
        tokenizer: Tokenizer,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
        autocast: Callable[[], Any] | None = None,
    ) -> None:
        self.cfg, self.tokenizer, self.device = cfg, tokenizer, device
        self.rank, self.world_size, self.reduce, self.autocast = rank, world_size, reduce, autocast
        self.sets = cfg.eval.sets
        self.stores = {
            s.name: TokenStore(cfg.data.out_dir / s.split)  # type: ignore[operator]
            for s in self.sets
            if s.kind == "text"
        }
        self.noise: dict[str, float] = {}  # the last run's standard error of each metric
        task_sets = [s for s in self.sets if s.kind == "task"]
        keys = training_keys(cfg) if any(s.fresh for s in task_sets) else set()
        self.tasks = {s.name: task_of(s) for s in task_sets}
        self.items = {s.name: task_items(s, keys, shot_lengths(cfg, s)) for s in task_sets}

    def positions_needed(self) -> int:
        """The most position ids an eval uses: text windows of batching.max_len, task prompts
        plus their answer budget (or the task's own ids)."""
        need = self.cfg.batching.max_len if self.stores else 0
        for s in self.sets:
            if s.kind == "task" and self.items[s.name]:
                need = max(need, positions_needed(self.tokenizer, self.items[s.name]))
        return need

    @property
    def ood_metrics(self) -> list[str]:
        """Main metric of every OOD set: what the monitor watches."""
        return [main_metric(s) for s in self.sets if s.tag == "ood"]

    @property
    def default_stop_metric(self) -> str | None:
        ood = [s for s in self.sets if s.tag == "ood"]
        if any(s.kind == "task" for s in ood):
            return "ood_mean/acc"
        return "ood_mean/loss" if ood else None

    def run(self, model: nn.Module) -> dict[str, float]:
        """Every set's metrics (named `cfg.eval.metric_names()`); their standard errors are in
        `self.noise` afterwards."""
        metrics: dict[str, float] = {}
        noise: dict[str, float] = {}
        for s in self.sets:
            if s.kind == "text":
                store = self.stores[s.name]
                out = evaluate_loss(
                    model,
                    store.tokens,
                    store.offsets,
                    self.cfg.batching.max_len,
                    s.tokens,
                    self.device,
                    self.tokenizer.pad_id,
                    rank=self.rank,
                    world_size=self.world_size,
                    reduce=self.reduce,
                    autocast=self.autocast,
                    prompt_lens=store.prompt_lens,
                    positions=store.positions,
                )
                metrics[f"{s.name}/loss"], metrics[f"{s.name}/ppl"] = out["loss"], out["ppl"]
                noise[f"{s.name}/loss"] = out["se"]
                noise[f"{s.name}/ppl"] = out["ppl"] * out["se"]
            else:
                got, n_items = self._task_metrics(model, s)
                metrics.update(got)
                noise.update({k: binomial_se(v, n_items) for k, v in got.items()})
        for kind, key in (("task", "acc"), ("text", "loss")):
            names = [f"{s.name}/{key}" for s in self.sets if s.tag == "ood" and s.kind == kind]
            if names:
                metrics[f"ood_mean/{key}"] = sum(metrics[n] for n in names) / len(names)
                noise[f"ood_mean/{key}"] = mean_se([noise[n] for n in names])
        self.noise = {k: v for k, v in noise.items() if math.isfinite(v)}
        return metrics

    def _task_metrics(self, model: nn.Module, s: EvalSetConfig) -> tuple[dict[str, float], float]:
        """The set's accuracy and parse rate, and the number of items they are over."""
        items, task = self.items[s.name], self.tasks[s.name]
        mine = items[self.rank :: self.world_size]
        # FSDP2: every forward all-gathers the weights, so every rank must make the same calls:
        # equal shards (the short ones topped up with an item that is not counted) and a fixed
        # number of decoding steps per batch
        lockstep = self.cfg.distributed.fsdp and self.world_size > 1
        real = len(mine)
        if lockstep and items:
            mine = mine + items[:1] * (-(-len(items) // self.world_size) - real)
        lm = LengthwiseLM(model, self.tokenizer, device=self.device, stop_early=not lockstep)
        budget = s.max_new_tokens or answer_budget(lm, items)  # from all items: same on every rank
        with self.autocast() if self.autocast else torch.autocast(self.device.type, enabled=False):
            stop = FewShot(shots=s.shots).stop  # plain-text demonstrations end at the separator
            score = score_items(lm, task, mine, budget, self.cfg.eval.batch_size, stop=stop)
        for item, out in zip(mine[real:], score.outputs[real:], strict=True):  # the top-ups
            parsed, correct = task.check(item, out)
            score.total -= 1
            score.parsed -= parsed
            score.correct -= correct
        counts = torch.tensor(
            [score.correct, score.parsed, score.total], dtype=torch.float64, device=self.device
        )
        correct, parsed, total = self.reduce(counts).tolist()
        return {f"{s.name}/acc": correct / total, f"{s.name}/parse_rate": parsed / total}, total


def binomial_se(p: float, n: float) -> float:
    """The standard error of a proportion `p` measured on `n` independent items."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else math.nan


def mean_se(ses: list[float]) -> float:
    """The standard error of the mean of k independent measurements with these SEs."""
    return math.sqrt(sum(se * se for se in ses)) / len(ses)
