"""`lengthwise report` on two tiny real runs (best_fit with ID + OOD eval sets and the lengths
suite; decomposition + Grow-P2 with one validation set): one self-contained HTML page whose
images are real PNGs, whose table prints the runs' exact final numbers, and whose sections follow
the files each run has."""

import base64
import io
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from lengthwise.cli import main
from lengthwise.config import Config
from lengthwise.data.store import prepare
from lengthwise.errors import UserError
from lengthwise.report import build_report, figures
from lengthwise.train.trainer import train

ALL_SECTIONS = {"final", "loss", "throughput", "accounting", "seqlen", "idood", "lengths"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = {
        "out_dir": str(root / "data"),
        "tokenizer": {"kind": "char"},
        "splits": {
            "train": {"kind": "task", "task": "addition", "lengths": [2, 3], "n": 48},
            "fresh": {"kind": "task", "task": "addition", "lengths": [2, 3], "n": 60, "seed": 9},
            "text": {"kind": "task", "task": "copy", "lengths": [30, 40], "n": 6},
        },
    }
    # the decomposition run reads documents of very different lengths, so its buckets vary
    data_b = {
        "out_dir": str(root / "data_b"),
        "tokenizer": {"kind": "char"},
        "splits": {
            "train": {"kind": "task", "task": "copy", "lengths": [1, 60], "n": 150},
            "val": {"kind": "task", "task": "copy", "lengths": [1, 60], "n": 30, "seed": 5},
        },
    }
    for d in (data, data_b):
        prepare(Config.model_validate({"data": d}).data, progress=False)
    common = {
        "data": data,
        "model": {"n_layer": 1, "n_head": 2, "d_model": 32, "position": "rope"},
        "optim": {"lr": 3e-3},
        "schedule": {"warmup_tokens": 256, "decay": "constant"},
    }

    def train_cfg(name: str, tokens: int) -> dict:
        return {
            "out_dir": str(root / name),
            "total_tokens": tokens,
            "progress": False,
            "loggers": [],
            "log_every_steps": 1,
        }

    a = Config.model_validate(
        {
            **common,
            "batching": {"strategy": "best_fit", "tokens_per_step": 256, "max_len": 32},
            "train": train_cfg("packed", 256 * 16),
            "eval": {
                "every_tokens": 1024,
                "sets": [
                    {"name": "fresh", "split": "fresh", "tag": "ood", "tokens": 4096},
                    {
                        "name": "seen",
                        "kind": "task",
                        "task": "addition",
                        "lengths": [2, 3],
                        "n": 8,
                        "fresh": False,
                        "tag": "id",
                    },
                ],
            },
            "monitor": {"alert_drop": 0.05},
        }
    )
    b = Config.model_validate(
        {
            **common,
            "data": data_b,
            "batching": {
                "strategy": "decomposition",
                "tokens_per_step": 256,
                "max_len": 32,
                "min_bucket": 4,
                "curriculum": {"name": "grow_p2", "cycles": 2},
            },
            "train": train_cfg("decomp", 256 * 12),
            "eval": {
                "every_tokens": 1024,
                "sets": [{"name": "val", "split": "val", "tag": "id", "tokens": 2048}],
            },
        }
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only spin on 2 shared cores
    try:
        train(a, quiet=True)
        train(b, quiet=True)
        run_a, run_b = Path(a.train.out_dir), Path(b.train.out_dir)
        args = ["eval", str(run_a), "--suite", "lengths", "--n", "4", "--text-split", "text"]
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    return run_a, run_b


class _Page(HTMLParser):
    """Image sources, link targets, section ids and the final-numbers table of a report."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.hrefs: list[str] = []
        self.sections: list[str] = []
        self.table: list[list[str]] = []
        self._in_final = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if "href" in a:
            self.hrefs.append(a["href"])
        if tag == "section":
            self.sections.append(a["id"])
        if tag == "table" and a.get("class") == "final":
            self._in_final = True
        if self._in_final and tag == "tr":
            self.table.append([])
        if self._in_final and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_final = False
        if self._in_final and tag in ("td", "th") and self._cell is not None:
            self.table[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(path: Path) -> tuple[str, _Page]:
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return text, page


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "cmp.html"
    assert build_report(list(runs), out) == out
    return out


def test_one_self_contained_page_of_real_pngs(report):
    text, page = _parse(report)
    assert sorted(p.name for p in report.parent.iterdir()) == ["cmp.html", "cmp_files"]
    files = sorted(p.name for p in (report.parent / "cmp_files").iterdir())
    pngs = sorted((report.parent / "cmp_files").glob("*.png"))
    assert files == sorted([*(p.name for p in pngs), "lengthwise-report.json"])
    assert len(page.imgs) == len(pngs) >= 7
    prefix = "data:image/png;base64,"
    embedded = set()
    for src in page.imgs:
        assert src.startswith(prefix)
        raw = base64.b64decode(src[len(prefix) :], validate=True)
        img = matplotlib.image.imread(io.BytesIO(raw), format="png")
        assert img.shape[0] > 200 and img.shape[1] > 300 and img.std() > 0.02
        # more than a blank canvas with a frame: a fair share of the pixels are not background
        assert (img[..., :3].mean(-1) < 0.95).mean() > 0.02
        embedded.add(raw)
    assert embedded == {p.read_bytes() for p in pngs}  # the PNG copies are the embedded figures
    assert "http://" not in text.lower() and "https://" not in text.lower()
    assert all(h.startswith("#") for h in page.hrefs)  # in-page links only
    assert "<link" not in text and "<script" not in text and "@import" not in text


def test_final_table_prints_each_runs_exact_final_numbers(runs, report):
    _, page = _parse(report)
    table = {row[0]: row[1:] for row in page.table}
    assert table[""] == [r.name for r in runs]
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    a, b = summaries
    assert table["final val/loss"] == ["–", f"{b['final']['val/loss']:.4f}"]
    assert table["final fresh/loss"][0] == f"{a['final']['fresh/loss']:.4f}"
    assert table["final seen/acc"][0] == f"{a['final']['seen/acc']:.4f}"
    assert table["strategy"] == ["best_fit", "decomposition"]
    assert table["curriculum"][1] == "grow_p2" and table["position encoding"] == ["rope"] * 2
    assert table["tokens trained"] == [f"{s['tokens']:,}" for s in summaries]
    assert table["optimizer steps"] == [str(s["steps"]) for s in summaries]
    assert table["stop reason"] == ["completed", "completed"]
    assert table["alerts"][1] == "0"
    train_loss = [
        [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()] for r in runs
    ]
    last = [next(x["loss"] for x in reversed(recs) if x["event"] == "train") for recs in train_loss]
    assert table["final train loss (last logged)"] == [f"{v:.4f}" for v in last]
    tps = [
        np.median([x["tokens_per_s"] for x in recs if x["event"] == "train"]) for recs in train_loss
    ]
    assert table["median tokens/s"] == [f"{v:,.0f}" for v in tps]


def test_sections_follow_the_files_each_run_has(runs, report, tmp_path):
    text, page = _parse(report)
    assert set(page.sections) == ALL_SECTIONS  # no valley / memorization suite was run
    assert "no eval/*.json" in text  # the decomposition run has no eval suites: a note says so
    # the decomposition run alone: no length section; without data_stats/summary: fewer still
    run_b = tmp_path / "decomp"
    shutil.copytree(runs[1], run_b, ignore=shutil.ignore_patterns("checkpoints", "export"))
    _, page = _parse(build_report([run_b], tmp_path / "b.html"))
    assert set(page.sections) == ALL_SECTIONS - {"lengths"}
    (run_b / "data_stats.json").unlink()
    (run_b / "summary.json").unlink()
    with (run_b / "metrics.jsonl").open("a") as f:
        f.write('{"event": "train", "tok')  # a line cut off by a crash
    text, page = _parse(build_report([run_b], tmp_path / "b.html"))
    assert set(page.sections) == ALL_SECTIONS - {"lengths", "accounting"}
    assert "no summary.json" in text and "1 unreadable line" in text
    last_eval = [json.loads(x) for x in (run_b / "metrics.jsonl").read_text().splitlines()[:-1]]
    last_eval = [r for r in last_eval if r["event"] == "eval"][-1]
    table = {row[0]: row[1:] for row in page.table}
    assert table["final val/loss"] == [f"{last_eval['val/loss']:.4f}"]
    # written again under the same name: old figures are replaced, nothing temporary is left
    assert len(list((tmp_path / "b_files").glob("*.png"))) == len(page.imgs)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_report_and_bad_paths(runs, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", *map(str, runs), "-o", str(out), "--title", "A vs B"]) == 0
    text = out.read_text()
    assert "<title>A vs B</title>" in text and str(runs[0]) in text
    assert "written:" in capsys.readouterr().out
    for bad in (tmp_path, tmp_path / "nope"):
        assert main(["report", str(runs[0]), str(bad), "-o", str(tmp_path / "x.html")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lengthwise: error:") and str(bad) in err and "\n" not in err
    assert not (tmp_path / "x.html").exists()
    with pytest.raises(UserError):
        build_report([], tmp_path / "y.html")


def test_report_reads_files_only(runs, tmp_path):
    """The report never imports the trainer, the model or torch."""
    code = (
        "import sys; from pathlib import Path; from lengthwise.report import build_report; "
        f"build_report([Path({str(runs[0])!r})], Path({str(tmp_path / 'r.html')!r})); "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('lengthwise.train') "
        "or m.startswith('lengthwise.model')]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_smoothing_and_resumed_clock():
    y = np.r_[np.full(50, 2.0), np.nan, np.full(50, 1.0)]
    s = figures.smooth(y)
    assert s[0] == 2.0 and np.isfinite(s).all() and s[-1] < 1.01 and s[49] == 2.0
    t = figures.wall_clock([{"time": 0}, {"time": 5}, {"time": 1}, {"time": 3}, {}])
    assert t[:4].tolist() == [0, 5, 6, 8] and np.isnan(t[4])


def test_id_ood_figure_marks_alerts(tmp_path):
    evals = []
    for i in range(10):
        ood = 3 - abs(i - 5) / 5  # U-shaped: falls, then rises
        evals.append({"tokens": 100 * i, "step": i, "a/loss": 3 - i / 10, "b/loss": ood})
        evals[-1].update({"ood_mean/loss": ood, "a/acc": i / 10, "a/ppl": 9.0})
    alerts = [{"tokens": 800, "metric": "b/loss", "value": 2.4}]
    assert list(figures.eval_panels(evals)) == ["loss", "acc"]  # ppl left out
    path = figures.plot_id_ood_history(
        evals, {"a": "id", "b": "ood"}, tmp_path / "f.png", alerts=alerts, stop_tokens=900
    )
    img = matplotlib.image.imread(path)
    red = (img[..., 0] > 0.8) & (img[..., 1] < 0.2) & (img[..., 2] < 0.3)  # crimson markers
    assert img.shape[0] > 400 and red.sum() > 50


def test_throughput_axis_goes_log_when_runs_differ_tenfold(tmp_path, monkeypatch):
    scales = []

    def keep_scale(fig, path):
        scales.append(fig.axes[0].get_yscale())
        return Path(path)

    monkeypatch.setattr(figures, "save_figure", keep_scale)

    def recs(rate):
        return [{"tokens": 100 * i, "tokens_per_s": rate * (1 + i % 3 / 10)} for i in range(20)]

    figures.plot_throughput({"text": recs(5_000), "task": recs(110_000)}, tmp_path / "a.png")
    figures.plot_throughput({"a": recs(5_000), "b": recs(9_000)}, tmp_path / "b.png")
    assert scales == ["log", "linear"]
