"""Diagnostic suites: `lengthwise eval TARGET --suite lengths|valley|memorization`.

TARGET is a run directory (its `export/`), an export folder, or a Hugging Face causal LM folder.
Each suite writes SUITE.json and PNG plots into the output folder and returns a text table.
The run config (for a run directory: RUN/config.yaml; otherwise `--config`) says what the model
was trained on: the training split's task source defines the in-distribution items and lengths,
and its text splits give documents for per-position loss.

- lengths: task accuracy at 1x, 2x, 4x (configurable) the longest training length, and
  per-position loss of held-out text out to the largest multiple of the training context. With
  `--shots K`, 1x is the longest *demonstrated* length (per task), so 2x/4x mean for in-context
  learning what they mean for training.

Every task suite takes `FewShot` settings (lengthwise.eval.fewshot): K demonstrations from the
training length range in the prompt, another `--format`, a chat template; each row reports prompt
and generated tokens per item beside accuracy and parse rate.
- valley: per complexity level, accuracy on items the model trained on (ID) and on fresh items
  of the same lengths (OOD); the critical complexity is the level with the largest gap.
- memorization: per-item accuracy against how often the item's terms occur in the training data.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lengthwise.config import Config, SourceConfig
from lengthwise.data.sources import iter_documents, task_names, task_source_items
from lengthwise.data.store import TokenStore
from lengthwise.data.tokenizer import load_tokenizer
from lengthwise.errors import UserError
from lengthwise.eval.accuracy import positions_needed, score_items
from lengthwise.eval.fewshot import (
    FewShot,
    check_chat,
    check_chat_folder,
    demonstrations,
    with_demos,
)
from lengthwise.eval.lm import EvalLM
from lengthwise.io import atomic_write_text
from lengthwise.rundir import RunDir
from lengthwise.tasks import generate_items, get_task

SUITES = ("lengths", "valley", "memorization")


# ---------------------------------------------------------------------- loading


def check_device(device: str) -> None:
    """Refuse (one line) a device string torch does not know or a device this machine lacks,
    before a model is loaded onto it (torch's own errors are tracebacks)."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device}: not a device (cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            raise UserError(f"--device {device}: this machine has {n} CUDA device(s); use cpu")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available here; use cpu")


def check_few_shot(cfg: Config, suite: str, few: FewShot) -> None:
    """The few-shot settings against the training split, before a model is loaded."""
    if not few.active:
        return
    src = cfg.data.splits.get("train")
    if src is None or src.kind != "task":
        raise UserError(
            f"--shots/--format/--chat-template: the config's train split is not a task source, "
            f"so the {suite} suite has no task items to prompt"
        )
    tasks = [get_task(t, **src.params) for t in task_names(src)]
    few.check(tasks, src.format)
    for task in tasks:  # enough distinct demonstrations (cheap: K items drawn)
        demonstrations(task, tuple(src.lengths), few.shots, few.format_for(src.format), few.seed)


def load_lm(
    target: Path, device: str = "cpu", prompt_template: str = "{prompt}", chat: bool = False
) -> EvalLM:
    """A lengthwise run directory or export folder, a Hugging Face causal LM folder, or a
    `.gguf` file (converted by transformers on every load: `lengthwise models pull` caches).
    `chat`: refuse, before loading, a model whose tokenizer has no chat template."""
    check_device(device)
    target = Path(target)
    if target.suffix == ".gguf":
        from lengthwise.eval.hf import HFCausalLM
        from lengthwise.eval.pretrained import load_gguf

        model, tokenizer = load_gguf(target)
        lm = HFCausalLM(
            model, tokenizer, device=device, prompt_template=prompt_template, name=target.stem
        )
        if chat:
            check_chat(lm)
        return lm
    name = target.name
    run = RunDir(target)
    if run.is_run() and run.export_dir.is_dir():
        target = run.export_dir  # named after the run, not "export"
    meta_path = target / "config.json"
    if not meta_path.is_file():
        raise UserError(f"{target}: not a run, an export folder or a Hugging Face model folder")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{meta_path}: not valid JSON") from None
    if meta.get("format") == "lengthwise":
        from lengthwise.eval.lengthwise_lm import LengthwiseLM

        if chat:
            raise UserError(
                f"--chat-template: {name} is a lengthwise model, it has no chat template"
            )

        lm = LengthwiseLM.from_export(target, device=device)
        lm.name = name
        return lm
    from lengthwise.eval.hf import HFCausalLM

    if chat:
        check_chat_folder(target)

    return HFCausalLM.from_pretrained(target, device=device, prompt_template=prompt_template)


def run_config(target: Path, config: Path | None) -> Config:
    from lengthwise.config import load_config

    if config is not None:
        return load_config(config)
    if RunDir(target).is_run():
        return RunDir(target).config()
    raise UserError(f"{target}: not a run directory; pass --config (the training data config)")


def train_task_source(cfg: Config, suite: str) -> SourceConfig:
    src = cfg.data.splits.get("train")
    if src is None or src.kind != "task":
        raise UserError(
            f"--suite {suite}: the config's train split is not a task source (data.splits.train "
            "with kind: task), so there are no training items to compare against"
        )
    return src


def write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=_jsonable))


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON-able: {type(x)}")


