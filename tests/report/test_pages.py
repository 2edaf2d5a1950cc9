"""The report on hand-made run folders (no training): which runs share a figure, the headline
eval-loss comparison, the every-step sequence-length schedule, files it must not touch, and run
names that are data (`$`, `<script>`), never math or markup."""

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from lengthwise.cli import main
from lengthwise.errors import UserError
from lengthwise.report import build_report, figures, load_run
from lengthwise.report.runs import group_by_store

TEXT, TASK = "/stores/demo_text", "/stores/demo_task"


def _facts(fig) -> dict:
    axes = [a for a in fig.axes if a.get_lines() or a.get_title()]
    return {
        "suptitle": fig.get_suptitle(),
        "titles": [a.get_title(loc="left") or a.get_title() for a in axes],
        "lines": [
            [(ln.get_label(), ln.get_xdata(), ln.get_ydata()) for ln in a.get_lines()] for a in axes
        ],
        "legend": [t.get_text() for a in axes if a.get_legend() for t in a.get_legend().texts],
    }


def _record_figures(monkeypatch) -> dict[str, dict]:
    """Every figure the report saves, as {file stem without its number: figure facts}."""
    got: dict[str, dict] = {}
    save = figures.save_figure

    def keep(fig, path):
        got[Path(path).stem.split("_", 1)[1]] = _facts(fig)
        return save(fig, path)

    monkeypatch.setattr(figures, "save_figure", keep)
    return got


@pytest.fixture
def drawn(monkeypatch):
    return _record_figures(monkeypatch)


def _sections(page: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.S))


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory, make_run):
    """Two text runs on one store (565k-token scale, loss ~7, 3.5k tok/s) and a task run on
    another (millions of tokens, loss ~0, 29k tok/s), as in the demo; their report, its
    sections and its figures."""
    root = tmp_path_factory.mktemp("demo_like")
    a = make_run(root / "text_a", TEXT, tokens_per_s=3500.0)
    b = make_run(root / "text_b", TEXT, strategy="decomposition", tokens_per_s=3900.0)
    task = make_run(
        root / "task",
        TASK,
        steps=400,
        tokens_per_step=11_000,
        loss=0.5,
        tokens_per_s=29_000.0,
        eval_every=100,
        sets={"add_1x": "id", "add_4x": "ood"},
    )
    with pytest.MonkeyPatch.context() as mp:
        drawn = _record_figures(mp)
        page = build_report([a, b, task], root / "r.html").read_text()
    return (a, b, task), _sections(page), drawn


def test_runs_sharing_a_store_share_axes_and_others_get_their_own(demo_like):
    runs, sections, drawn = demo_like
    groups = group_by_store([load_run(p) for p in runs])
    assert [(store, [r.path.name for r in g]) for store, g in groups] == [
        (TEXT, ["text_a", "text_b"]),
        (TASK, ["task"]),
    ]
    assert sections["loss"].count("<figure>") == 2
    assert sections["throughput"].count("<figure>") == 2
    assert TEXT in sections["loss"] and TASK in sections["loss"]
    text_loss, task_loss = drawn["train_loss_demo_text"], drawn["train_loss_demo_task"]
    assert text_loss["suptitle"] == "token store: demo_text"
    assert set(text_loss["legend"]) == {"text_a", "text_b"}
    assert set(task_loss["legend"]) == {"task"}
    # the text runs' tokens axis ends at their 81,920 tokens, not at the task's 4.4M
    assert max(x.max() for _, x, _ in text_loss["lines"][0]) == 40 * 2048
    assert max(x.max() for _, x, _ in task_loss["lines"][0]) == 400 * 11_000
    tput = drawn["throughput_demo_text"]["legend"]
    assert tput == ["text_a (median 3,500)", "text_b (median 3,900)"]


