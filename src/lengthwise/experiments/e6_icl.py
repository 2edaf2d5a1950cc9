"""E6 three strategies on the same problems: fixed-length training (concat_chunk), a
variable-length curriculum (decomposition + Grow-P2) and in-context learning with a scratchpad
on a pretrained model (0/1/4/8 demonstrations, direct vs scratchpad), each at 1x/2x/4x the
longest training (= demonstrated) length, with training FLOPs, inference tokens per answer, a
memorization measure, and the pretrained model's generalization valley (Scylla's protocol).

Training data: `problems_per_task` problems per task (lengths lo..hi, direct format, no problem
with a held-out value: `values: seen`), shuffled and written as JSONL documents of several
problems each, one per line (``a+b=c\\n...``), a document holding 1..`max_problems` problems
(log-uniform). Dataset Decomposition works on documents; single short problems would be cut into
power-of-two pieces that separate answers from their prompts, and a document of problems is how
worked examples appear in pretraining text. Both trained rows read the same store with the same
token budget; only the batching differs.

Test problems: per task and multiple m, `n` problems of length m x hi, drawn once (excluding the
training problems and every demonstration) and rendered in each format from the same seed, so
every row answers exactly the same problems. Demonstrations are nested (the K-shot prompt uses
the first K of one anchored set of 8, the first at length hi: lengthwise.eval.incontext).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

from lengthwise.errors import UserError
from lengthwise.eval.plots import save_figure
from lengthwise.experiments.runner import Context, cell, md_table, plotting, train_point
from lengthwise.io import atomic_write_text

FORMATS = ("direct", "scratchpad")
MAX_SHOTS = 8  # one anchored set of demonstrations per task and format; K-shot uses its first K
MIN_SIDE = 10  # problems on each side of a memorization comparison before it says anything


# ---------------------------------------------------------------------- data


def _lengths(s: dict[str, Any]) -> tuple[int, int]:
    lo, hi = s.get("lengths", [2, 4])
    return int(lo), int(hi)


def training_problems(s: dict[str, Any]) -> list[Any]:
    """The trained problems of every task (direct format, no held-out value)."""
    from lengthwise.tasks import generate_items

    out = []
    for k, name in enumerate(s["tasks"]):
        n = int(s.get("problems_per_task", 20_000))
        out += generate_items(name, _lengths(s), n, "direct", k, values="seen")
    return out


def training_documents(items: list[Any], s: dict[str, Any]) -> list[str]:
    """The problems shuffled and grouped into documents of 1..max_problems problems (log-uniform
    sizes), one problem per line."""
    rng = random.Random(int(s.get("seed", 0)))
    order = list(items)
    rng.shuffle(order)
    top = int(s.get("max_problems", 64))
    docs, i = [], 0
    while i < len(order):
        size = min(len(order) - i, int(math.exp(rng.uniform(0, math.log(top + 1)))))
        docs.append("\n".join(it.prompt + it.completion for it in order[i : i + max(1, size)]))
        i += max(1, size)
    return docs


def write_documents(docs: list[str], path: Path) -> None:
    text = "".join(json.dumps({"text": d}) + "\n" for d in docs)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return  # unchanged: `prepare` sees the same input
    atomic_write_text(path, text)


def eval_problems(
    s: dict[str, Any], trained: set[str]
) -> tuple[dict[str, list[Any]], dict[tuple[str, str, float], list[Any]], dict[str, dict]]:
    """(demonstrations per task (8, anchored, direct and scratchpad by format), test items per
    (task, format, multiple), memorization items per task: {"seen": [...], "unseen": [...]})."""
    from lengthwise.eval.incontext import anchored_demonstrations
    from lengthwise.tasks import generate_items, get_task

    lo, hi = _lengths(s)
    n, kmax = int(s.get("n", 20)), MAX_SHOTS
    demos, items, memo = {}, {}, {}
    for k, name in enumerate(s["tasks"]):
        task = get_task(name)
        for fmt in FORMATS:
            demos[(name, fmt)] = anchored_demonstrations(task, (lo, hi), kmax, fmt, k, trained)
        used = trained | {d.key for d in demos[(name, "direct")]}
        for m in s.get("multiples", [1, 2, 4]):
            length = round(float(m) * hi)
            for fmt in FORMATS:  # the same seed: the same problems in both formats
                items[(name, fmt, float(m))] = list(
                    generate_items(task, (length, length), n, fmt, 60_000 + k, exclude=used)
                )
        n_mem = int(s.get("n_memorization", n))
        memo[name] = {
            v: list(generate_items(task, (lo, hi), n_mem, "direct", 70_000 + k, used, values=v))
            for v in ("seen", "unseen")
        }
    return demos, items, memo


# ---------------------------------------------------------------------- rows


def training_flops(run_dir: Path, model: Any, steps: int, tokens_per_step: int) -> float:
    """Training FLOPs (6N + causal attention per token, the model's own flops_per_token) summed
    over the steps' sequence lengths as logged (`seq_lens` of the train records); steps after
    the last record are counted at the logged steps' mean."""
    from lengthwise.rundir import RunDir

    lens = [L for r in RunDir(run_dir).metrics() if r["event"] == "train" for L in r["seq_lens"]]
    if not lens:
        return float("nan")
    per_step = [model.flops_per_token(L) * tokens_per_step for L in lens]
    return sum(per_step) + (steps - len(lens)) * sum(per_step) / len(per_step)


def _score(lm: Any, task: Any, items: list[Any], batch: int, stop: str | None) -> Any:
    from lengthwise.eval.accuracy import score_items

    return score_items(lm, task, items, batch_size=batch, stop=stop)


def _cells(lm, s, items, fmt, prompts, stop) -> tuple[dict, list[int], dict]:
    """Accuracy per task and multiple, tokens per answer of every item, parse rates."""
    from lengthwise.tasks import get_task

    acc: dict[str, dict[str, float]] = {}
    parse: dict[str, dict[str, float]] = {}
    tokens: list[int] = []
    scores = {}
    for name in s["tasks"]:
        task = get_task(name)
        for m in s.get("multiples", [1, 2, 4]):
            score = _score(lm, task, prompts(name, items[(name, fmt, float(m))]), 32, stop)
            acc.setdefault(name, {})[f"{m:g}x"] = score.accuracy
            parse.setdefault(name, {})[f"{m:g}x"] = score.parse_rate
            tokens += [
                p + g for p, g in zip(score.prompt_tokens, score.generated_tokens, strict=True)
            ]
            scores[(name, float(m))] = score
    return {"acc": acc, "parse_rate": parse}, tokens, scores


def trained_row(ctx: Context, point: Any, items: dict, memo: dict) -> tuple[dict, Path]:
    from lengthwise.eval.suites import load_lm
    from lengthwise.tasks import get_task

    s = ctx.spec.settings
    run_dir, cfg, summary = train_point(ctx, point)
    lm = load_lm(run_dir)
    t0 = time.time()
    cells, tokens, _ = _cells(lm, s, items, "direct", lambda _n, its: its, "\n")
    seen_unseen = {}
    for v in ("seen", "unseen"):
        correct = total = 0
        for name in s["tasks"]:
            score = _score(lm, get_task(name), memo[name][v], 64, "\n")
            correct, total = correct + score.correct, total + score.total
        seen_unseen[v] = {"acc": correct / total if total else None, "n": total}
    a, b = seen_unseen["seen"]["acc"], seen_unseen["unseen"]["acc"]
    flops = training_flops(run_dir, lm.model, summary["steps"], cfg.batching.tokens_per_step)
    row = {
        "name": point.name,
        "kind": "trained",
        "strategy": cfg.batching.strategy
        + (f" + {cfg.batching.curriculum.name}" if cfg.batching.curriculum.name != "none" else ""),
        "format": "direct",
        "shots": None,
        "params": sum(p.numel() for p in lm.model.parameters()),
        "train_tokens": summary["tokens"],
        "train_steps": summary["steps"],
        "train_wall_seconds": summary["wall_seconds"],
        "train_cpu_seconds": summary["cpu_seconds"],
        "training_flops": flops,
        "tokens_per_answer": sum(tokens) / len(tokens) if tokens else None,
        **cells,
        "memorization": {
            "measure": "accuracy on fresh problems of the training lengths whose values were all "
            "seen in training vs problems with a held-out value",
            **seen_unseen,
            "gap": a - b if a is not None and b is not None else None,
        },
        "eval_seconds": round(time.time() - t0, 1),
        "run_dir": str(run_dir),
    }
    return row, run_dir


def icl_rows(lm: Any, s: dict[str, Any], demos: dict, items: dict, log) -> list[dict]:
    """One row per (shots, format) of settings.icl."""
    from lengthwise.eval.fewshot import FewShot, with_demos
    from lengthwise.eval.incontext import demo_overlap, overlap_split

    chat = bool(s.get("chat_template", True))
    rows = []
    for spec in s.get("icl", []):
        k, fmt = int(spec["shots"]), str(spec["format"])
        t0 = time.time()

        def prompts(name: str, its: list[Any], k: int = k, fmt: str = fmt) -> list[Any]:
            return with_demos(lm, demos[(name, fmt)][:k], its, chat)

        cells, tokens, scores = _cells(lm, s, items, fmt, prompts, FewShot(k, fmt, chat).stop)
        memo: dict[str, Any] = {"measure": "none applies: no demonstrations"}
        if k:
            overlap, correct = [], []
            for name in s["tasks"]:
                m1 = float(s.get("multiples", [1, 2, 4])[0])
                overlap += demo_overlap(items[(name, fmt, m1)], demos[(name, fmt)][:k])
                correct += scores[(name, m1)].per_item
            memo = {
                "measure": "1x accuracy of problems sharing a value/operand with the "
                "demonstrations vs sharing none",
                **overlap_split(overlap, correct),
            }
        name = f"icl_{k}shot_{fmt}"
        log(f"[E6] {name}: {time.time() - t0:.0f}s")
        rows.append(
            {
                "name": name,
                "kind": "icl",
                "strategy": f"{k}-shot" + (" (chat template)" if chat else ""),
                "format": fmt,
                "shots": k,
                "training_flops": 0.0,
                "tokens_per_answer": sum(tokens) / len(tokens) if tokens else None,
                **cells,
                "memorization": memo,
                "eval_seconds": round(time.time() - t0, 1),
            }
        )
    return rows


def pretrained_lm(s: dict[str, Any], log) -> Any:
    """settings.pretrained: a known model name (pulled and cached on first use) or a folder."""
    from lengthwise.eval.pretrained import MODELS, pull
    from lengthwise.eval.suites import load_lm

    target = str(s.get("pretrained", "smollm2-135m"))
    if target in MODELS:
        folder, converted = pull(target, log=log)
        if converted:
            log(f"[E6] {target}: converted once to {folder}")
    else:
        folder = Path(target)
        if not folder.is_dir():
            raise UserError(
                f"E6 settings.pretrained: {target} is neither a known model nor a folder"
            )
    return load_lm(folder, chat=bool(s.get("chat_template", True)))


def icl_valley(lm: Any, s: dict[str, Any], out: Path, log) -> dict[str, Any]:
    """Scylla's ID/OOD protocol on the pretrained model: `lengthwise eval MODEL --suite valley
    --probe` (lengthwise.eval.suites.suite_valley_probe), its files in OUT/E6/valley/."""
    from lengthwise.eval.fewshot import FewShot
    from lengthwise.eval.suites import suite_valley_probe

    v = dict(s.get("valley") or {})
    few = FewShot(int(v.get("shots", 4)), v.get("format", "direct"), s.get("chat_template", True))
    t0 = time.time()
    (out / "valley").mkdir(parents=True, exist_ok=True)
    result, text = suite_valley_probe(
        lm,
        out / "valley",
        n=int(v.get("n", 16)),
        few=few,
        lengths=tuple(int(x) for x in v.get("lengths", [4, 6])),
        tasks=v.get("tasks"),
        generations=int(v.get("probe_generations", 16)),
        probe_tokens=int(v.get("probe_tokens", 160)),
        value_max=int(v.get("value_max", 99)),
    )
    if (out / "valley" / "valley.png").is_file():
        shutil.copyfile(out / "valley" / "valley.png", out / "e6_valley.png")
    log(f"[E6] valley: {time.time() - t0:.0f}s")
    return {**result, "valley_text": text, "seconds": round(time.time() - t0, 1)}


# ---------------------------------------------------------------------- the experiment


def check_settings(s: dict[str, Any], where: str) -> None:
    """Every setting the rows use, before any training: one line naming the key."""
    from lengthwise.eval.pretrained import MODELS
    from lengthwise.tasks import get_task, task_names

    known = set(task_names())
    for name in s.get("tasks") or []:
        if name not in known:
            raise UserError(f"{where}: settings.tasks: unknown task {name!r}")
    if not s.get("tasks"):
        raise UserError(f"{where}: settings.tasks: name at least one task")
    lo, hi = _lengths(s)
    if not 1 <= lo <= hi:
        raise UserError(f"{where}: settings.lengths: expected [lo, hi] with 1 <= lo <= hi")
    for spec in s.get("icl") or []:
        k, fmt = spec.get("shots"), spec.get("format")
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= MAX_SHOTS:
            raise UserError(
                f"{where}: settings.icl: shots must be an int in 0..{MAX_SHOTS}, got {k!r}"
            )
        for name in s["tasks"]:
            if fmt not in get_task(name).formats or fmt not in FORMATS:
                raise UserError(f"{where}: settings.icl: task {name} has no format {fmt!r}")
    target = str(s.get("pretrained", "smollm2-135m"))
    if target not in MODELS and not Path(target).is_dir():
        raise UserError(
            f"{where}: settings.pretrained: {target} is neither a known model "
            f"({', '.join(MODELS)}) nor a folder"
        )


def run_e6(ctx: Context) -> tuple[dict[str, Any], str, list[Path]]:
    s = ctx.spec.settings
    check_settings(s, str(ctx.spec.path))
    trained = training_problems(s)
    write_documents(training_documents(trained, s), ctx.exp_dir / "train_docs.jsonl")
    demos, items, memo = eval_problems(s, {it.key for it in trained})
    rows, run_dirs = [], []
    for point in ctx.spec.points:
        row, run_dir = trained_row(ctx, point, items, memo)
        rows.append(row)
        run_dirs.append(run_dir)
    t0 = time.time()
    lm = pretrained_lm(s, ctx.log)
    ctx.log(f"[E6] pretrained model {lm.name} loaded in {time.time() - t0:.0f}s")
    rows += icl_rows(lm, s, demos, items, ctx.log)
    valley = icl_valley(lm, s, ctx.exp_dir, ctx.log) if s.get("valley") is not None else None
    results = {
        "tasks": list(s["tasks"]),
        "lengths": list(_lengths(s)),
        "multiples": [float(m) for m in s.get("multiples", [1, 2, 4])],
        "n": int(s.get("n", 20)),
        "pretrained": lm.name,
        "pretrained_params": sum(p.numel() for p in lm.model.parameters()),
        "chat_template": bool(s.get("chat_template", True)),
        "rows": rows,
        "valley": valley,
        "claims": claims(rows, [float(m) for m in s.get("multiples", [1, 2, 4])]),
    }
    _plot_e6(rows, s, ctx.exp_dir / "e6_accuracy_by_length.png")
    return results, _markdown(results, s), run_dirs


# ---------------------------------------------------------------------- claims, table, plot


def mean_acc(row: dict[str, Any], m: str) -> float | None:
    vals = [a[m] for a in row["acc"].values() if a.get(m) is not None]
    return sum(vals) / len(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def claims(rows: list[dict[str, Any]], multiples: list[float]) -> list[dict[str, str]]:
    """The motivating table's claims, each with the rule applied to the numbers and a verdict:
    supported, not supported, or not testable here (and why). "Beyond the training length" is
    the second multiple (2x), "up to" the last (4x)."""
    ms = sorted(multiples)
    base, near, far = (f"{m:g}x" for m in (ms[0], ms[min(1, len(ms) - 1)], ms[-1]))
    fixed = next(
        (r for r in rows if r["kind"] == "trained" and "decomposition" not in r["strategy"]), None
    )
    curr = next(
        (r for r in rows if r["kind"] == "trained" and "decomposition" in r["strategy"]), None
    )
    icl = [r for r in rows if r["kind"] == "icl" and r["shots"]]
    out = []

    def add(claim: str, measured: str, verdict: str) -> None:
        out.append({"claim": claim, "measured": measured, "verdict": verdict})

    def generalizes(r: dict[str, Any], m: str, keep: float) -> tuple[str, str]:
        a1, am = mean_acc(r, base), mean_acc(r, m)
        text = f"{r['name']}: {cell(a1, '.2f')} at {base}, {cell(am, '.2f')} at {m}"
        if a1 is None or a1 < 0.2:
            return text, "not testable: accuracy at 1x below 0.2 (nothing to keep)"
        return text, "supported" if am is not None and am >= keep * a1 else "not supported"

    if fixed:
        a1, a2 = mean_acc(fixed, base), mean_acc(fixed, near)
        text = f"{fixed['name']}: {cell(a1, '.2f')} at {base}, {cell(a2, '.2f')} at {near}"
        if a1 is None or a1 < 0.2:
            verdict = "not testable: accuracy at 1x below 0.2"
        else:
            verdict = "supported" if (a2 or 0) < 0.5 * a1 else "not supported"
        add(
            f"fixed length fails beyond the training length ({near} < half of {base})",
            text,
            verdict,
        )
    if fixed and curr:
        r = _ratio(fixed["training_flops"], curr["training_flops"])
        add(
            "fixed length costs more than the curriculum (training FLOPs at equal tokens >= 1.1x)",
            f"{cell(r, '.3f')}x the curriculum's FLOPs",
            "supported" if r and r >= 1.1 else "not supported (less than 1.1x)",
        )
        gf, gc = fixed["memorization"]["gap"], curr["memorization"]["gap"]
        seen = [r["memorization"]["seen"]["acc"] or 0.0 for r in (fixed, curr)]
        if gf is None or gc is None or min(seen) < 0.2:
            verdict = "not testable: seen-value accuracy below 0.2 (nothing memorized to lose)"
        else:
            verdict = "supported" if gf > gc + 0.05 else "not supported"
        add(
            "fixed length memorizes more than the curriculum (seen - unseen gap larger by > 0.05)",
            f"gap {cell(gf, '+.3f')} (fixed) vs {cell(gc, '+.3f')} (curriculum)",
            verdict,
        )
    if curr:
        text, verdict = generalizes(curr, far, 0.8)
        add(f"the curriculum is strong up to {far} ({far} >= 0.8 x {base})", text, verdict)
    scratch = [r for r in icl if r["format"] == "scratchpad"]
    if scratch:
        best = max(scratch, key=lambda r: mean_acc(r, base) or 0.0)
        text, verdict = generalizes(best, far, 0.8)
        claim = f"ICL with a scratchpad generalizes very strongly (best scratchpad row, {far} >= "
        add(claim + f"0.8 x {base})", text, verdict)
    memo = [r["memorization"] for r in icl if r["memorization"].get("gap") is not None]
    memo = [m for m in memo if min(m["shared_n"], m["none_n"]) >= MIN_SIDE]
    if icl:
        worst = max((m["gap"] for m in memo), key=abs, default=None)
        add(
            "ICL has a very low memorization risk (abs(acc shared - acc none) <= 0.1 in every "
            f"row with >= {MIN_SIDE} problems on each side)",
            f"largest gap {cell(worst, '+.3f')} over {len(memo)} rows",
            "not testable: no row has enough problems on both sides"
            if worst is None
            else ("supported" if abs(worst) <= 0.1 else "not supported"),
        )
    if icl and fixed:
        heavy = max(icl, key=lambda r: r["tokens_per_answer"] or 0)
        r = _ratio(heavy["tokens_per_answer"], fixed["tokens_per_answer"])
        add(
            "ICL is inference-heavy (tokens per answer against a trained model's)",
            f"{heavy['name']}: {cell(heavy['tokens_per_answer'], '.0f')} tokens per answer, "
            f"{cell(r, '.1f')}x {fixed['name']}",
            "supported" if r and r > 2 else "not supported",
        )
    return out


def _markdown(res: dict[str, Any], s: dict[str, Any]) -> str:
    ms = [f"{m:g}x" for m in res["multiples"]]
    headers = ["row", "strategy", "format", "training FLOPs", "tokens / answer"]
    headers += [f"acc {m}" for m in ms] + ["memorization"]
    lines = []
    for r in res["rows"]:
        memo = r["memorization"]
        if r["kind"] == "trained":
            mtext = (
                f"seen {cell(memo['seen']['acc'], '.2f')} / unseen "
                f"{cell(memo['unseen']['acc'], '.2f')}"
            )
        elif r["shots"]:
            mtext = (
                f"shared {cell(memo['shared_acc'], '.2f')} (n {memo['shared_n']}) / none "
                f"{cell(memo['none_acc'], '.2f')} (n {memo['none_n']})"
            )
        else:
            mtext = "n/a (no demonstrations)"
        lines.append(
            [
                r["name"],
                r["strategy"],
                r["format"],
                cell(r["training_flops"], ".2e") if r["training_flops"] else "0 (ours)",
                cell(r["tokens_per_answer"], ".0f"),
                *[cell(mean_acc(r, m), ".2f") for m in ms],
                mtext,
            ]
        )
    lo, hi = res["lengths"]
    parts = [md_table(headers, lines), ""]
    task_headers = ["row"] + [f"{t} {m}" for t in res["tasks"] for m in ms]
    task_lines = [
        [r["name"]] + [cell(r["acc"][t][m], ".2f") for t in res["tasks"] for m in ms]
        for r in res["rows"]
    ]
    parts += ["Accuracy per task:", "", md_table(task_headers, task_lines), ""]
    parts += ["Claims of the motivating table, checked against these numbers:", ""]
    parts.append(
        md_table(
            ["claim", "measured", "verdict"],
            [[c["claim"], c["measured"], c["verdict"]] for c in res["claims"]],
        )
    )
    v = res["valley"]
    if v:
        crit = v.get("critical")
        parts += [
            "",
            f"Generalization valley of {res['pretrained']} ({v['shots']}-shot, {v['format']}, "
            f"lists of {v['lengths'][0]}-{v['lengths'][1]}, {v['n_per_side']} problems per side "
            f"and task; tasks: {', '.join(v['tasks'])}): critical complexity "
            + (f"{crit['complexity']} (level {crit['level']})." if crit else "none."),
            f"ID values (probed, {v['probe']['lists']} lists): {v['probe']['id_values']}; "
            f"OOD: the other {v['probe']['ood_values']} values of 0..{v['value_max']}."
            + (f" Skipped: {v['skipped']}." if v["skipped"] else ""),
            "",
            "```",
            v["valley_text"],
            "```",
        ]
    parts += [
        "",
        f"- Problems: {', '.join(res['tasks'])}; length = digits per operand (addition) or list "
        f"size; trained on lengths {lo}-{hi}, so 1x = {hi}; {res['n']} test problems per task and "
        "length, the same problems for every row.",
        f"- Pretrained: {res['pretrained']} ({res['pretrained_params']:,} parameters)"
        + (", prompts through its chat template" if res["chat_template"] else ", plain prompts")
        + "; its training FLOPs are not ours (SmolLM2-135M: ~2T pretraining tokens, "
        "6ND ~ 1.6e21 FLOPs).",
        "- tokens / answer: prompt + generated tokens per test problem, mean over all lengths.",
        "- Plots: e6_accuracy_by_length.png" + (", e6_valley.png" if v else "") + ".",
    ]
    return "\n".join(parts) + "\n"


def _plot_e6(rows: list[dict[str, Any]], s: dict[str, Any], path: Path) -> Path:
    _, plt = plotting()
    tasks = list(s["tasks"])
    ms = [float(m) for m in s.get("multiples", [1, 2, 4])]
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4.2 * (len(tasks) + 1), 4.2), sharey=True)
    for k, r in enumerate(rows):
        style = "-" if r["format"] == "direct" else "--"
        width = 2.5 if r["kind"] == "trained" else 1.2
        label = r["name"]
        for ax, name in zip(axes, ["mean", *tasks], strict=True):
            ys = [
                mean_acc(r, f"{m:g}x") if name == "mean" else r["acc"][name][f"{m:g}x"] for m in ms
            ]
            ax.plot(ms, ys, style, marker="o", lw=width, color=f"C{k}", label=label)
    for ax, name in zip(axes, ["mean over tasks", *tasks], strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ms)
        ax.set_xticklabels([f"{m:g}x" for m in ms])
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.set_xlabel("length (x the longest trained/demonstrated)")
    axes[0].set_ylabel("accuracy")
    axes[-1].legend(fontsize="x-small", loc="upper right")
    fig.suptitle("E6: accuracy against length, per strategy (dashed: scratchpad)")
    return save_figure(fig, path)
