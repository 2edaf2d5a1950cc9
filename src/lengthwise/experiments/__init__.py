"""`lengthwise experiment E1|E2|E3|E4|E5 [--quick] [--budget-minutes M] [--out DIR]`: one command
per experiment, one YAML per experiment (``experiments/eN_*.yaml``: a base config plus the grid).

The experiments are listed once, in ``registry.EXPERIMENTS`` (id, YAML, runner); ``spec`` reads
a YAML, ``runner`` runs one (budgets, training points, outputs, shared table and plot helpers).
Each experiment trains one run per grid point in-process (``lengthwise.train.trainer.train`` on
``load_config(base, overrides)``), evaluates the runs, and writes ``OUT/EXP/``:

    runs/<point>/       one ordinary run directory per grid point (metrics.jsonl, export/, ...)
    results.json        every number of the tables, plus the command, budget and environment
    results.md          markdown tables ready for docs/results.md, the command line on top
    *.png               plots
    report.html         when ``lengthwise.report.build_report`` is available

- **E1 efficiency** (text, the bundled corpus): every batching strategy on an equal token budget;
  tokens/s, wall time, final ID/OOD loss, per-position loss to 4x the training length, and the
  time each strategy needs to reach concat_chunk's final validation loss.
- **E2 length generalization** (addition trained on 1-10 digits): accuracy at 1x ... 16x the
  training length and on adversarial carry chains (`adversarial_items`), for positional
  encodings x {reversed}, formats x {fire}, a copy pair, the best recipe (position coupling
  with a window) on its own 5-minute budget, and a long run of the best general recipe; the
  training CPU time of every point.
- **E3 over-training** (task): a small addition set trained until it over-fits, per L1/L2 and
  dropout setting: the OOD alert, the early stop, and the OOD accuracy of the best (restored)
  checkpoint against the last one.
- **E4 generalization valley**: three model sizes trained on one multi-task source over the
  complexity ladder; the valley suite's ID/OOD accuracy and gap per level and the critical
  complexity per size.
- **E5 memorization**: per-item accuracy against training term frequency, on a task source with
  a small ``n`` (natural frequency spread) and on a deliberately skewed training set.

Budget: each grid point trains ``minutes * 60 * tokens_per_second`` tokens (rounded down to
whole steps), ``tokens_per_second`` being the YAML's estimate of the point's effective rate on
2 CPU cores (training plus evals; a point may set its own) and ``minutes`` the point's own
``minutes`` or else an equal share of ``budget_minutes`` less the fixed minutes (points with
their own minutes, ``settings.reserved_minutes``). ``--quick`` uses the YAML's ``quick:``
section: a small model and tiny budgets, a smoke test of the whole pipeline whose numbers mean
nothing. Every run records the CPU seconds its training took (``cpu_seconds``).
"""

from lengthwise.experiments.e1_efficiency import (
    eval_curve,
    eval_durations,
    median_tokens_per_s,
    run_e1,
    time_to_target,
)
from lengthwise.experiments.e2_length import (
    ADVERSARIAL,
    adversarial_items,
    e2_score_point,
    e2_targets,
    run_e2,
    score_adversarial,
    select_long_candidate,
)
from lengthwise.experiments.e3_overtraining import (
    e3_eval_items,
    item_from_dict,
    item_to_dict,
    mean_train_loss,
    run_e3,
    score_export,
)
from lengthwise.experiments.e4_valley import critical_moves_right, run_e4
from lengthwise.experiments.e5_memorization import (
    memorization_on_texts,
    run_e5,
    skewed_eval_items,
    skewed_items,
    write_skewed_jsonl,
)
from lengthwise.experiments.registry import (
    EXPERIMENTS,
    Experiment,
    get_experiment,
    run_experiment,
    spec_path,
)
from lengthwise.experiments.runner import (
    Context,
    Runner,
    cell,
    check_run_folder,
    command_line,
    environment,
    epochs_begun,
    fixed_minutes,
    md_table,
    plotting,
    point_config,
    point_minutes,
    prepare_data,
    read_records,
    tokens_per_run,
    train_point,
    write_outputs,
)
from lengthwise.experiments.spec import (
    REPO,
    Point,
    Spec,
    expand_grid,
    experiments_dir,
    load_spec,
    safe_name,
    spec_number,
)

__all__ = [
    "ADVERSARIAL",
    "EXPERIMENTS",
    "REPO",
    "Context",
    "Experiment",
    "Point",
    "Runner",
    "Spec",
    "adversarial_items",
    "cell",
    "critical_moves_right",
    "check_run_folder",
    "command_line",
    "e2_score_point",
    "e2_targets",
    "e3_eval_items",
    "environment",
    "epochs_begun",
    "eval_curve",
    "eval_durations",
    "expand_grid",
    "experiments_dir",
    "fixed_minutes",
    "get_experiment",
    "item_from_dict",
    "item_to_dict",
    "load_spec",
    "md_table",
    "mean_train_loss",
    "median_tokens_per_s",
    "memorization_on_texts",
    "plotting",
    "point_config",
    "point_minutes",
    "prepare_data",
    "read_records",
    "run_e1",
    "run_e2",
    "run_e3",
    "run_e4",
    "run_e5",
    "run_experiment",
    "safe_name",
    "score_adversarial",
    "score_export",
    "select_long_candidate",
    "skewed_eval_items",
    "skewed_items",
    "spec_number",
    "spec_path",
    "time_to_target",
    "tokens_per_run",
    "train_point",
    "write_outputs",
    "write_skewed_jsonl",
]