def test_headline_overlays_eval_loss_against_tokens_and_wall_time(demo_like):
    (a, b, task), sections, drawn = demo_like
    assert list(sections)[:2] == ["final", "compare"]
    assert sections["compare"].count("<figure>") == 1  # the task run has no partner on its store
    fig = drawn["eval_loss_demo_text"]
    by_tokens, by_wall = fig["lines"]
    assert len(by_tokens) == len(by_wall) == 4  # 2 runs x (val, ood)
    evals = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["event"] == "eval"]
    tokens = [e["tokens"] for e in evals]
    assert tokens == [20 * 2048, 40 * 2048]
    walls = [t / 3900.0 + 0.5 for t in tokens]
    val_b = [e["val/loss"] for e in evals]
    assert any(np.allclose(x, tokens) and np.allclose(y, val_b) for _, x, y in by_tokens)
    assert any(np.allclose(x, walls) and np.allclose(y, val_b) for _, x, y in by_wall)
    assert fig["legend"] == ["text_a", "text_b", "val (ID)", "ood (OOD)"]
    assert "eval_loss_demo_task" not in drawn


def test_headline_needs_two_runs_on_one_store(tmp_path, make_run, drawn):
    runs = [make_run(tmp_path / "x", TEXT), make_run(tmp_path / "y", TASK)]
    sections = _sections(build_report(runs, tmp_path / "r.html").read_text())
    assert "compare" not in sections and not [k for k in drawn if k.startswith("eval_loss")]
    assert sections["loss"].count("<figure>") == 2


def test_seq_len_series_covers_every_step_from_seq_lens():
    records = [
        {"event": "train", "step": 10, "seq_len": 1024, "seq_lens": [1024] * 4 + [32] * 6},
        {"event": "train", "step": 20, "seq_len": 512, "seq_lens": [64, 128] * 5},
        # the final record covers the steps after the last periodic one
        {"event": "train", "step": 23, "seq_len": 256, "seq_lens": [256, 256, 256]},
    ]
    steps, lens, every_step = figures.seq_len_series(records)
    assert every_step and steps.tolist() == list(range(1, 24))
    assert lens.tolist() == [1024] * 4 + [32] * 6 + [64, 128] * 5 + [256] * 3
    # logs from before `seq_lens`: one sample per record, and the function says so
    old = [{k: v for k, v in r.items() if k != "seq_lens"} for r in records]
    steps, lens, every_step = figures.seq_len_series(old)
    assert not every_step and steps.tolist() == [10, 20, 23] and lens.tolist() == [1024, 512, 256]


def test_seq_len_figure_shows_buckets_between_logged_steps(tmp_path, make_run, drawn):
    grow = [32, 64, 128, 256, 512, 1024, 1024, 1024, 1024, 1024] * 4 + [64, 128, 256, 1024, 1024]
    new = make_run(tmp_path / "grow", TEXT, strategy="decomposition", steps=45, seq_lens=grow)
    old = make_run(tmp_path / "old", TEXT)  # no seq_lens: sampled seq_len every 10 steps
    page = build_report([new, old], tmp_path / "r.html").read_text()
    panels = drawn["seq_len_schedule"]
    assert panels["titles"][0] == "grow"
    (_, x, y) = panels["lines"][0][0]
    assert x.tolist() == list(range(1, 46)) and y.tolist() == grow
    assert {32, 64, 128, 256} <= set(y.tolist())  # never at a logged step (10, 20, ...)
    assert panels["titles"][1].startswith("old") and "sampled" in panels["titles"][1]
    assert "Sampled, not every step, for old" in _sections(page)["seqlen"]


