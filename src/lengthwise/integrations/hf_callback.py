"""`GeneralizationCallback`: lengthwise's eval sets, OOD alerts, early stopping and best
checkpoint inside a Hugging Face `Trainer`.

The rules are not re-implemented: every eval is one `EvalRound.run` (lengthwise.train.evaluation),
the very code the lengthwise trainer calls, on the Trainer's live model behind
`HFModel` (no copy), with a small adapter (`_TrainerLog`) in place of the run log:

- metrics -> `trainer.log({"eval_<name>": value})`: `state.log_history` and every `report_to`
  logger (TensorBoard, wandb, ... file them under eval/);
- each alert -> printed, kept in `callback.alerts`, and `trainer.log({"eval_alert/<metric>":
  relative drop})`;
- early stop -> printed, `callback.stop_reason`, a `{"early_stop": reason, "step": N}` record
  in `state.log_history`, and `control.should_training_stop`.

Best checkpoint. On a new best of the tracked metric (train.best_metric, else the
early-stopping metric) with `monitor.restore_best`, the callback asks the Trainer to save a
checkpoint at that step and records it as `state.best_model_checkpoint`, which the Trainer's
rotation (`save_total_limit`) never deletes; at the end of training the Trainer's own loader
(`_load_best_model`: plain, sharded, DeepSpeed, FSDP, PEFT) reads its weights back. A checkpoint
on disk rather than a copy in memory: it costs no memory the size of the model, and a run that
is killed and resumed still has it.

Cadence: every `eval.every_tokens` of the config's budget unit (slots, or targets with
`train.budget_unit: targets`), counted by the LengthwiseDataset (or `state.num_input_tokens_seen`
with any other dataset), or every `every_steps` optimizer steps; and at the last step, as in
lengthwise. The monitor, the stopper and the counters are saved in trainer_state.json with every
checkpoint (transformers' ExportableState) and loaded on resume, so a resumed run decides as an
uninterrupted one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lengthwise.config import Config, load_config
from lengthwise.data.tokenizer import Tokenizer, load_tokenizer
from lengthwise.errors import UserError
from lengthwise.eval.evaluator import Evaluator
from lengthwise.integrations.hf_data import LengthwiseDataset
from lengthwise.model.hf import HFModel, require_transformers
from lengthwise.train.distributed import all_reduce_sum, all_reduce_sum_tensor
from lengthwise.train.evaluation import EvalRound
from lengthwise.train.trainer import Counters

require_transformers("GeneralizationCallback")
from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_callback import ExportableState  # noqa: E402
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR  # noqa: E402


class _TrainerLog:
    """The two calls EvalRound makes on lengthwise's RunLog, routed to the Trainer."""

    def __init__(self, cb: GeneralizationCallback, state: Any) -> None:
        self.cb, self.state = cb, state

    def write(self, event: str, tokens: int, step: int, **fields: Any) -> None:
        trainer = self.cb.trainer
        if event == "eval":
            flat: dict[str, Any] = {"eval_tokens_seen": tokens}
            for k, v in fields.items():  # `se` is {metric: standard error}: one scalar each
                items = v.items() if isinstance(v, dict) else [(None, v)]
                flat.update({f"eval_{k}" + (f"/{sub}" if sub else ""): x for sub, x in items})
            trainer.log(flat)
        elif event == "alert":
            self.cb.alerts.append({"step": step, "tokens": tokens, **fields})
            trainer.log({f"eval_alert/{fields['metric']}": fields["drop"]})
        elif event == "early_stop":
            self.cb.stop_reason = fields["reason"]
            self.state.log_history.append({"early_stop": fields["reason"], "step": step})

    def message(self, text: str) -> None:
        if self.state.is_world_process_zero:
            tqdm.write(text)