# ---------------------------------------------------------------------- lengths


def check_positions(lm: EvalLM, needed: int, what: str) -> None:
    """Learned and sinusoidal position tables end at `max_position` (`lm.max_positions`; models
    without it have no such limit): refuse, before any work, an evaluation whose sequences need
    more positions, instead of failing halfway through the suite."""
    limit = getattr(lm, "max_positions", None)
    if limit is not None and needed > limit:
        raise UserError(
            f"--suite lengths: {what} needs {needed} positions, but {lm.name} has a position "
            f"table of max_position {limit}; choose smaller --multiples"
        )


def length_accuracy(
    lm: EvalLM,
    src: SourceConfig,
    multiples: list[float],
    n: int,
    batch_size: int,
    few: FewShot | None = None,
) -> list[dict[str, Any]]:
    """Per task and multiple m: items of exactly round(m x base length), the base being the
    longest training length, or with demonstrations the longest demonstrated one. Every item is
    generated (and checked against the model's positions) before any is scored."""
    few = few or FewShot()
    fmt = few.format_for(src.format)
    keys = {it.key for it in task_source_items(src)}
    todo = []
    for name in task_names(src):
        task = get_task(name, **src.params)
        demos = demonstrations(task, tuple(src.lengths), few.shots, fmt, few.seed)
        base = max((d.length for d in demos), default=src.lengths[1])
        used = keys | {d.key for d in demos}
        for m in multiples:
            length = max(1, round(m * base))
            fresh = generate_items(
                task, (length, length), n, fmt, 10_000 + int(100 * m), exclude=used
            )
            items = with_demos(lm, demos, list(fresh), few.chat)
            check_positions(lm, positions_needed(lm, items), f"{name} at {m:g}x ({length})")
            todo.append((name, task, m, length, base, items))
    rows = []
    for name, task, m, length, base, items in todo:
        score = score_items(lm, task, items, batch_size=batch_size, stop=few.stop)
        row = {"task": name, "multiple": m, "length": length, "base_length": base}
        rows.append({**row, **score.to_dict()})
    return rows


def position_losses(
    lm: EvalLM, store: TokenStore, tokenizer_path: Path, n_tokens: int, n_docs: int
) -> tuple[list[float], int]:
    """Mean loss at each position 0..n_tokens-2 over the longest documents of a store (text
    re-encoded by the model's own tokenizer, so any model can be scored); the documents used.
    Stores with coupled position ids are refused: re-encoded text would lose them."""
    if store.positions is not None:
        raise UserError(
            f"--suite lengths: {store.path} holds coupled position ids; the per-position loss "
            "reads plain text (name a text split with --text-split)"
        )
    tok = load_tokenizer(tokenizer_path)
    order = np.argsort(-store.lengths, kind="stable")[: 4 * n_docs]
    sums = np.zeros(n_tokens - 1)
    counts = np.zeros(n_tokens - 1)
    used = 0
    for d in order:
        ids = lm.encode(tok.decode(store.doc(int(d)).tolist()))[:n_tokens]
        if len(ids) < 2:
            continue
        losses = np.asarray(lm.token_losses(ids))
        sums[: len(losses)] += losses
        counts[: len(losses)] += 1
        used += 1
        if used == n_docs:
            break
    with np.errstate(invalid="ignore"):
        mean = sums / counts
    return [float(x) for x in mean[counts > 0]], used


