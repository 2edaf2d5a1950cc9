"""The run folder as a contract: what `lengthwise train` writes, and the readers everyone uses.

A run folder (`train.out_dir`) is read by the trainer when it resumes, by `export`, `eval`,
`report`, the demo and the experiments; like `Batch` for tensors, its layout lives here once:

    RUN/config.yaml       the resolved config (vocab size and the like filled in)
    RUN/tokenizer.json    the data's tokenizer, copied at the start
    RUN/metrics.jsonl     one JSON object per line, every one with `event`, `time`, `tokens`,
                          `step`: train | eval | alert | early_stop | restore_best |
                          nonfinite | hook
                          (the source of truth for curves; after a resume it holds exactly the
                          records of an uninterrupted run)
    RUN/summary.json      written once the run ends (completed, early_stopping or paused)
    RUN/data_stats.json   one epoch's padding, dropped tokens, FLOPs and bucket histogram
    RUN/checkpoints/      step-NNNNNNNN/ and best/ (lengthwise.train.checkpoint)
    RUN/export/           the final weights (lengthwise.eval.exported)
    RUN/eval/SUITE.json   `lengthwise eval` results (lengths, valley, memorization) + PNGs
    RUN/tensorboard/      event files, for TensorBoard only (train.loggers)
    RUN/wandb/            W&B's run files (train.loggers: wandb)
    RUN/mlflow.db         MLflow's tracking store, artifacts in RUN/mlartifacts/ (mlflow)
    RUN/trackers.json     the W&B and MLflow run ids, so that --resume continues those runs
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lengthwise.config import Config, dump_config, format_validation_error, read_yaml_mapping
from lengthwise.errors import UserError
from lengthwise.io import atomic_write_text

EVAL_SUITES = ("lengths", "valley", "memorization")


@dataclass(frozen=True)
class RunDir:
    """Paths and readers of one run folder. Readers return None for a missing file and never
    raise on a half-written metrics line (a `kill -9` can leave one)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ------------------------------------------------------------------ paths

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def data_stats_path(self) -> Path:
        return self.path / "data_stats.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def trackers_path(self) -> Path:
        return self.path / "trackers.json"

    def is_run(self) -> bool:
        """A folder `lengthwise train` started (it writes config.yaml first)."""
        return self.config_path.is_file()

    def require(self) -> RunDir:
        if not self.is_run():
            raise UserError(f"{self.path}: not a run directory (no config.yaml)")
        return self

    # ------------------------------------------------------------------ readers

    def config(self) -> Config:
        """The run's resolved config, validated (UserError naming the file otherwise). A run
        written before `train.loggers` existed has `train.tensorboard: true/false`: read as
        the loggers it meant, so older runs still export, evaluate and report."""
        path = self.require().config_path
        tree = read_yaml_mapping(path)
        train = tree.get("train")
        if isinstance(train, dict) and isinstance(train.get("tensorboard"), bool):
            train["loggers"] = ["tensorboard"] if train.pop("tensorboard") else []
        try:
            return Config.model_validate(tree)
        except ValidationError as e:
            raise UserError(format_validation_error(str(path), e)) from None

    def config_tree(self) -> dict[str, Any] | None:
        """config.yaml as a plain mapping, unvalidated (reports of older runs); None if it is
        missing or unreadable."""
        try:
            tree = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return None
        return tree if isinstance(tree, dict) else None

    def metrics(self, event: str | None = None) -> list[dict[str, Any]]:
        """metrics.jsonl records (of one `event` kind if given); unreadable lines skipped."""
        records, _ = self.metrics_with_errors()
        return [r for r in records if event is None or r.get("event") == event]

    def metrics_with_errors(self) -> tuple[list[dict[str, Any]], int]:
        """(records, number of unreadable lines); ([], 0) without a metrics file."""
        if not self.metrics_path.is_file():
            return [], 0
        return _parse_jsonl(self.metrics_path.read_text(encoding="utf-8", errors="replace"))

    def summary(self) -> dict[str, Any] | None:
        return _read_json(self.summary_path)

    def trackers(self) -> dict[str, Any] | None:
        """trackers.json: {"wandb": {"id"}, "mlflow": {"tracking_uri", "run_id"}}."""
        tree = _read_json(self.trackers_path)
        return tree if isinstance(tree, dict) else None

    def data_stats(self) -> dict[str, Any] | None:
        return _read_json(self.data_stats_path)

    def eval_result(self, suite: str) -> dict[str, Any] | None:
        return _read_json(self.eval_dir / f"{suite}.json")

    # ------------------------------------------------------------------ writers (main rank)

    def write_config(self, cfg: Config) -> None:
        atomic_write_text(self.config_path, dump_config(cfg))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2))

    def write_data_stats(self, stats: dict[str, Any]) -> None:
        atomic_write_text(self.data_stats_path, json.dumps(stats, indent=2))

    def trim_metrics(self, last_step: int) -> int:
        """Keep the records of steps <= `last_step` (the checkpoint a run resumes from) and drop
        the rest, including a torn last line: after the resume the file holds exactly what an
        uninterrupted run would have written. `last_step` 0 empties it (a fresh start). Returns
        the number of records dropped. A `restore_best` record goes too: it is written at a
        run's end, and a run that resumes has not reached its (new) end yet."""
        if not self.metrics_path.is_file():
            return 0
        records, bad = self.metrics_with_errors()
        kept = [r for r in records if int(r.get("step", 0)) <= last_step and last_step > 0]
        kept = [r for r in kept if r.get("event") != "restore_best"]
        dropped = len(records) - len(kept) + bad
        if dropped:
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        return dropped


