"""Experiment trackers (`train.loggers`): TensorBoard, Weights & Biases and MLflow.

metrics.jsonl stays the source of truth; a tracker is a dashboard's copy of it. RunLog hands
every tracker each record's numeric fields as scalars at the record's token count (named as
TensorBoard always named them: `event/key`, or the key itself when it holds a '/', like
`val/loss`), and the records in EVENTS whole, so an alert, an early stop or the restored best
step is an event there, not only a number. Only the main rank has trackers.

A resumed run continues its trackers: TensorBoard hides what an interrupted attempt logged past
the checkpoint (`purge_step`); W&B and MLflow continue the runs named in RUN/trackers.json, but
keep those points (neither can delete them), so their curves may hold two values per token
count between the checkpoint and where the attempt died.

wandb and mlflow are optional packages, imported only for a run that lists them;
`check_loggers` runs at the trainer's start, before anything is written.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

from lengthwise.config import Config
from lengthwise.errors import UserError
from lengthwise.io import atomic_write_text
from lengthwise.rundir import RunDir

# the records every tracker gets as events (besides their numeric fields as scalars)
EVENTS = ("alert", "early_stop", "restore_best", "nonfinite", "hook")
_HEADER = ("event", "time", "tokens", "step")  # what every record has


class Tracker(Protocol):
    def log_scalars(self, tokens: int, scalars: dict[str, float]) -> None: ...

    def log_event(self, kind: str, record: dict[str, Any]) -> None:
        """`record`: the whole metrics.jsonl record (event, time, tokens, step and fields)."""

    def close(self, failed: bool = False) -> None: ...


def check_loggers(loggers: list[str]) -> None:
    """The optional packages the listed loggers need are importable (one line naming the
    extra otherwise)."""
    for name in loggers:
        if name in ("wandb", "mlflow"):
            try:
                importlib.import_module(name)
            except ImportError:
                raise UserError(
                    f"train.loggers: {name} is not installed; pip install 'lengthwise[{name}]'"
                    " (or remove it from train.loggers)"
                ) from None


def open_trackers(cfg: Config, run: RunDir, resume_tokens: int) -> list[Tracker]:
    """The trackers of `cfg.train.loggers`. `resume_tokens` > 0: the run resumes from a
    checkpoint at that many tokens and continues its W&B and MLflow runs; 0: new ones (a fresh
    start in a folder where an attempt died before its first checkpoint starts over)."""
    saved = (run.trackers() or {}) if resume_tokens > 0 else {}
    ids = dict(saved)  # a logger left out of this attempt keeps its run for a later one
    trackers: list[Tracker] = []
    try:
        for name in cfg.train.loggers:
            if name == "tensorboard":
                trackers.append(TensorBoardTracker(run.tensorboard_dir, resume_tokens))
            elif name == "wandb":
                tracker = WandbTracker(cfg, run, saved.get("wandb", {}).get("id"))
                ids["wandb"] = {"id": tracker.run_id}
                trackers.append(tracker)
            elif name == "mlflow":
                tracker = MlflowTracker(cfg, run, saved.get("mlflow", {}))
                ids["mlflow"] = {"tracking_uri": tracker.uri, "run_id": tracker.run_id}
                trackers.append(tracker)
    except BaseException:
        for t in trackers:
            t.close(failed=True)
        raise
    if ids:
        atomic_write_text(run.trackers_path, json.dumps(ids, indent=2) + "\n")
    return trackers


class TensorBoardTracker:
    """RUN/tensorboard/: scalars, and events as text (the TEXT tab)."""

    def __init__(self, log_dir: Path, resume_tokens: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports TensorFlow stubs: slow

        # events logged past the checkpoint by an interrupted attempt are hidden
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=resume_tokens + 1)

    def log_scalars(self, tokens: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, tokens)

    def log_event(self, kind: str, record: dict[str, Any]) -> None:
        text = f"step {record['step']}: `{json.dumps(_fields(record))}`"
        self._writer.add_text(f"events/{kind}", text, record["tokens"])

    def close(self, failed: bool = False) -> None:
        self._writer.close()


class WandbTracker:
    """A W&B run with its files in RUN/wandb/. Online or offline as W&B's own settings say
    (`wandb login`, WANDB_MODE): lengthwise does not choose. Scalars are charted against
    `tokens`; events are rows of an `events` table (re-logged whole at each event, so the latest
    holds them all), counts in the run summary (`event_counts/KIND`), and an alert or an early stop
    is also a W&B alert (a notification when the project has them on)."""

    def __init__(self, cfg: Config, run: RunDir, run_id: str | None) -> None:
        import wandb

        self._wandb = wandb
        self.run_id = run_id or uuid.uuid4().hex[:16]
        try:
            self._run = wandb.init(
                dir=str(run.path),
                project=cfg.train.project,
                name=cfg.train.run_name or run.path.resolve().name,
                id=self.run_id,
                resume="allow",  # the same id after --resume: the same W&B run
                reinit="create_new",  # one process may train several runs (experiments)
                config=cfg.model_dump(mode="json"),
                allow_val_change=True,  # a resume may change the budget, lr, ...
            )
        except wandb.errors.Error as e:
            raise UserError(
                f"train.loggers: wandb could not start ({first_line(e)}); run `wandb login`, "
                f"or set WANDB_MODE=offline to keep the run in {run.path / 'wandb'}"
            ) from None
        self._run.define_metric("tokens")
        self._run.define_metric("*", step_metric="tokens")
        # a resumed run's table starts with the events the checkpoint kept
        self._rows = [_row(r) for r in run.metrics() if r.get("event") in EVENTS]
        self._counts = Counter(row[2] for row in self._rows)

    def log_scalars(self, tokens: int, scalars: dict[str, float]) -> None:
        self._run.log({"tokens": tokens, **scalars})

    def log_event(self, kind: str, record: dict[str, Any]) -> None:
        self._rows.append(_row(record))
        self._counts[kind] += 1
        table = self._wandb.Table(columns=["tokens", "step", "event", "fields"], data=self._rows)
        self._run.log({"tokens": record["tokens"], "events": table})
        self._run.summary[f"event_counts/{kind}"] = self._counts[kind]
        if (kind == "alert" and record.get("first", True)) or kind == "early_stop":
            title = f"{kind} at step {record['step']}"
            self._run.alert(
                title=title,
                text=json.dumps(_fields(record)),
                level="WARN" if kind == "alert" else "INFO",
            )

    def close(self, failed: bool = False) -> None:
        self._run.finish(exit_code=1 if failed else 0)


class MlflowTracker:
    """An MLflow run in `train.project` (the experiment). The store: train.mlflow_tracking_uri,
    else MLFLOW_TRACKING_URI, else a SQLite file in the run folder (RUN/mlflow.db, artifacts in
    RUN/mlartifacts/; `mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db`). Params: the
    config, flattened (`optim.lr`), as first logged (MLflow params cannot change: a resume's
    config is the `config.yaml` artifact); scalars: metrics with step = tokens; events: the
    tags `events.KIND` (count) and `events.KIND.last`, and the `events.jsonl` artifact."""

    def __init__(self, cfg: Config, run: RunDir, saved: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        from_user = cfg.train.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = from_user or f"sqlite:///{run.path.resolve() / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=self.uri)
        self._client = client
        try:
            found = None
            if saved.get("tracking_uri") == self.uri and saved.get("run_id"):
                try:
                    found = client.get_run(saved["run_id"])
                    client.update_run(found.info.run_id, status="RUNNING")
                except MlflowException:
                    found = None  # deleted meanwhile: a new run
            if found is None:
                found = client.create_run(
                    self._experiment(cfg.train.project, None if from_user else run),
                    run_name=cfg.train.run_name or run.path.resolve().name,
                    tags={"lengthwise.run_dir": str(run.path.resolve())},
                )
            self.run_id = found.info.run_id
            have = found.data.params
            params = [
                Param(k, v) for k, v in _flatten(cfg.model_dump(mode="json")) if k not in have
            ]
            for i in range(0, len(params), 100):  # MLflow takes 100 params per batch
                client.log_batch(self.run_id, params=params[i : i + 100])
            client.log_artifact(self.run_id, str(run.config_path))
        except MlflowException as e:
            raise UserError(f"train.loggers: mlflow at {self.uri}: {first_line(e)}") from None
        self._events = [r for r in run.metrics() if r.get("event") in EVENTS]

    def _experiment(self, name: str, run: RunDir | None) -> str:
        """The experiment's id, created if new (its artifacts in RUN/mlartifacts for the
        run folder's own store)."""
        found = self._client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        where = (run.path.resolve() / "mlartifacts").as_uri() if run is not None else None
        return self._client.create_experiment(name, artifact_location=where)

    def log_scalars(self, tokens: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), float(v), now, tokens) for k, v in scalars.items()]
        self._client.log_batch(self.run_id, metrics=metrics)

    def log_event(self, kind: str, record: dict[str, Any]) -> None:
        self._events.append(record)
        count = sum(r["event"] == kind for r in self._events)
        self._client.set_tag(self.run_id, f"events.{kind}", str(count))
        self._client.set_tag(self.run_id, f"events.{kind}.last", json.dumps(record)[:5000])
        text = "".join(json.dumps(r) + "\n" for r in self._events)
        self._client.log_text(self.run_id, text, "events.jsonl")

    def close(self, failed: bool = False) -> None:
        self._client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


def _fields(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in _HEADER}


def _row(record: dict[str, Any]) -> list[Any]:
    fields = json.dumps(_fields(record))
    return [int(record.get("tokens", 0)), int(record.get("step", 0)), record["event"], fields]


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(`section.key`, value as text) for every leaf of the config; lists as JSON."""
    out: list[tuple[str, str]] = []
    for k, v in tree.items():
        key = _mlflow_key(f"{prefix}{k}")
        if isinstance(v, dict) and v:
            out += _flatten(v, f"{key}.")
        else:
            out.append((key, (v if isinstance(v, str) else json.dumps(v))[:6000]))
    return out


def _mlflow_key(name: str) -> str:
    """MLflow names allow letters, digits, `_ - . / :` and spaces."""
    return re.sub(r"[^\w\-./: ]", "_", name)


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