def suite_lengths(
    lm: EvalLM,
    cfg: Config,
    out: Path,
    multiples: list[float],
    n: int = 200,
    text_split: str | None = None,
    n_docs: int = 8,
    batch_size: int = 64,
    few: FewShot | None = None,
) -> tuple[dict[str, Any], str]:
    from lengthwise.eval import plots

    few = few or FewShot()
    result: dict[str, Any] = {"model": lm.name, "multiples": multiples}
    lines = []
    split = text_split or next(
        (s for s, c in cfg.data.splits.items() if c.kind != "task" and s != "train"), None
    )
    train_len = cfg.batching.max_len
    n_tokens = int(max(multiples) * train_len) + 1
    store = None
    if split is not None:  # checked before the task items, so nothing is computed in vain
        check_positions(lm, n_tokens - 1, f"per-position loss to {max(multiples):g}x {train_len}")
        store = TokenStore(cfg.data.out_dir / split)
    src = cfg.data.splits.get("train")
    check_few_shot(cfg, "lengths", few)
    if src is not None and src.kind == "task":
        few.check([get_task(t, **src.params) for t in task_names(src)], src.format, lm)
        rows = length_accuracy(lm, src, multiples, n, batch_size, few)
        result["task"] = {
            "train_max_length": src.lengths[1],
            "format": few.format_for(src.format),
            **few.to_dict(),
            "rows": rows,
        }
        plots.plot_length_accuracy(rows, out / "lengths_accuracy.png")
        if few.shots:
            bases = ", ".join(
                f"{t} {b}" for t, b in {r["task"]: r["base_length"] for r in rows}.items()
            )
            lines.append(
                f"{few.shots}-shot prompts: 1x is the longest demonstrated length ({bases})"
            )
        lines.append(
            f"{'task':<16}{'x':>6}{'length':>8}{'acc':>8}{'parsed':>8}{'n':>6}"
            f"{'prompt tok':>12}{'gen tok':>10}  (mean/max per item)"
        )
        for r in rows:
            lines.append(
                f"{r['task']:<16}{r['multiple']:>5g}x{r['length']:>8}{r['acc']:>8.3f}"
                f"{r['parse_rate']:>8.3f}{r['n']:>6}{_cost(r, 'prompt'):>12}{_cost(r, 'gen'):>10}"
            )
    if store is not None:
        curve, used = position_losses(
            lm, store, cfg.data.out_dir / "tokenizer.json", n_tokens, n_docs
        )
        bands = {}
        edges = [0, *[int(m * train_len) for m in sorted(multiples)]]
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            part = [x for x in curve[lo:hi] if math.isfinite(x)]
            bands[f"{lo}-{hi}"] = float(np.mean(part)) if part else float("nan")
        result["text"] = {
            "split": split,
            "train_len": train_len,
            "docs": used,
            "per_position_loss": curve,
            "band_loss": bands,
        }
        plots.plot_position_loss({lm.name: curve}, train_len, out / "lengths_position_loss.png")
        lines.append(f"per-position loss on '{split}' ({used} documents), by position band:")
        lines.extend(f"  {band:>12}: {loss:.4f}" for band, loss in bands.items())
    if len(result) == 2:
        raise UserError("--suite lengths: the config has no task train split and no text split")
    write_json(out / "lengths.json", result)
    return result, "\n".join(lines)


def _cost(row: dict[str, Any], what: str, prefix: str = "") -> str:
    """ "mean/max" tokens per item of a score row (what: prompt or gen)."""
    return f"{row[f'{prefix}{what}_tokens_mean']:.0f}/{row[f'{prefix}{what}_tokens_max']}"