def _parse_jsonl(text: str) -> tuple[list[dict[str, Any]], int]:
    records, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def _read_json(path: Path) -> Any:
    """A JSON file's content; None when missing or unreadable (the callers say what is
    missing: a report leaves a section out)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


@dataclass(frozen=True)
class AlertCounts:
    """A run's OOD alerts: how many, and how many of them were beyond (`significant`; non-finite
    values count here) or `within_noise` of the eval sets' own noise. Those two are None for a
    run logged before alerts carried a significance; alerts of unknown noise are the rest."""

    total: int
    significant: int | None = None
    within_noise: int | None = None

    @property
    def unknown(self) -> int | None:
        if self.significant is None or self.within_noise is None:
            return None
        return max(self.total - self.significant - self.within_noise, 0)

    def breakdown(self) -> list[str]:
        """["3 significant", "55 within noise"] (and "k of unknown noise"); [] for an older run
        or no alerts."""
        if not self.total or self.significant is None or self.within_noise is None:
            return []
        parts = [f"{self.significant} significant", f"{self.within_noise} within noise"]
        if self.unknown:
            parts.append(f"{self.unknown} of unknown noise")
        return parts

    def text(self) -> str:
        """The count and its breakdown: "58 (3 significant, 55 within noise)"; "7" for an older
        run, "0" for none."""
        parts = self.breakdown()
        return f"{self.total} ({', '.join(parts)})" if parts else str(self.total)


def alert_counts(
    summary: dict[str, Any] | None, alerts: list[dict[str, Any]] | None = None
) -> AlertCounts:
    """The counts of summary.json (`alerts`, `alerts_significant`, `alerts_within_noise`) where
    it has them, else of the `alert` records of metrics.jsonl (their `significant`: true, false
    or null); an older run's records without the field give no breakdown."""
    summary, alerts = summary or {}, alerts or []

    def count(key: str) -> int | None:
        v = summary.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None

    total = count("alerts")
    total = len(alerts) if total is None else total
    sig, noise = count("alerts_significant"), count("alerts_within_noise")
    if sig is None or noise is None:
        sig = noise = None
        if any("significant" in a for a in alerts):
            sig = sum(a.get("significant") is True for a in alerts)
            noise = sum(a.get("significant") is False for a in alerts)
    return AlertCounts(total, sig, noise)


def read_metrics(run_dir: Path | str, event: str | None = None) -> list[dict[str, Any]]:
    """`RunDir(run_dir).metrics(event)`: the records of a run's metrics.jsonl."""
    return RunDir(Path(run_dir)).metrics(event)
