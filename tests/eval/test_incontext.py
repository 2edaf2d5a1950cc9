"""In-context measurements (lengthwise.eval.incontext) and the answer stop of plain-text few-shot
prompts, on stand-in models whose answers are known: anchored nested demonstrations, overlap
with the demonstrations, Scylla's probe parsing and ID/OOD pools, the pooled valley's counts."""

from collections import Counter
from pathlib import Path

import pytest

from lengthwise.eval.accuracy import score_items
from lengthwise.eval.fewshot import SEPARATOR, FewShot
from lengthwise.eval.incontext import (
    anchored_demonstrations,
    demo_overlap,
    overlap_split,
    pooled_valley,
    value_pools,
)
from lengthwise.eval.valley import valley_table
from lengthwise.tasks import Item, get_task


def test_anchored_demonstrations_start_at_the_longest_length_and_nest():
    task = get_task("addition")
    exclude = {"addition:12+34"}
    demos = anchored_demonstrations(task, (2, 4), 8, "direct", 3, exclude)
    assert len(demos) == 8 and len({d.key for d in demos}) == 8
    assert demos[0].length == 4  # every prefix (K-shot = first K) demonstrates the longest length
    assert all(2 <= d.length <= 4 for d in demos) and not exclude & {d.key for d in demos}
    again = anchored_demonstrations(task, (2, 4), 8, "scratchpad", 3, exclude)
    assert [d.key for d in again] == [d.key for d in demos]  # the same problems in every format
    assert "|" in again[0].completion
    assert anchored_demonstrations(task, (2, 4), 0, "direct", 3, exclude) == []


def _item(terms: tuple[str, ...]) -> Item:
    return Item("min", len(terms), "direct", "p=", "0", "0", "min:" + ",".join(terms), terms)


def test_demo_overlap_and_split_by_hand():
    demos = [_item(("5", "3", "9")), _item(("12", "40"))]
    items = [_item(("5", "7")), _item(("1", "2", "3", "40")), _item(("8",)), _item(("9", "12"))]
    assert demo_overlap(items, demos) == [0.5, 0.5, 0.0, 1.0]
    split = overlap_split([0.5, 0.5, 0.0, 1.0], [True, False, True, True])
    assert split["shared_n"] == 3 and split["none_n"] == 1
    assert split["shared_acc"] == pytest.approx(2 / 3) and split["none_acc"] == 1.0
    assert split["gap"] == pytest.approx(2 / 3 - 1)
    empty = overlap_split([0.0, 0.0], [True, False])
    assert empty["shared_acc"] is None and empty["gap"] is None and empty["none_acc"] == 0.5


def test_value_pools_split_the_range_by_the_probed_values():
    ids, ood = value_pools(Counter({3: 2, 0: 1, 7: 5, 150: 1}), 9)
    assert ids == [0, 3, 7]  # 150 is outside 0..9
    assert ood == [1, 2, 4, 5, 6, 8, 9]


