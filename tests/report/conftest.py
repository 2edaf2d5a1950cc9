"""Hand-made run folders: the files `lengthwise train` writes, with numbers chosen by the test, so
report tests need no training (milliseconds instead of seconds)."""

import json
from pathlib import Path

import pytest
import yaml


def write_run(
    path: Path,
    store: str,
    strategy: str = "concat_chunk",
    steps: int = 40,
    log_every: int = 10,
    tokens_per_step: int = 2048,
    seq_lens: list[int] | None = None,
    loss: float = 7.0,
    tokens_per_s: float = 3500.0,
    eval_every: int = 20,
    sets: dict[str, str] | None = None,
) -> Path:
    """A finished run folder: config.yaml (store, strategy, eval sets), metrics.jsonl with a train
    record every `log_every` steps (each with `seq_lens` of the steps since the last one when
    `seq_lens` gives every step's length, else only the sampled `seq_len`), an eval record every
    `eval_every` steps with `<set>/loss`, and summary.json. Time runs at `tokens_per_s`."""
    sets = {"val": "id", "ood": "ood"} if sets is None else sets
    path.mkdir(parents=True)
    config = {
        "data": {"out_dir": store},
        "batching": {"strategy": strategy, "tokens_per_step": tokens_per_step},
        "model": {"n_layer": 2, "n_head": 2, "d_model": 64, "position": "rope"},
        "eval": {"sets": [{"name": n, "tag": t} for n, t in sets.items()]},
        "train": {"log_every_steps": log_every},
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    records, last_logged = [], 0
    for step in range(1, steps + 1):
        tokens = step * tokens_per_step
        t = tokens / tokens_per_s
        if step % log_every == 0 or step == steps:
            rec = {"event": "train", "time": t, "tokens": tokens, "step": step}
            rec |= {"loss": loss - step / steps, "tokens_per_s": tokens_per_s}
            rec["seq_len"] = seq_lens[step - 1] if seq_lens else 256
            if seq_lens:
                rec["seq_lens"] = seq_lens[last_logged:step]
            records.append(rec)
            last_logged = step
        if step % eval_every == 0:
            rec = {"event": "eval", "time": t + 0.5, "tokens": tokens, "step": step}
            for i, name in enumerate(sets):
                rec[f"{name}/loss"] = loss + i * 0.1 - step / steps
            records.append(rec)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    final = {k: v for k, v in records[-1].items() if "/" in k}
    summary = {
        "stop_reason": "completed",
        "steps": steps,
        "tokens": steps * tokens_per_step,
        "wall_seconds": steps * tokens_per_step / tokens_per_s,
        "final": final,
        "alerts": 0,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    return path


@pytest.fixture(scope="session")
def make_run():
    return write_run
