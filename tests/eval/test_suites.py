"""`lengthwise eval RUN --suite ...` end to end on a tiny run trained on tasks (seconds each):
the numbers in the JSON are recomputed here from the model itself."""

import json
from pathlib import Path

import matplotlib.image
import pytest

from lengthwise.cli import main
from lengthwise.config import Config
from lengthwise.data.sources import task_source_items
from lengthwise.data.store import prepare
from lengthwise.eval.accuracy import score_items
from lengthwise.eval.suites import load_lm
from lengthwise.tasks import generate_items, get_task
from lengthwise.train.trainer import train


@pytest.fixture(scope="module")
def task_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("suites")
    tree = {
        "data": {
            "out_dir": str(root / "data"),
            "tokenizer": {"kind": "char"},
            "splits": {
                "train": {
                    "kind": "task",
                    "task": ["min", "sort", "three_sum"],
                    "lengths": [3, 5],
                    "n": 300,
                },
                "text": {"kind": "task", "task": "copy", "lengths": [70, 80], "n": 20},
            },
        },
        "batching": {"strategy": "best_fit", "tokens_per_step": 1024, "max_len": 64},
        "model": {"n_layer": 2, "n_head": 2, "d_model": 32, "position": "rope", "mlp": "swiglu"},
        "optim": {"lr": 3e-3},
        "train": {
            "out_dir": str(root / "run"),
            "total_tokens": 8192,
            "progress": False,
            "loggers": [],
        },
    }
    cfg = Config.model_validate(tree)
    prepare(cfg.data, progress=False)
    train(cfg, quiet=True)
    return cfg, Path(cfg.train.out_dir)


def _png_ok(path: Path) -> None:
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 0.01


def test_lengths_suite(task_run, tmp_path, capsys):
    cfg, run = task_run
    out = tmp_path / "lengths"
    args = ["eval", str(run), "--suite", "lengths", "--n", "12", "--out", str(out)]
    assert main([*args, "--multiples", "1", "2", "--text-split", "text"]) == 0
    result = json.loads((out / "lengths.json").read_text())
    rows = result["task"]["rows"]
    assert [(r["task"], r["multiple"], r["length"]) for r in rows] == [
        (t, m, L) for t in ("min", "sort", "three_sum") for m, L in ((1, 5), (2, 10))
    ]
    lm = load_lm(run)
    keys = {it.key for it in task_source_items(cfg.data.splits["train"])}
    sort_2x = next(r for r in rows if r["task"] == "sort" and r["multiple"] == 2)
    items = list(generate_items("sort", (10, 10), 12, "direct", 10_200, exclude=keys))
    assert sort_2x["acc"] == score_items(lm, get_task("sort"), items).accuracy
    text = result["text"]
    assert text["train_len"] == 64 and len(text["per_position_loss"]) == 2 * 64
    assert set(text["band_loss"]) == {"0-64", "64-128"}
    for png in ("lengths_accuracy.png", "lengths_position_loss.png"):
        _png_ok(out / png)
    assert "three_sum" in capsys.readouterr().out


def test_valley_suite(task_run, tmp_path):
    cfg, run = task_run
    out = tmp_path / "valley"
    assert main(["eval", str(run), "--suite", "valley", "--n", "10", "--out", str(out)]) == 0
    result = json.loads((out / "valley.json").read_text())
    by_task = {r["task"]: r for r in result["rows"]}
    assert {t: r["level"] for t, r in by_task.items()} == {"min": 0, "sort": 1, "three_sum": 2}
    assert all(r["id_total"] == r["ood_total"] == 10 for r in by_task.values())
    assert [lv["level"] for lv in result["levels"]] == [0, 1, 2]
    # ID items are the first training items of each task
    trained = [it for it in task_source_items(cfg.data.splits["train"]) if it.task == "min"][:10]
    id_acc = score_items(load_lm(run), get_task("min"), trained).accuracy
    assert by_task["min"]["id_correct"] == round(id_acc * 10)
    _png_ok(out / "valley.png")


