"""In-context learning measurements on a pretrained model that the suites do not make: nested
demonstration sets anchored at the longest training length, how much of a test item the
demonstrations already show, and Scylla's ID/OOD protocol for a model we did not train.

Scylla (arXiv 2410.01769; github.com/zhentingqi/scylla, 0_distrib_probing.py ...
2_gen_ood_data.py) cannot ask a pretrained model which problems it saw in training. It asks the
model instead: sampled with temperature, the model writes "random test inputs" for the task;
the numbers it writes are its in-distribution (ID) elements, the other numbers of the range are
out-of-distribution (OOD). ID problems draw their values from the ID elements, OOD problems of
the same sizes from the OOD ones, each with demonstrations from its own side. The critical
complexity is then read off the per-level ID - OOD gap as for a trained model
(lengthwise.eval.valley). Differences here, said where they are used: one probe prompt for all
list tasks (Scylla probes each task), `generations` samples (Scylla: 128), the answer opened
with ``[`` (the model continues a list instead of choosing whether to write one), and Scylla's
sampling settings (temperature 0.9, top_p 0.95, top_k 60) without its repetition penalty of
1.2, which stops a small model from repeating the digits and commas a list is made of
(SmolLM2-135M: 6 lists in 8 samples with it, mostly code; 14 without).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from lengthwise.errors import UserError
from lengthwise.eval.accuracy import score_items
from lengthwise.eval.fewshot import FewShot, demonstrations, with_demos
from lengthwise.tasks import Item, Task, generate_items, get_task

PROBE_PROMPT = (
    "Write many different lists of non-negative whole numbers to use as test inputs for "
    "programs that work on lists of numbers (finding the smallest or the k-th largest number, "
    "sorting, finding numbers that add up to a target). Put each list in square brackets, for "
    "example [x1, x2, x3, x4]. Do not write the outputs and do not write code. Keep the lists "
    "short.\n\n"
)
PROBE_SAMPLING = {"temperature": 0.9, "top_p": 0.95, "top_k": 60}
_LIST = re.compile(r"\[([0-9,\s]+)\]")


def anchored_demonstrations(
    task: Task, lengths: tuple[int, int], k: int, fmt: str, seed: int, exclude: set[str]
) -> list[Item]:
    """`k` demonstrations whose first is at the longest length `lengths[1]` and the others drawn
    from the whole range: every prefix (the K-shot prompt uses the first K) demonstrates the
    longest length, so 1x means the same length for every K and for the trained models."""
    if k == 0:
        return []
    first = demonstrations(task, (lengths[1], lengths[1]), 1, fmt, seed, exclude)
    rest = demonstrations(task, lengths, k - 1, fmt, seed + 1, exclude | {first[0].key})
    return first + rest


def demo_overlap(items: list[Item], demos: list[Item]) -> list[float]:
    """Per item, the share of its terms (operands, list values) that some demonstration also
    has: the in-context analogue of term frequency in training data."""
    shown = {t for d in demos for t in d.terms}
    return [sum(t in shown for t in it.terms) / len(it.terms) if it.terms else 0.0 for it in items]


def overlap_split(overlap: Iterable[float], correct: Iterable[bool]) -> dict[str, Any]:
    """Accuracy of the items sharing at least one term with the demonstrations against those
    sharing none, and the difference (None where a side is empty)."""
    sides: dict[str, list[bool]] = {"shared": [], "none": []}
    for share, ok in zip(overlap, correct, strict=True):
        sides["shared" if share > 0 else "none"].append(bool(ok))
    out: dict[str, Any] = {}
    for side, oks in sides.items():
        out[f"{side}_n"] = len(oks)
        out[f"{side}_acc"] = sum(oks) / len(oks) if oks else None
    a, b = out["shared_acc"], out["none_acc"]
    out["gap"] = a - b if a is not None and b is not None else None
    return out


def probe_values(lm: Any, generations: int, max_new_tokens: int, seed: int, chat: bool) -> dict:
    """Scylla's distribution probing: sample `generations` answers to PROBE_PROMPT and count the
    numbers inside square brackets. Returns {"counts": Counter, "lists": n, "text_sample": str}.
    Needs a Hugging Face model (HFCausalLM: `model`, `tokenizer`)."""
    import torch
    from transformers import GenerationConfig

    if not hasattr(lm, "model") or not hasattr(lm, "tokenizer"):
        raise UserError(f"{lm.name}: distribution probing needs a Hugging Face model")
    prompt = PROBE_PROMPT
    if chat:  # then the answer opens with the list bracket (below)
        prompt = lm.tokenizer.apply_chat_template(
            [{"role": "user", "content": PROBE_PROMPT.strip()}],
            tokenize=False,
            add_generation_prompt=True,
        )
    ids = torch.tensor([lm.encode(prompt + "[")], device=lm.device)
    config = GenerationConfig(
        do_sample=True,
        max_new_tokens=max_new_tokens,
        num_return_sequences=generations,
        eos_token_id=lm.stop_ids,
        pad_token_id=lm.pad_id,
        **PROBE_SAMPLING,
    )
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = lm.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config
        )
    texts = ["[" + lm.decode(row[ids.shape[1] :].tolist()) for row in out]
    counts: Counter[int] = Counter()
    lists = 0
    for text in texts:
        for body in _LIST.findall(text):
            numbers = [int(x) for x in re.findall(r"\d+", body)]
            if numbers:
                lists += 1
                counts.update(numbers)
    return {"counts": counts, "lists": lists, "text_sample": texts[0][:400] if texts else ""}


def value_pools(counts: Counter, top: int) -> tuple[list[int], list[int]]:
    """(ID, OOD) values in 0..top: the probed numbers, and the rest of the range."""
    seen = {v for v in counts if 0 <= v <= top}
    return sorted(seen), [v for v in range(top + 1) if v not in seen]


def pooled_valley(
    lm: Any,
    task_names: list[str],
    lengths: tuple[int, int],
    pools: dict[str, list[int]],
    few: FewShot,
    n: int,
    batch_size: int = 32,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Per ladder task: `few.shots`-shot accuracy on `n` problems drawn from the ID pool
    (demonstrations from the ID pool too) and on `n` from the OOD pool, in `few`'s format
    (default direct), as rows for lengthwise.eval.valley.valley_table, with the tokens each side
    cost. Tasks whose pool is too small to draw from are skipped: {task: reason}."""
    rows, skipped = [], {}
    fmt, seed = few.format_for("direct"), few.seed
    for k, name in enumerate(task_names):
        base = get_task(name)
        sides = {}
        try:
            for side in ("id", "ood"):
                task = base.with_pool(pools[side])
                task.sample(random.Random(0), lengths[1])  # a pool with nothing in range: say so
                demos = demonstrations(task, lengths, few.shots, fmt, seed + k)
                used = {d.key for d in demos}
                items = list(generate_items(task, lengths, n, fmt, 50_000 + k, exclude=used))
                sides[side] = (task, with_demos(lm, demos, items, few.chat))
        except (ValueError, RuntimeError, UserError) as e:
            skipped[name] = str(e).splitlines()[0]
            continue
        row: dict[str, Any] = {"task": name, "complexity": base.complexity, "level": base.level}
        for side, (task, items) in sides.items():
            score = score_items(lm, task, items, batch_size=batch_size, stop=few.stop)
            d = score.to_dict()
            row[f"{side}_correct"], row[f"{side}_total"] = score.correct, score.total
            row[f"{side}_parsed"] = score.parsed
            row[f"{side}_prompt_tokens_mean"] = d["prompt_tokens_mean"]
            row[f"{side}_gen_tokens_mean"] = d["gen_tokens_mean"]
        rows.append(row)
    return rows, skipped
