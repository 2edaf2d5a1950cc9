"""The packaged experiments, in one table: the id on the command line, the YAML under
experiments/ and the function that runs it. A new experiment is one row here (and its module)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lengthwise.errors import UserError
from lengthwise.experiments.e1_efficiency import run_e1
from lengthwise.experiments.e2_length import run_e2
from lengthwise.experiments.e3_overtraining import run_e3
from lengthwise.experiments.e4_valley import run_e4
from lengthwise.experiments.e5_memorization import run_e5
from lengthwise.experiments.e6_icl import run_e6
from lengthwise.experiments.runner import Runner, command_line, run
from lengthwise.experiments.spec import experiments_dir, load_spec


@dataclass(frozen=True)
class Experiment:
    id: str  # E1 ... on the command line
    spec_file: str  # its YAML, in experiments/
    run: Runner  # Context -> (results, markdown tables, run folders)

    @property
    def spec_path(self) -> Path:
        return experiments_dir() / self.spec_file


EXPERIMENTS: dict[str, Experiment] = {
    e.id: e
    for e in (
        Experiment("E1", "e1_efficiency.yaml", run_e1),
        Experiment("E2", "e2_length_generalization.yaml", run_e2),
        Experiment("E3", "e3_overtraining.yaml", run_e3),
        Experiment("E4", "e4_valley.yaml", run_e4),
        Experiment("E5", "e5_memorization.yaml", run_e5),
        Experiment("E6", "e6_icl.yaml", run_e6),
    )
}


def get_experiment(experiment: str) -> Experiment:
    if experiment not in EXPERIMENTS:
        raise UserError(f"experiment {experiment}: unknown (choose from {', '.join(EXPERIMENTS)})")
    return EXPERIMENTS[experiment]


def spec_path(experiment: str) -> Path:
    """The shipped YAML of `experiment`."""
    return get_experiment(experiment).spec_path


def run_experiment(
    experiment: str,
    quick: bool = False,
    budget_minutes: float | None = None,
    out: Path | None = None,
    spec_file: Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run one experiment end to end (its YAML, or `spec_file`); returns the results written
    to OUT/EXP/results.json."""
    exp = get_experiment(experiment)
    spec = load_spec(spec_file or exp.spec_path, experiment, quick)
    command = command_line(experiment, quick, budget_minutes, out, spec_file)
    return run(spec, exp.run, command, budget_minutes=budget_minutes, out=out, quiet=quiet)