def test_memorization_suite(task_run, tmp_path):
    _, run = task_run
    out = tmp_path / "mem"
    assert main(["eval", str(run), "--suite", "memorization", "--n", "30", "--out", str(out)]) == 0
    result = json.loads((out / "memorization.json").read_text())
    assert result["n_items"] == 90 and len(result["items"]) == 90
    assert all(item["frequency"] >= 0 for item in result["items"])
    assert "pearson" in result and "spearman" in result
    _png_ok(out / "memorization.png")


def test_valley_of_the_hugging_face_export_equals_ours(task_run, tmp_path):
    """The same model as a Llama folder (lengthwise export) through HFCausalLM: identical
    greedy answers, so an identical valley table."""
    pytest.importorskip("transformers")
    cfg, run = task_run
    assert main(["export", str(run), "--out", str(tmp_path / "exp")]) == 0
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    args = ["--suite", "valley", "--n", "10"]
    assert main(["eval", str(run), *args, "--out", str(ours)]) == 0
    config = str(run / "config.yaml")
    hf_dir = str(tmp_path / "exp" / "hf")
    assert main(["eval", hf_dir, *args, "--config", config, "--out", str(theirs)]) == 0
    a = json.loads((ours / "valley.json").read_text())
    b = json.loads((theirs / "valley.json").read_text())
    assert a["rows"] == b["rows"] and a["levels"] == b["levels"]
    prompts = [it.prompt for it in task_source_items(cfg.data.splits["train"])][:12]
    ours_lm, hf_lm = load_lm(run), load_lm(tmp_path / "exp" / "hf")
    assert ours_lm.greedy(prompts, 12) == hf_lm.greedy(prompts, 12)
    ids = ours_lm.encode(prompts[0] + prompts[1])
    assert hf_lm.encode(prompts[0] + prompts[1]) == ids
    assert ours_lm.token_losses(ids) == pytest.approx(hf_lm.token_losses(ids), abs=1e-4)


def test_eval_errors(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--suite", "valley"]) == 2
    assert "pass --config" in capsys.readouterr().err


def test_position_losses_refuses_coupled_stores(tmp_path):
    from lengthwise.data.store import TokenStore
    from lengthwise.errors import UserError
    from lengthwise.eval.suites import position_losses

    tree = {
        "data": {
            "out_dir": str(tmp_path / "data"),
            "tokenizer": {"kind": "char"},
            "splits": {
                "train": {
                    "kind": "task",
                    "task": "addition",
                    "lengths": [1, 3],
                    "n": 20,
                    "format": "coupled",
                },
            },
        },
        "batching": {"strategy": "pad", "tokens_per_step": 256, "max_len": 32},
    }
    cfg = Config.model_validate(tree)
    prepare(cfg.data, progress=False)
    store = TokenStore(cfg.data.out_dir / "train")
    with pytest.raises(UserError, match="coupled position ids"):
        position_losses(None, store, cfg.data.out_dir / "tokenizer.json", 64, 4)


def test_training_term_counts_read_the_direct_rendering():
    """A reversed training source counts 12 where the direct text writes 12 (the reversed text
    writes it "21"): hand-counted from the direct items' operands and sums."""
    from collections import Counter

    from lengthwise.config import SourceConfig
    from lengthwise.eval.suites import training_term_counts

    src = SourceConfig(kind="task", task="addition", lengths=[2, 2], n=40, format="reversed")
    items = list(task_source_items(src.model_copy(update={"format": "direct"})))
    by_hand = Counter()
    for it in items:
        a, b = it.terms
        by_hand.update([a, b, str(int(a) + int(b))])
    terms = {t for it in items[:10] for t in it.terms} | {"99"}
    counts = training_term_counts(src, terms)
    assert counts == Counter({t: by_hand[t] for t in terms})
    assert sum(counts.values()) >= 20  # the first ten items' operands, at least once each