def test_report_deletes_only_stale_figures_it_wrote(tmp_path, make_run):
    runs = [make_run(tmp_path / "a", TEXT), make_run(tmp_path / "b", TEXT)]
    out, files = tmp_path / "r.html", tmp_path / "r_files"
    files.mkdir()
    (files / "notes.txt").write_text("mine")
    (files / "plot.png").write_bytes(b"my own plot")
    build_report(runs, out)
    first = json.loads((files / "lengthwise-report.json").read_text())["figures"]
    assert sorted(p.name for p in files.glob("[0-9]*.png")) == first and len(first) >= 5
    build_report(runs[:1], out)  # one run: no headline, so figure names shift
    second = json.loads((files / "lengthwise-report.json").read_text())["figures"]
    assert set(first) - set(second)  # some figures went stale
    assert sorted(p.name for p in files.glob("[0-9]*.png")) == second
    assert (files / "notes.txt").read_text() == "mine"
    assert (files / "plot.png").read_bytes() == b"my own plot"
    assert not [p for p in [*tmp_path.iterdir(), *files.iterdir()] if p.name.startswith(".")]


def test_report_from_before_the_manifest_has_its_figures_replaced(tmp_path, make_run):
    run = make_run(tmp_path / "a", TEXT)
    out, files = tmp_path / "r.html", tmp_path / "r_files"
    files.mkdir()
    out.write_text('<html><p class="meta">generated 2024-05-01 10:00:00 by lengthwise 0.1.0 from')
    (files / "09_id_ood_gone.png").write_bytes(b"old figure")
    (files / "keep.png").write_bytes(b"not a figure name")
    build_report([run], out)
    assert not (files / "09_id_ood_gone.png").exists() and (files / "keep.png").exists()