def _cost_line(name: str, row: dict[str, Any], prefix: str = "") -> str:
    return (
        f"  {name}: prompt tokens {_cost(row, 'prompt', prefix)}, "
        f"generated tokens {_cost(row, 'gen', prefix)} (mean/max per item)"
    )


# ---------------------------------------------------------------------- valley


def suite_valley(
    lm: EvalLM,
    cfg: Config,
    out: Path,
    n: int = 100,
    batch_size: int = 64,
    few: FewShot | None = None,
) -> tuple[dict[str, Any], str]:
    from lengthwise.eval import plots
    from lengthwise.eval.valley import format_valley, valley_table

    few = few or FewShot()
    src = train_task_source(cfg, "valley")
    few.check([get_task(t, **src.params) for t in task_names(src)], src.format, lm)
    fmt = few.format_for(src.format)
    # the trained problems, rendered in the evaluated format (the same keys in every format)
    trained = list(task_source_items(src.model_copy(update={"format": fmt})))
    keys = {it.key for it in trained}
    rows, costs = [], []
    for k, name in enumerate(task_names(src)):
        task = get_task(name, **src.params)
        seen = [it for it in trained if it.task == name][:n]
        demos = demonstrations(
            task, tuple(src.lengths), few.shots, fmt, few.seed, {it.key for it in seen}
        )
        used = keys | {d.key for d in demos}
        fresh = list(generate_items(task, tuple(src.lengths), n, fmt, 20_000 + k, exclude=used))
        id_score = score_items(
            lm, task, with_demos(lm, demos, seen, few.chat), batch_size=batch_size, stop=few.stop
        )
        ood_score = score_items(
            lm, task, with_demos(lm, demos, fresh, few.chat), batch_size=batch_size, stop=few.stop
        )
        id_d, ood_d = id_score.to_dict(), ood_score.to_dict()
        cost = {f"id_{c}": id_d[c] for c in id_d if "tokens" in c}
        cost.update({f"ood_{c}": ood_d[c] for c in ood_d if "tokens" in c})
        costs.append(_cost_line(f"{name} ID", cost, "id_"))
        costs.append(_cost_line(f"{name} OOD", cost, "ood_"))
        rows.append(
            {
                **cost,
                "task": name,
                "complexity": task.complexity,
                "level": task.level,
                "id_correct": id_score.correct,
                "id_total": id_score.total,
                "id_parsed": id_score.parsed,
                "ood_correct": ood_score.correct,
                "ood_total": ood_score.total,
                "ood_parsed": ood_score.parsed,
            }
        )
    table = valley_table(rows)
    result = {"model": lm.name, "lengths": src.lengths, "format": fmt, **few.to_dict(), **table}
    result["rows"] = rows
    write_json(out / "valley.json", result)
    plots.plot_valley(table, out / "valley.png")
    return result, "\n".join([format_valley(table), "inference cost:", *costs])


def suite_valley_probe(
    lm: EvalLM,
    out: Path,
    n: int = 16,
    batch_size: int = 32,
    few: FewShot | None = None,
    lengths: tuple[int, int] = (4, 6),
    tasks: list[str] | None = None,
    generations: int = 16,
    probe_tokens: int = 160,
    value_max: int = 99,
) -> tuple[dict[str, Any], str]:
    """The valley of a model whose training data we do not have (`--suite valley --probe`):
    Scylla's protocol (lengthwise.eval.incontext): ID values are the numbers the model writes
    when asked for test inputs, OOD values the rest of 0..value_max; per ladder task, `n`
    problems of `lengths` from each side, with `few.shots` demonstrations from the same side."""
    from lengthwise.eval import plots
    from lengthwise.eval.incontext import pooled_valley, probe_values, value_pools
    from lengthwise.eval.valley import format_valley, valley_table
    from lengthwise.tasks import LADDER

    few = few or FewShot(shots=4)
    tasks = list(tasks or LADDER)
    fmt = few.format_for("direct")
    few.check([get_task(t) for t in tasks], fmt, lm)
    probe = probe_values(lm, generations, probe_tokens, few.seed, few.chat)
    id_pool, ood_pool = value_pools(probe["counts"], value_max)
    pools = {"id": id_pool, "ood": ood_pool}
    rows, skipped = pooled_valley(lm, tasks, lengths, pools, few, n, batch_size)
    table = valley_table(rows) if rows else {"levels": [], "critical": None}
    result = {
        "model": lm.name,
        "protocol": "probe",
        "tasks": tasks,
        "lengths": list(lengths),
        "format": fmt,
        "n_per_side": n,
        "value_max": value_max,
        **few.to_dict(),
        "probe": {
            "generations": generations,
            "lists": probe["lists"],
            "id_values": id_pool,
            "ood_values": len(ood_pool),
            "counts": dict(probe["counts"].most_common(30)),
            "text_sample": probe["text_sample"],
        },
        "skipped": skipped,
        **table,
        "rows": rows,
    }
    write_json(out / "valley.json", result)
    if rows:
        plots.plot_valley(table, out / "valley.png")
    lines = [
        f"probe: {probe['lists']} lists in {generations} samples; ID values {id_pool}, "
        f"OOD: the other {len(ood_pool)} of 0..{value_max}",
        format_valley(table) if rows else "no level measured",
    ]
    lines += [f"skipped {t}: {why}" for t, why in skipped.items()]
    return result, "\n".join(lines)


