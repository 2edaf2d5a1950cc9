"""The `lengthwise` command line. Every subcommand takes a config file plus `key.sub=value`
overrides; bad input ends with one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

from lengthwise import __version__
from lengthwise.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse with the house rule for bad input: one line `lengthwise: error: ...` on stderr
    and exit code 2 (argparse would print the usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"lengthwise: error: {message} (see {self.prog} --help)\n")


class _CommandParser(_Parser):
    """A subcommand's parser: options may come anywhere among the positionals, so overrides
    after a flag count (`lengthwise train CFG --resume a.b=1`; plain argparse ends the
    overrides at the first option and then rejects the rest)."""

    _intermixed = True

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if not self._intermixed:
            return super().parse_known_args(args, namespace)
        self._intermixed = False  # parse_known_intermixed_args calls parse_known_args itself
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = True


def int_at_least(low: int):
    """argparse type: an integer >= `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {low}, got {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="key.sub=value overrides, e.g. batching.max_len=512 (also after options)",
    )


def cmd_prepare(args: argparse.Namespace) -> int:
    from lengthwise.config import load_config
    from lengthwise.data.store import prepare

    cfg = load_config(args.config, args.overrides)
    prepare(cfg.data, overwrite=args.overwrite, progress=not args.quiet)
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from lengthwise.config import STRATEGY_NAMES, load_config
    from lengthwise.data.stats import (
        ModelDims,
        all_strategy_stats,
        format_not_applicable,
        format_summaries,
        format_table,
        json_records,
    )
    from lengthwise.data.store import TokenStore

    for flag, value in (("--n-layer", args.n_layer), ("--d-model", args.d_model)):
        if value < 1:
            raise UserError(
                f"{flag}: must be >= 1 (a model size for the FLOP estimate), got {value}"
            )
    strategies = tuple(args.strategies.split(",")) if args.strategies else STRATEGY_NAMES
    unknown = [s for s in strategies if s not in STRATEGY_NAMES]
    if unknown:
        choices = ", ".join(STRATEGY_NAMES)
        raise UserError(f"--strategies: unknown {unknown} (choose from {choices})")
    cfg = load_config(args.config, args.overrides)
    if args.split not in cfg.data.splits:
        raise UserError(
            f"{args.config}: no split '{args.split}' (splits: {', '.join(cfg.data.splits)})"
        )
    store = TokenStore(cfg.data.out_dir / args.split)
    rows, not_applicable = all_strategy_stats(
        store,
        cfg.batching,
        strategies,
        ModelDims(args.n_layer, args.d_model, vocab=store.meta["tokenizer"]["vocab_size"]),
    )
    if not rows:  # nothing to show: the reasons are the answer
        raise UserError(
            f"{store.path}: no strategy applies: "
            + "; ".join(f"{s}: {why}" for s, why in not_applicable.items())
        )
    if args.json:
        print(json.dumps(json_records(strategies, rows, not_applicable), indent=2))
        return 0
    b = cfg.batching
    print(
        f"store {store.path}: {store.n_docs:,} docs, {store.n_tokens:,} tokens; "
        f"{b.tokens_per_step:,} tokens/step, max_len {b.max_len}; "
        f"FLOPs for {args.n_layer} layers x d_model {args.d_model} and the "
        f"{store.meta['tokenizer']['vocab_size']:,}-way LM head, relative to concat_chunk"
    )
    print(format_table(rows))
    if not_applicable:
        print(format_not_applicable(not_applicable))
    print(format_summaries(rows))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from lengthwise.config import load_config
    from lengthwise.rundir import alert_counts
    from lengthwise.train.trainer import TrainingDiverged, train

    cfg = load_config(args.config, args.overrides)
    try:
        summary = train(cfg, resume=args.resume, quiet=args.quiet, stop_at_step=args.stop_at_step)
    except TrainingDiverged as e:
        print(f"lengthwise: training stopped: {e}", file=sys.stderr)
        return 1
    if summary is not None and not args.quiet:
        final = ", ".join(f"{k} {v:.4f}" for k, v in summary["final"].items())
        alerts = alert_counts(summary)
        print(
            f"{summary['stop_reason']}: {summary['steps']} steps, {summary['tokens']:,} tokens "
            f"in {summary['wall_seconds']:.0f}s"
            + (f"; {final}" if final else "")
            + (f"\nOOD alerts: {alerts.text()}" if alerts.total else "")
            + f"\nrun: {cfg.train.out_dir}"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lengthwise.export import export_run

    out, hf_skipped = export_run(args.run_dir, args.checkpoint, args.out, args.overwrite)
    print(f"exported {args.checkpoint} checkpoint of {args.run_dir} to {out}")
    if hf_skipped:
        print(f"no Hugging Face folder: {hf_skipped}")
    else:
        print(f"Hugging Face LlamaForCausalLM: {out / 'hf'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import tempfile

    from lengthwise.eval import suites
    from lengthwise.io import check_folder_path
    from lengthwise.rundir import RunDir

    if args.probe and args.suite != "valley":
        raise UserError(f"--probe: only for --suite valley, not {args.suite}")
    cfg = None if args.probe else suites.run_config(args.target, args.config)
    run = RunDir(args.target)
    out = args.out or (run.eval_dir if run.is_run() else Path("eval_out"))
    check_folder_path(out, "--out")
    suites.check_device(args.device)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            table = _run_suite(args, cfg, out, Path(tmp))
    except BaseException:
        if created and not any(out.iterdir()):  # a failed eval leaves no empty folder behind
            out.rmdir()
        raise
    print(table)
    print(f"written: {out / (args.suite + '.json')} (and PNG plots beside it)")
    return 0


def _run_suite(args: argparse.Namespace, cfg: Any, out: Path, tmp: Path) -> str:
    from lengthwise.eval import suites
    from lengthwise.eval.fewshot import FewShot

    target = args.target
    if args.checkpoint:  # a run's checkpoint other than its final export
        from lengthwise.export import export_run

        target, _ = export_run(args.target, args.checkpoint, tmp / "export")
    few = FewShot(args.shots, args.format, args.chat_template, args.shots_seed)
    if not args.probe:
        suites.check_few_shot(cfg, args.suite, few)  # before the model is loaded
    lm = suites.load_lm(
        target, device=args.device, prompt_template=args.prompt_template, chat=few.chat
    )
    if args.suite == "lengths":
        _, table = suites.suite_lengths(
            lm,
            cfg,
            out,
            args.multiples,
            n=args.n,
            text_split=args.text_split,
            batch_size=args.batch_size,
            few=few,
        )
    elif args.probe:
        _, table = suites.suite_valley_probe(
            lm, out, n=args.n, batch_size=args.batch_size, few=few, lengths=tuple(args.lengths)
        )
    elif args.suite == "valley":
        _, table = suites.suite_valley(lm, cfg, out, n=args.n, batch_size=args.batch_size, few=few)
    else:
        _, table = suites.suite_memorization(
            lm, cfg, out, n=args.n, batch_size=args.batch_size, mode=args.terms, few=few
        )
    return table


def cmd_report(args: argparse.Namespace) -> int:
    from lengthwise.report import build_report

    out = build_report(args.run_dirs, args.out, title=args.title, overwrite=args.overwrite)
    print(f"written: {out} (PNG figures in {out.with_name(out.stem + '_files')})")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from lengthwise.experiments.registry import run_experiment

    results = run_experiment(
        args.experiment,
        quick=args.quick,
        budget_minutes=args.budget_minutes,
        out=args.out,
        spec_file=args.spec,
        quiet=args.quiet,
    )
    where = Path(results["out_dir"]) / "results.md"
    print(f"{args.experiment} done in {results['wall_seconds']:.0f}s: {where}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lengthwise.demo import run_demo
    from lengthwise.train.trainer import TrainingDiverged

    try:
        return run_demo(args.out, budget_minutes=args.budget_minutes, quick=args.quick)
    except TrainingDiverged as e:
        print(f"lengthwise: demo training stopped: {e}", file=sys.stderr)
        return 1


def cmd_models(args: argparse.Namespace) -> int:
    from lengthwise.eval import pretrained

    if args.models_command == "list":
        for name, folder in pretrained.cached(args.cache).items():
            about = pretrained.MODELS[name].about
            print(f"{name}: {about}; {folder if folder else 'not pulled'}")
        return 0
    folder, converted = pretrained.pull(args.name, cache=args.cache)
    print(f"{args.name}: {'converted to' if converted else 'cached in'} {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lengthwise", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lengthwise {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)

    p = sub.add_parser("prepare", help="tokenize documents into token stores (one per split)")
    _add_config(p)
    p.add_argument("--overwrite", action="store_true", help="rebuild stores that exist")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("data-stats", help="compare batching strategies on a prepared store")
    _add_config(p)
    p.add_argument("--split", default="train")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--strategies", default=None, help="comma-separated subset")
    p.add_argument("--n-layer", type=int, default=4, help="model depth for the FLOP estimate")
    p.add_argument("--d-model", type=int, default=256, help="model width for the FLOP estimate")
    p.set_defaults(func=cmd_data_stats)

    p = sub.add_parser("train", help="train a model (also under torchrun)")
    _add_config(p)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument(
        "--stop-at-step",
        type=positive_int,
        default=None,
        metavar="N",
        help="checkpoint and stop after step N (same schedule; continue with --resume)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="write a run's weights, config and tokenizer to one folder")
    p.add_argument("run_dir", type=Path, help="a train.out_dir")
    p.add_argument(
        "--checkpoint", default="last", help="last (default), best, or a checkpoint folder"
    )
    p.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/export")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even if it is a non-empty folder that is not an earlier export",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="diagnostic suites: lengths, valley, memorization")
    p.add_argument(
        "target", type=Path, help="a run dir, an export folder, a HF model folder or a .gguf file"
    )
    p.add_argument("--suite", required=True, choices=("lengths", "valley", "memorization"))
    p.add_argument("--config", type=Path, default=None, help="training config (default: RUN's)")
    p.add_argument("--checkpoint", default=None, help="run dirs: last, best or a folder")
    p.add_argument("--out", type=Path, default=None, help="default: RUN/eval or ./eval_out")
    p.add_argument(
        "--n", type=positive_int, default=200, help="items per task and length (or level)"
    )
    p.add_argument(
        "--multiples", type=positive_float, nargs="+", default=[1.0, 2.0, 4.0], help="lengths suite"
    )
    p.add_argument("--text-split", default=None, help="lengths suite: split for position loss")
    p.add_argument(
        "--terms",
        default="numbers",
        choices=("numbers", "ngrams", "exact"),
        help="memorization suite: how an item's terms are counted in the training data",
    )
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompt-template", default="{prompt}", help="HF models: prompt wrapping")
    p.add_argument(
        "--shots",
        type=nonnegative_int,
        default=0,
        help="task suites: demonstrations from the training lengths before each item "
        "(lengths suite: 1x is then the longest demonstrated length)",
    )
    p.add_argument("--shots-seed", type=int, default=0, help="seed of the demonstrations")
    p.add_argument(
        "--format", default=None, help="task suites: item format (default: the training split's)"
    )
    p.add_argument(
        "--chat-template",
        action="store_true",
        help="HF models: demonstrations as user/assistant turns of the tokenizer's chat template",
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="valley suite for a model whose training data you do not have (no --config): "
        "Scylla's protocol, ID values = the numbers the model writes when asked for test inputs",
    )
    p.add_argument(
        "--lengths",
        type=positive_int,
        nargs=2,
        default=[4, 6],
        metavar=("LO", "HI"),
        help="--probe: list sizes of the ladder problems",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="one self-contained HTML page comparing run directories")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="train.out_dir(s)")
    p.add_argument("-o", "--out", type=Path, default=Path("report.html"), help="HTML file")
    p.add_argument("--title", default="lengthwise report")
    p.add_argument(
        "--overwrite", action="store_true", help="replace -o even if it is not a lengthwise report"
    )
    p.set_defaults(func=cmd_report)

    from lengthwise.experiments.registry import EXPERIMENTS  # (a light import: no torch)

    p = sub.add_parser("experiment", help="run a packaged experiment (E1-E6) end to end")
    p.add_argument("experiment", choices=tuple(EXPERIMENTS), help="which experiment")
    p.add_argument("--quick", action="store_true", help="tiny smoke-test variant (< 2 minutes)")
    p.add_argument(
        "--budget-minutes",
        type=positive_float,
        default=None,
        help="training budget (default: the YAML's)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="writes OUT/EXP/ (default: runs/experiments)"
    )
    p.add_argument("--spec", type=Path, default=None, help="another experiment YAML")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser(
        "demo", help="the main job on the bundled data: text strategies, a task, a report"
    )
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test (< 2 min)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="default: runs/demo")
    p.add_argument(
        "--budget-minutes",
        type=positive_float,
        default=10.0,
        help="time budget on CPU (default 10)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="pretrained models from a package registry (no hub needed)")
    p._intermixed = False  # argparse cannot intermix a parser that has subcommands itself
    msub = p.add_subparsers(
        dest="models_command", metavar="{pull,list}", required=True, parser_class=_CommandParser
    )
    for name, text in (("pull", "fetch and convert once to a cached HF folder"), ("list", "")):
        q = msub.add_parser(name, help=text or "known models and where they are cached")
        if name == "pull":
            q.add_argument("name", help="a known model, e.g. smollm2-135m (see: models list)")
        q.add_argument(
            "--cache",
            type=Path,
            default=None,
            help="folder of converted models (default: $LENGTHWISE_CACHE/models, else "
            "~/.cache/lengthwise/models)",
        )
        q.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (also for --help and usage errors, which argparse
    ends with SystemExit), so that tests can call it in-process."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        return args.func(args)
    except UserError as e:
        print(f"lengthwise: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lengthwise: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