class GeneralizationCallback(TrainerCallback, ExportableState):
    """lengthwise evals in a Trainer (see the module docstring).

    `cfg`: a lengthwise config (or its YAML path) whose `data.out_dir` holds the prepared eval
    splits and tokenizer.json, and whose `eval`, `monitor` and `train.best_metric` /
    `train.budget_unit` say what to run and decide. `trainer`: the Trainer to log through
    (a LengthwiseTrainer attaches itself). `every_steps`: evaluate every N optimizer steps
    instead of every `eval.every_tokens`.
    """

    def __init__(
        self,
        cfg: Config | str | Path,
        trainer: Any = None,
        every_steps: int | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.cfg = cfg if isinstance(cfg, Config) else load_config(cfg)
        if not self.cfg.eval.sets:
            raise UserError("GeneralizationCallback: the config's eval.sets is empty")
        if every_steps is not None and (every_steps < 1 or self.cfg.eval.every_tokens):
            raise UserError(
                "GeneralizationCallback: every_steps must be >= 1, and is an alternative to "
                "eval.every_tokens (set that to 0)"
            )
        self.trainer = trainer
        self.every_steps = every_steps
        self.tokenizer = tokenizer
        self.every = every_steps or self.cfg.eval.every_tokens
        self.restore_best = self.cfg.monitor.restore_best
        self.round: EvalRound | None = None  # built at train begin, on the Trainer's device
        self.counters = Counters(next_eval=self.every)
        self.best_step: int | None = None
        self.stop_reason: str | None = None
        self.alerts: list[dict[str, Any]] = []
        self.restored_step: int | None = None

    # ------------------------------------------------------------------ state (ExportableState)

    def state(self) -> dict[str, Any]:
        saved = {
            "counters": {k: v for k, v in self.counters.__dict__.items() if k != "extra"},
            "best_step": self.best_step,
            "round": self.round.state_dict() if self.round is not None else None,
        }
        return {"args": {}, "attributes": {"lengthwise_eval": saved}}

    def _load(self, saved: dict[str, Any]) -> None:
        self.counters = Counters(**saved["counters"])
        self.best_step = saved["best_step"]
        if saved["round"] is not None:
            self.round.load_state_dict(saved["round"])  # type: ignore[union-attr]

    # ------------------------------------------------------------------ events

    def on_init_end(self, args, state, control, **kwargs):
        if args.restore_callback_states_from_checkpoint:
            raise UserError(
                "GeneralizationCallback restores its own state from the checkpoint: leave "
                "TrainingArguments.restore_callback_states_from_checkpoint False"
            )

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self._check(args, train_dataloader)
        if self.round is None:
            self.round = self._build_round(args, state)
            hook = self.round.describe_hook()
            if hook and state.is_world_process_zero:
                tqdm.write(hook)
        name = type(self).__name__
        saved = state.stateful_callbacks.get(name)
        if isinstance(saved, list):
            saved = saved[0]
        if state.global_step > 0 and saved and saved["attributes"]["lengthwise_eval"]["round"]:
            self._load(saved["attributes"]["lengthwise_eval"])
        state.stateful_callbacks.setdefault(name, self.state())  # a checkpoint without us

    def on_step_end(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        c = self.counters
        c.step = state.global_step
        c.tokens, c.target_tokens = self._tokens(args, state, train_dataloader)
        if self.every_steps:
            budget = c.step
        else:
            budget = c.target_tokens if self.cfg.train.budget_unit == "targets" else c.tokens
        end = state.global_step >= state.max_steps
        if not self.round.due(c, budget, end):  # type: ignore[union-attr]
            return control
        outcome = self.round.run(HFModel(model), c, _TrainerLog(self, state))  # type: ignore
        if outcome.new_best:
            self.best_step = c.step
            if args.metric_for_best_model is None:  # else the Trainer's own evals own these
                state.best_metric, state.best_global_step = c.best, c.step
            if self.restore_best:
                folder = f"{PREFIX_CHECKPOINT_DIR}-{c.step}"
                state.best_model_checkpoint = os.path.join(args.output_dir, folder)
                control.should_save = True
        if outcome.stop_reason:
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        best = state.best_model_checkpoint
        if not self.restore_best or self.best_step is None or not best or not os.path.isdir(best):
            return control
        self.trainer._load_best_model()
        self.restored_step = self.best_step
        if state.is_world_process_zero:
            tqdm.write(
                f"restored the best checkpoint: step {self.best_step}, "
                f"{self.round.best_metric} = {self.counters.best:.4g} ({best})"  # type: ignore
            )
        return control

    # ------------------------------------------------------------------ helpers

    def _check(self, args: Any, train_dataloader: Any) -> None:
        if self.trainer is None:
            raise UserError(
                "GeneralizationCallback: pass the Trainer to log through, "
                "GeneralizationCallback(cfg, trainer), or train with a LengthwiseTrainer"
            )
        if self.restore_best and (args.load_best_model_at_end or args.metric_for_best_model):
            raise UserError(
                "monitor.restore_best and TrainingArguments.load_best_model_at_end / "
                "metric_for_best_model both choose a best checkpoint: keep one"
            )
        lengthwise = isinstance(getattr(train_dataloader, "dataset", None), LengthwiseDataset)
        counted = args.include_num_input_tokens_seen not in ("no", False)
        by_tokens = not self.every_steps and self.every
        if (
            by_tokens
            and not lengthwise
            and (self.cfg.train.budget_unit == "targets" or not counted)
        ):
            raise UserError(
                "eval.every_tokens: the train dataset is not a LengthwiseDataset, so tokens are "
                "counted only by TrainingArguments.include_num_input_tokens_seen='all' (and "
                "targets not at all); or pass every_steps"
            )

    def _build_round(self, args: Any, state: Any) -> EvalRound:
        tokenizer = self.tokenizer
        if tokenizer is None:
            path = self.cfg.data.out_dir / "tokenizer.json"
            if not path.is_file():
                raise UserError(f"{path}: missing (run `lengthwise prepare` on this config)")
            tokenizer = load_tokenizer(path)
        evaluator = Evaluator(
            self.cfg,
            tokenizer,
            args.device,
            args.process_index,
            args.world_size,
            reduce=all_reduce_sum_tensor,
        )
        evaluation = EvalRound(self.cfg, evaluator, state.is_world_process_zero)
        evaluation.every_tokens = self.every  # its cadence counts our unit (steps or tokens)
        return evaluation

    def _tokens(self, args: Any, state: Any, train_dataloader: Any) -> tuple[int, int]:
        """(input slots of all ranks, real targets of all ranks) trained so far."""
        ds = getattr(train_dataloader, "dataset", None)
        if not isinstance(ds, LengthwiseDataset):
            return int(state.num_input_tokens_seen), 0
        targets = ds.target_tokens
        if args.world_size > 1 and self.cfg.train.budget_unit == "targets":
            targets = int(all_reduce_sum(targets, args.device))
        return ds.tokens, targets