# ---------------------------------------------------------------------- memorization


def training_term_counts(src: SourceConfig, terms: set[str], mode: str = "numbers") -> Counter:
    """Occurrences of `terms` in a task source's training documents (answers included, noisy
    labels as trained), read in the ``direct`` rendering of the same problems: reversed and
    index_hints write 67 as "76" / "b6a7", which no term matches. Zero-padded operands count as
    written ("045" is not "45")."""
    from lengthwise.eval.memorization import count_terms

    direct = src.model_copy(update={"format": "direct"})
    return count_terms((d.text for d in iter_documents(direct)), terms, mode=mode)


def suite_memorization(
    lm: EvalLM,
    cfg: Config,
    out: Path,
    n: int = 500,
    batch_size: int = 64,
    mode: str = "numbers",
    few: FewShot | None = None,
) -> tuple[dict[str, Any], str]:
    from lengthwise.eval import plots
    from lengthwise.eval.memorization import (
        format_memorization,
        item_frequency,
        memorization_report,
    )

    few = few or FewShot()
    src = train_task_source(cfg, "memorization")
    few.check([get_task(t, **src.params) for t in task_names(src)], src.format, lm)
    fmt = few.format_for(src.format)
    trained_keys = {it.key for it in task_source_items(src)}
    items, correct, costs, cost_rows = [], [], [], {}
    for k, name in enumerate(task_names(src)):
        task = get_task(name, **src.params)
        demos = demonstrations(task, tuple(src.lengths), few.shots, fmt, few.seed)
        used = trained_keys | {d.key for d in demos}
        fresh = list(generate_items(task, tuple(src.lengths), n, fmt, 30_000 + k, exclude=used))
        prompts = with_demos(lm, demos, fresh, few.chat)
        score = score_items(lm, task, prompts, batch_size=batch_size, stop=few.stop)
        items.extend(fresh)
        correct.extend(score.per_item)
        d = score.to_dict()
        cost_rows[name] = {c: d[c] for c in d if "tokens" in c or c == "parse_rate"}
        costs.append(_cost_line(name, d))
    counts = training_term_counts(src, {t for it in items for t in it.terms}, mode)
    freq = item_frequency([it.terms for it in items], counts)
    report = memorization_report(freq, np.asarray(correct, dtype=float))
    result = {"model": lm.name, "n_items": len(items), "terms": mode, "format": fmt, **report}
    result.update(few.to_dict())
    result["per_task"] = cost_rows
    result["items"] = [
        {"key": it.key, "frequency": float(f), "correct": bool(c)}
        for it, f, c in zip(items, freq, correct, strict=True)
    ]
    write_json(out / "memorization.json", result)
    accuracy = np.asarray(correct, dtype=float)
    plots.plot_memorization(freq, accuracy, report, out / "memorization.png")
    return result, "\n".join([format_memorization(report), "inference cost:", *costs])
