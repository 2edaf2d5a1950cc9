"""examples/hf_trainer_dd.py: a tiny run of its main() in the default suite; the full run (the
OOD alert, the early stop and the restored best step it promises) marked slow."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the HF Trainer example needs transformers")
pytest.importorskip("accelerate", reason="the HF Trainer needs accelerate")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import hf_trainer_dd  # noqa: E402


def test_example_runs_a_few_steps(tmp_path):
    """8 steps, evals at 4 and 8: the second is the best (the model is still learning both
    domains), its checkpoint is saved and restored."""
    argv = ["--steps", "8", "--eval-every", "4", "--eval-tokens", "256"]
    summary = hf_trainer_dd.main([*argv, "--data", str(tmp_path / "data"), "--out", str(tmp_path)])
    assert summary["steps"] == 8 and summary["stop"] is None and summary["alerts"] == 0
    assert summary["best_step"] == summary["restored_step"] == 8
    assert (tmp_path / "checkpoint-8" / "model.safetensors").is_file()


@pytest.mark.slow
def test_example_alerts_stops_and_restores(tmp_path):
    """The default run (~30 s): the OOD loss turns while the in-distribution loss still falls,
    an alert fires, early stopping (stop_on_drop) ends the run, the best step comes back."""
    summary = hf_trainer_dd.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path)])
    assert summary["alerts"] >= 1 and summary["stop"] and summary["steps"] < 400
    assert summary["restored_step"] == summary["best_step"] < summary["steps"]