def test_refuses_to_replace_files_it_did_not_write(tmp_path, make_run, capsys):
    run = str(make_run(tmp_path / "a", TEXT))
    page = tmp_path / "notes.html"
    page.write_text("<html><body>my notes</body></html>")
    assert main(["report", run, "-o", str(page)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lengthwise: error:") and "--overwrite" in err and "\n" not in err
    assert page.read_text() == "<html><body>my notes</body></html>"
    assert not (tmp_path / "notes_files").exists()
    assert main(["report", run, "-o", str(page), "--overwrite"]) == 0
    assert "lengthwise report" in page.read_text()
    assert main(["report", run, "-o", str(page)]) == 0  # now it is ours: replaced freely
    capsys.readouterr()
    # a file in P_files/ named like a new figure, not listed by an earlier report
    fresh = tmp_path / "fresh.html"
    name = json.loads((tmp_path / "notes_files" / "lengthwise-report.json").read_text())
    (tmp_path / "fresh_files").mkdir()
    clash = tmp_path / "fresh_files" / name["figures"][0]
    clash.write_bytes(b"mine")
    with pytest.raises(UserError, match="--overwrite"):
        build_report([Path(run)], fresh)
    assert clash.read_bytes() == b"mine" and not fresh.exists()
    build_report([Path(run)], fresh, overwrite=True)
    assert clash.read_bytes()[:4] == b"\x89PNG"


def test_dollar_signs_in_run_names_are_text_not_math(tmp_path, make_run):
    assert plt.rcParams["text.parse_math"] is False
    names = ["run$x$_1", "a$b", "p$^$q"]  # p$^$q is a mathtext ParseException when parsed
    runs = [make_run(tmp_path / n, TEXT) for n in names]
    out = build_report(runs, tmp_path / "r.html")
    text = out.read_text()
    assert all(f"<b>{n}</b>" in text for n in names)
    assert len(list((tmp_path / "r_files").glob("*.png"))) >= 6
    fig, ax = plt.subplots()
    title = ax.set_title("p$^$q")
    assert not title.get_parse_math()
    plt.close(fig)


def test_everything_from_a_run_is_escaped(tmp_path, make_run):
    run = make_run(
        tmp_path / "<script>x",
        TEXT,
        strategy="<script>alert(1)</script>",
        sets={"<img src=x onerror=alert(1)>": "id"},
    )
    out = build_report([run], tmp_path / "r.html", title="<script>t</script>")
    text = out.read_text()
    assert "<script" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;script&gt;x" in text


def test_missing_and_unreadable_files_become_notes(tmp_path, make_run):
    run = make_run(tmp_path / "a", TEXT)
    (run / "summary.json").write_text("{not json")
    (run / "config.yaml").write_text("data: [unclosed")
    (run / "eval").mkdir()
    (run / "eval" / "lengths.json").write_text("[1, 2]")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"event": "train", "tok')
    got = load_run(run)
    assert got.summary is None and got.config == {} and got.evals == {} and got.store is None
    assert got.notes == [
        "config.yaml: unreadable, left out",
        "metrics.jsonl: 1 unreadable line(s) skipped",
        "summary.json: unreadable, left out",
        "no data_stats.json: no padding / dropped-token accounting",
        "eval/lengths.json: unreadable, left out",
        "no eval/*.json: run `lengthwise eval RUN --suite lengths|valley|memorization` for the "
        "length, valley and memorization sections",
    ]
    text = build_report([run], tmp_path / "r.html").read_text()
    assert "summary.json: unreadable, left out" in text
    with pytest.raises(UserError, match="not a run directory"):
        load_run(tmp_path)


def _add_alerts(run: Path, alerts: list[dict], summary: dict | None) -> None:
    """Alert records (at the steps given) appended to metrics.jsonl; summary.json's alert keys
    replaced by `summary` (None: summary.json removed)."""
    with (run / "metrics.jsonl").open("a") as f:
        for a in alerts:
            rec = {"event": "alert", "time": 1.0, "tokens": 100 * a["step"], "metric": "ood/loss"}
            f.write(json.dumps({**rec, "value": 7.5, "best": 7.0, "drop": 0.07, **a}) + "\n")
    if summary is None:
        (run / "summary.json").unlink()
        return
    old = json.loads((run / "summary.json").read_text())
    old = {k: v for k, v in old.items() if not k.startswith("alerts")}
    (run / "summary.json").write_text(json.dumps({**old, **summary}))


def test_alerts_count_significant_ones_apart_from_noise(tmp_path, make_run, drawn):
    from lengthwise.report import sections

    noisy = [
        {"step": 20, "significant": False, "z": 0.4},
        {"step": 30, "significant": None, "z": None},
        {"step": 40, "significant": True, "z": 3.1},
        {"step": 41, "significant": False, "z": 1.2},
    ]
    new = make_run(tmp_path / "new", TEXT)
    counts = {"alerts": 4, "alerts_significant": 1, "alerts_within_noise": 2}
    _add_alerts(new, noisy, counts)
    old = make_run(tmp_path / "old", TEXT)  # logged before alerts carried a significance
    _add_alerts(old, [{"step": 20}, {"step": 30}], {"alerts": 2})
    records_only = make_run(tmp_path / "records_only", TEXT)  # a run still going: no summary
    _add_alerts(records_only, noisy[:3], None)
    summary_only = make_run(tmp_path / "summary_only", TEXT)
    (summary_only / "metrics.jsonl").unlink()
    _add_alerts(summary_only, [], {"alerts": 3, "alerts_significant": 1, "alerts_within_noise": 2})

    cell = {p.name: sections.alerts(load_run(p)) for p in (new, old, records_only, summary_only)}
    assert cell == {
        "new": "4 (1 significant, 2 within noise, 1 of unknown noise; first: ood/loss at step 20, "
        "first significant: ood/loss at step 40)",
        "old": "2 (first: ood/loss at step 20)",
        "records_only": "3 (1 significant, 1 within noise, 1 of unknown noise; first: ood/loss "
        "at step 20, first significant: ood/loss at step 40)",
        "summary_only": "3 (1 significant, 2 within noise)",
    }
    page = build_report([new, old], tmp_path / "r.html").read_text()
    assert "4 (1 significant, 2 within noise, 1 of unknown noise; first:" in page
    assert "4 monitor alert(s) (red triangles), 2 of them within the eval noise (hollow)" in page
    assert "2 monitor alert(s) (red triangles)." in page  # the old run's caption as before
    legend = drawn["id_ood_new"]["legend"]
    assert "alert within noise (2)" in legend and "alert (2)" in legend
    assert "alert (2)" in drawn["id_ood_old"]["legend"]
