"""`lengthwise experiment`: the YAML grids, the time-to-target and throughput arithmetic, the CLI
choices, and (slow) each experiment's --quick variant end to end, with its results.json checked
against what the run directories say when recomputed independently."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lengthwise import experiments as ex
from lengthwise.cli import main
from lengthwise.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- grids and specs


def test_product_grid_names_and_overrides():
    raw = {
        "product": [
            {"axis": "reg", "values": {"none": [], "l2=0.01": ["optim.l2=0.01"]}},
            {"axis": "dropout", "values": {"0": ["model.resid_dropout=0.0"], "0.3": ["x=1"]}},
        ]
    }
    points = ex.expand_grid(raw, "t.yaml")
    assert [p.name for p in points] == [
        "reg-none_dropout-0",
        "reg-none_dropout-0.3",
        "reg-l2=0.01_dropout-0",
        "reg-l2=0.01_dropout-0.3",
    ]
    assert points[3].overrides == ["optim.l2=0.01", "x=1"]
    assert points[3].labels == {"reg": "l2=0.01", "dropout": "0.3"}


def test_list_grid_needs_unique_names():
    with pytest.raises(UserError, match="unique"):
        ex.expand_grid([{"name": "a"}, {"name": "a"}], "t.yaml")
    with pytest.raises(UserError, match="name"):
        ex.expand_grid([{"overrides": []}], "t.yaml")


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("exp", sorted(ex.IMPLEMENTED))
def test_every_shipped_grid_point_is_a_valid_config(exp, quick, tmp_path):
    spec = ex.load_spec(ex.spec_path(exp), exp, quick=quick)
    assert spec.points and spec.title and spec.question
    if quick:
        assert len(spec.points) <= 6
    ctx = ex.Context(spec, tmp_path / exp, "cmd", spec.budget_minutes, quiet=True)
    ctx.base_path = spec.base or tmp_path / "base.yaml"
    if spec.base is None:
        import yaml

        text = yaml.safe_dump(spec.config).replace("{exp_dir}", str(ctx.exp_dir))
        ctx.base_path.write_text(text)
    for point in spec.points:
        cfg = ex.point_config(ctx, point)
        assert cfg.train.out_dir == ctx.exp_dir / "runs" / point.name
        step = cfg.batching.tokens_per_step
        assert cfg.train.total_tokens % step == 0 and cfg.train.total_tokens >= step
        assert str(ctx.exp_dir) in str(cfg.data.out_dir) or spec.base is not None
    if exp == "E3" and not quick:
        assert len(spec.points) == 15  # {none, l1 x2, l2 x2} x dropout {0, 0.1, 0.3}


def test_budget_splits_evenly_in_whole_steps(tmp_path):
    spec = ex.load_spec(ex.spec_path("E1"), "E1")
    ctx = ex.Context(spec, tmp_path, "cmd", budget_minutes=60, quiet=True)
    # 60 min / 6 points * 2700 tok/s = 1,620,000 -> 98 whole steps of 16,384
    assert ex.tokens_per_run(ctx, 16384) == 98 * 16384


# ---------------------------------------------------------------------- E1 arithmetic


def _records():
    # train, eval pairs; eval i at time 2i+1.5 took 0.5 s; val loss 5, 4, 3, 2
    rows = []
    for i, loss in enumerate([5.0, 4.0, 3.0, 2.0]):
        rows.append({"event": "train", "time": 2 * i + 1.0, "tokens": 100 * (i + 1), "step": i + 1,
                     "tokens_per_s": 1000.0 if i else 10.0, "loss": 9.0})  # fmt: skip
        rows.append({"event": "eval", "time": 2 * i + 1.5, "tokens": 100 * (i + 1), "step": i + 1,
                     "val/loss": loss})  # fmt: skip
    return rows


def test_time_to_target_is_the_first_eval_at_or_below_the_target():
    hit = ex.time_to_target(_records(), 3.0)
    assert hit["time"] == 5.5 and hit["tokens"] == 300 and hit["step"] == 3
    assert hit["train_time"] == pytest.approx(5.5 - 3 * 0.5)
    assert ex.time_to_target(_records(), 1.0) is None
    assert ex.time_to_target(_records(), 9.0)["step"] == 1


def test_median_tokens_per_s_skips_the_record_after_each_eval():
    recs = _records()
    assert ex.median_tokens_per_s(recs) == 10.0  # only the first record precedes no eval
    for k, tps in enumerate([7.0, 8.0, 9.0]):  # after the first eval: 7 is left out
        recs.insert(2 + k, {"event": "train", "time": 1.6 + k / 10, "tokens_per_s": tps})
    assert ex.median_tokens_per_s(recs) == 9.5  # median of 10, 8, 9 and the 1000 before eval 2


# ---------------------------------------------------------------------- E5 skew


def test_skewed_items_are_skewed_and_eval_items_fresh():
    settings = {"skewed": {"n": 2000, "zipf_s": 1.1, "seed": 0}}
    items = ex.skewed_items(settings)
    assert items == ex.skewed_items(settings)  # deterministic
    counts = {}
    for it in items:
        for t in it.terms:
            counts[t] = counts.get(t, 0) + 1
    top = sorted(counts.values(), reverse=True)
    assert top[0] > 10 * (2 * 2000 / 90)  # uniform would give ~44 per value
    keys = {it.key for it in items}
    fresh = ex.skewed_eval_items(settings, 200, keys)
    assert len(fresh) == 200 and not keys & {it.key for it in fresh}


# ---------------------------------------------------------------------- CLI


@pytest.mark.parametrize("exp", ["E2", "E4"])
def test_unimplemented_experiments_exit_2_with_one_line(exp, capsys):
    assert main(["experiment", exp]) == 2
    err = capsys.readouterr().err.strip()
    assert "not implemented yet" in err and len(err.splitlines()) == 1


def test_bad_budget_is_a_user_error(capsys, tmp_path):
    assert main(["experiment", "E5", "--quick", "--budget-minutes", "0", "--out", str(tmp_path)])
    assert "budget" in capsys.readouterr().err


# ---------------------------------------------------------------------- quick runs (slow)


def _run(exp, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # E1 reads data/demo_text relative to the checkout
    assert main(["experiment", exp, "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    out = tmp_path / exp
    results = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert f"lengthwise experiment {exp} --quick --out {tmp_path}" in md.splitlines()[3]
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(results["points"])  # header, rule, one row per point
    assert "\n\n| " in md  # a blank line before the table
    assert results["quick"] is True and results["command"].startswith("lengthwise experiment")
    return out, results


def _events(run_dir, event):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


@pytest.mark.slow
def test_e1_quick_time_to_target_matches_metrics(tmp_path, monkeypatch):
    out, results = _run("E1", tmp_path, monkeypatch)
    points = {p["name"]: p for p in results["points"]}
    assert set(points) == {
        "pad",
        "concat_chunk",
        "concat_chunk_docmask",
        "best_fit",
        "decomposition_natural",
        "decomposition_grow_p2",
    }
    sizes = [p["tokens"] for p in points.values()]
    assert max(sizes) - min(sizes) < 1024  # equal budgets, up to one (quick) step
    ref_evals = _events(points["concat_chunk"]["run_dir"], "eval")
    target = ref_evals[-1]["val/loss"]
    assert results["reference_val_loss"] == target
    for name, p in points.items():
        evals = _events(p["run_dir"], "eval")
        assert p["val_loss"] == evals[-1]["val/loss"] and p["ood_loss"] == evals[-1]["ood/loss"]
        speeds = [r["tokens_per_s"] for r in _events(p["run_dir"], "train")]
        assert min(speeds) <= p["tokens_per_s"] <= max(speeds)
        lengths = json.loads((Path(p["run_dir"]) / "eval" / "lengths.json").read_text())
        assert len(lengths["text"]["per_position_loss"]) == 4 * p["train_len"]
        assert p["position_band_loss"] == lengths["text"]["band_loss"]
        if name == "concat_chunk":
            continue
        hits = [e for e in evals if e["val/loss"] <= target]
        if not hits:
            assert p["to_reference"] is None
            continue
        got = p["to_reference"]
        assert got["time"] == hits[0]["time"] and got["tokens"] == hits[0]["tokens"]
        assert got["ratio_wall"] == pytest.approx(hits[0]["time"] / ref_evals[-1]["time"])
    for png in ("e1_val_loss.png", "e1_position_loss.png", "e1_throughput.png"):
        assert (out / png).stat().st_size > 1000


@pytest.mark.slow
def test_e3_quick_best_and_last_accuracies_match_the_exports(tmp_path, monkeypatch):
    from lengthwise.eval.accuracy import score_items
    from lengthwise.eval.lengthwise_lm import LengthwiseLM
    from lengthwise.tasks import get_task

    out, results = _run("E3", tmp_path, monkeypatch)
    assert len(results["points"]) == 2
    items = json.loads((out / "e3_items.json").read_text())
    items = {k: [ex.item_from_dict(d) for d in v] for k, v in items.items()}
    task = get_task("addition")
    for p in results["points"]:
        run = Path(p["run_dir"])
        summary = json.loads((run / "summary.json").read_text())
        assert p["stop_reason"] == summary["stop_reason"]
        stops = _events(run, "early_stop")
        assert p["early_stop_step"] == (stops[0]["step"] if stops else None)
        assert p["n_alerts"] == len(_events(run, "alert"))
        if summary["restored_best_step"] is not None:
            assert p["best_step"] == summary["restored_best_step"]
        best_src = json.loads((run / "export_best" / "config.json").read_text())
        assert best_src["source"]["step"] == p["best_step"]
        for which in ("best", "last"):
            lm = LengthwiseLM.from_export(run / f"export_{which}")
            for name, its in items.items():
                score = score_items(lm, task, its)
                assert p["accuracy"][which][name]["acc"] == score.accuracy, (which, name)
                assert p["accuracy"][which][name]["n"] == len(its)
        assert (out / f"e3_{p['name']}_history.png").is_file()
    assert (out / "e3_best_vs_last.png").is_file()


def test_e5_quick_correlations_match_the_written_items(tmp_path, monkeypatch):
    from lengthwise.config import load_config
    from lengthwise.data.sources import iter_documents
    from lengthwise.eval.memorization import count_terms, memorization_report

    out, results = _run("E5", tmp_path, monkeypatch)
    assert [p["train_source"] for p in results["points"]] == ["task source", "skewed JSONL"]
    for p in results["points"]:
        mem = json.loads(Path(p["memorization_json"]).read_text())
        freq = np.asarray([it["frequency"] for it in mem["items"]])
        correct = np.asarray([it["correct"] for it in mem["items"]], dtype=float)
        report = memorization_report(freq, correct)
        for key in ("pearson", "spearman", "decile", "accuracy", "frequency"):
            assert json.loads(json.dumps(report[key])) == p[key], key
        # the frequencies are the counts of the item's operands in the training texts (min)
        cfg = load_config(Path(p["run_dir"]) / "config.yaml")
        texts = [d.text for d in iter_documents(cfg.data.splits["train"])]
        keys = [it["key"].split(":", 1)[1].split("+") for it in mem["items"][:40]]
        counts = count_terms(texts, {t for k in keys for t in k})
        assert [min(counts[a], counts[b]) for a, b in keys] == list(freq[:40])
        assert not math.isnan(p["accuracy"])
    assert (out / "e5_frequency_hist.png").is_file()