class SmallNumbersOnly:
    """Answers min/max problems right when every value is <= 8, else "99"; records prompts."""

    name = "stand-in"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def greedy(self, prompts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[str]:
        out = []
        for p in prompts:
            self.prompts.append(p)
            last = p.rsplit(SEPARATOR, 1)[-1]  # the test problem follows the demonstrations
            name, body = last[:-1].split(":")
            values = [int(v) for v in body.split(",")]
            ok = max(values) <= 8
            answer = (min if name == "min" else max)(values) if ok else 99
            out.append(f"{answer}{SEPARATOR}min:1,2=1")  # goes on with a made-up next problem
        return out


def test_pooled_valley_counts_and_demonstrations_come_from_each_side():
    lm = SmallNumbersOnly()
    pools = {"id": list(range(9)), "ood": list(range(9, 100))}
    rows, skipped = pooled_valley(lm, ["min", "max"], (4, 6), pools, FewShot(shots=2), 10)
    assert skipped == {}
    assert [(r["task"], r["id_correct"], r["id_total"], r["ood_correct"]) for r in rows] == [
        ("min", 10, 10, 0),
        ("max", 10, 10, 0),
    ]
    table = valley_table(rows)
    assert table["critical"]["level"] == 0 and table["levels"][0]["rel_gap"] == 1.0
    # 2 demonstrations before each test problem, drawn from the side's own pool
    for p in lm.prompts:
        lines = p.split(SEPARATOR)
        assert len(lines) == 3
        values = {int(v) for line in lines for v in line.split(":")[1].split("=")[0].split(",")}
        assert values <= set(range(9)) or values <= set(range(9, 100))
    # a pool with nothing to draw from: the task is skipped with the reason
    rows, skipped = pooled_valley(lm, ["min"], (4, 6), {"id": [], "ood": [1]}, FewShot(1), 2)
    assert rows == [] and "value pool" in skipped["min"]


class Echo:
    name = "echo"

    def __init__(self, outputs: list[str]) -> None:
        self.outputs = outputs

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def greedy(self, prompts, max_new_tokens, batch_size=64):
        return list(self.outputs)


def test_plain_few_shot_answers_end_at_the_separator():
    task = get_task("addition")
    item = task.render((23, 45), "direct")
    lm = Echo(["68\n12+3=15"])
    assert score_items(lm, task, [item]).correct == 0  # the next made-up problem is junk
    score = score_items(lm, task, [item], stop=SEPARATOR)
    assert score.correct == 1 and score.outputs == ["68"]
    assert score.generated_tokens == [2]  # counted up to the stop, as an EOS stop is
    assert FewShot(shots=2).stop == SEPARATOR
    assert FewShot(shots=2, chat=True).stop is None  # the chat turn ends with its own token
    assert FewShot().stop is None  # zero-shot: the answer ends at EOS, as trained


# ---------------------------------------------------------------------- E6 end to end


def _e6_spec(tmp_path: Path, pretrained: Path) -> Path:
    import yaml

    from lengthwise.experiments import spec_path

    raw = yaml.safe_load(spec_path("E6").read_text())
    q = raw["quick"]
    q["budget_minutes"] = 0.1
    q["settings"].update(pretrained=str(pretrained), chat_template=False, problems_per_task=100)
    q["settings"]["n"] = 2
    q["settings"]["valley"].update(tasks=["min", "two_sum"], probe_tokens=8)
    path = tmp_path / "e6.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.slow  # ~20 s: two trainings; the pieces have fast tests here and in test_experiments
def test_e6_end_to_end_on_a_tiny_model(tmp_path, monkeypatch):
    """The whole experiment with a random tiny Llama as the 'pretrained' model (the real one is
    the slow test): every row answers the same problems, costs are counted, the valley uses the
    probed pools (the probe is replaced: a random model writes no lists)."""
    import json

    pytest.importorskip("transformers", reason="the pretrained rows need transformers")
    from lengthwise.cli import main
    from lengthwise.eval import incontext

    from .test_fewshot import _folder

    folder = _folder(tmp_path / "tiny", chat=False)
    probe = {"counts": Counter(range(9)), "lists": 3, "text_sample": "[1, 2]"}
    monkeypatch.setattr(incontext, "probe_values", lambda *a, **k: probe)
    argv = ["experiment", "E6", "--quick", "--quiet", "--spec", str(_e6_spec(tmp_path, folder))]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out" / "E6"
    res = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    assert list(rows) == [
        "fixed_concat_chunk",
        "curriculum_dd_grow_p2",
        "icl_0shot_direct",
        "icl_1shot_scratchpad",
    ]
    assert rows["fixed_concat_chunk"]["strategy"] == "concat_chunk"
    assert rows["curriculum_dd_grow_p2"]["strategy"] == "decomposition + grow_p2"
    for r in rows.values():
        assert set(r["acc"]) == {"addition", "min", "two_sum"}
        assert all(set(a) == {"1x", "2x"} for a in r["acc"].values())
        assert all(v * 2 in (0, 1, 2) for a in r["acc"].values() for v in a.values())
    trained = [rows["fixed_concat_chunk"], rows["curriculum_dd_grow_p2"]]
    assert all(r["training_flops"] > 0 and r["memorization"]["seen"]["n"] == 9 for r in trained)
    # equal tokens; the curriculum's shorter rows cost fewer attention FLOPs
    assert trained[0]["train_tokens"] == trained[1]["train_tokens"]
    assert trained[0]["training_flops"] >= trained[1]["training_flops"]
    icl = rows["icl_1shot_scratchpad"]
    assert icl["training_flops"] == 0 and icl["tokens_per_answer"] > 0
    assert icl["tokens_per_answer"] > rows["icl_0shot_direct"]["tokens_per_answer"]
    assert icl["memorization"]["shared_n"] + icl["memorization"]["none_n"] == 3 * 2
    v = res["valley"]
    assert v["probe"]["id_values"] == list(range(9)) and v["probe"]["ood_values"] == 91
    assert [r["task"] for r in v["rows"]] == ["min", "two_sum"]
    assert all(r["id_total"] == r["ood_total"] == 2 for r in v["rows"])
    assert len(res["claims"]) == 7 and (out / "e6_accuracy_by_length.png").stat().st_size > 1000
    md = (out / "results.md").read_text()
    assert "| icl_1shot_scratchpad | 1-shot | scratchpad | 0 (ours) |" in md


def test_cli_valley_probe_on_a_model_without_training_data(tmp_path, monkeypatch, capsys):
    """`lengthwise eval HF_FOLDER --suite valley --probe`: no config; the ladder drawn from the
    probed pools (the probe is replaced: a random model writes no lists)."""
    import json

    pytest.importorskip("transformers", reason="HF targets need transformers")
    from lengthwise.cli import main
    from lengthwise.eval import incontext

    from .test_fewshot import _folder

    folder = _folder(tmp_path / "tiny", chat=False)
    probe = {"counts": Counter([1, 2, 3, 5, 8, 13, 21, 34, 55]), "lists": 2, "text_sample": ""}
    monkeypatch.setattr(incontext, "probe_values", lambda *a, **k: probe)
    out = tmp_path / "ev"
    argv = ["eval", str(folder), "--suite", "valley", "--probe", "--shots", "1", "--n", "3"]
    assert main([*argv, "--lengths", "4", "5", "--out", str(out)]) == 0
    valley = json.loads((out / "valley.json").read_text())
    assert valley["probe"]["id_values"] == [1, 2, 3, 5, 8, 13, 21, 34, 55]
    assert valley["probe"]["ood_values"] == 100 - 9 and valley["shots"] == 1
    assert valley["tasks"][3] == "kth_largest" and valley["lengths"] == [4, 5]
    measured = {r["task"] for r in valley["rows"]}
    assert measured | set(valley["skipped"]) == set(valley["tasks"])
    assert all(r["id_total"] == r["ood_total"] == 3 for r in valley["rows"])
    assert "ID values [1, 2, 3, 5, 8, 13, 21, 34, 55]" in capsys.readouterr().out
    # --probe is the valley suite's; a lengthwise model cannot be probed
    assert main(["eval", str(folder), "--suite", "lengths", "--probe"]) == 2
    assert "--probe: only for --suite valley" in capsys.readouterr().err
