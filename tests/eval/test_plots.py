import ast
import math
import os
import stat
from pathlib import Path

import matplotlib
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest

from lengthwise.eval import plots
from lengthwise.eval.memorization import memorization_report
from lengthwise.eval.valley import valley_table


def check_png(path, out_dir):
    assert path.is_file() and path.suffix == ".png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert 300 <= w <= 2500 and 200 <= h <= 2500, (w, h)
    rgb = img[..., :3].reshape(-1, 3)
    assert np.ptp(rgb, axis=0).max() > 0.5  # not a single colour
    assert len(np.unique((rgb * 255).astype(np.uint8), axis=0)) > 20  # lines, text, colours
    assert [p.name for p in out_dir.iterdir() if p.name.startswith(".")] == []  # no temp files
    return img


def test_agg_backend():
    assert matplotlib.get_backend().lower() == "agg"


def test_length_accuracy(tmp_path):
    rows = [
        {"task": t, "multiple": m, "length": int(20 * m), "acc": a}
        for t, accs in {"add": [0.99, 0.6, 0.1], "copy": [1.0, 0.95, 0.7]}.items()
        for m, a in zip([1, 2, 4], accs, strict=True)
    ]
    rows.append({"task": "add", "model": "hf", "multiple": 2, "acc": float("nan")})
    out = plots.plot_length_accuracy(rows, tmp_path / "sub" / "len.png")
    assert out == tmp_path / "sub" / "len.png"
    check_png(out, out.parent)


def test_position_loss_8k(tmp_path):
    pos = np.arange(1, 8193)
    rng = np.random.default_rng(0)
    curve = 2 + 3 / np.sqrt(pos) + np.where(pos > 2048, np.log(pos / 2048), 0)
    noisy = (curve + rng.normal(0, 0.3, len(pos))).tolist()
    noisy[100] = float("nan")
    curves = {"ours": noisy, "baseline": (curve + 0.2).tolist()[:4000]}
    out = plots.plot_position_loss(curves, 2048, tmp_path / "pos.png")
    check_png(out, tmp_path)
    out = plots.plot_position_loss({"x": [1.0, 2.0, 1.5]}, 2, tmp_path / "lin.png", log_x=False)
    check_png(out, tmp_path)


def test_valley(tmp_path):
    rows = [
        {
            "task": f"t{lv}",
            "complexity": c,
            "level": lv,
            "id_correct": i,
            "id_total": 100,
            "ood_correct": o,
            "ood_total": 100,
        }
        for lv, c, i, o in [(1, "O(N)", 95, 90), (2, "O(N^2)", 80, 40), (3, "O(2^N)", 0, 0)]
    ]
    out = plots.plot_valley(valley_table(rows), tmp_path / "valley.png")
    check_png(out, tmp_path)


def test_memorization(tmp_path):
    rng = np.random.default_rng(0)
    freq = np.floor(10 ** rng.uniform(0, 4, 400))
    freq[:20] = 0
    correct = (rng.random(400) < np.log10(1 + freq) / 4).astype(float)
    report = memorization_report(freq, correct, n_boot=100)
    out = plots.plot_memorization(freq, correct, report, tmp_path / "mem.png")
    check_png(out, tmp_path)


def test_metric_history(tmp_path):
    accs = [0.1, 0.3, 0.5, 0.6, 0.62, 0.55, 0.5, 0.52, 0.5, 0.49]
    records = [
        {"event": "eval", "step": s, "tokens": 1000 * s, "ood/acc": a, "loss": 3 / (1 + s)}
        for s, a in zip(range(0, 50, 5), accs, strict=True)
    ]
    records.insert(3, {"event": "train", "step": 12, "tokens": 12000, "lr": 1e-3})
    alerts = [
        {"event": "alert", "tokens": 25000, "metric": "ood/acc", "value": 0.55},
        {"event": "alert", "tokens": 30000, "metric": "ood/acc"},  # value from the curve
    ]
    out = plots.plot_metric_history(
        records, ["ood/acc", "loss"], tmp_path / "hist.png", alerts=alerts, stop_step=20000
    )
    img = check_png(out, tmp_path)
    assert img.shape[0] > 400  # two stacked panels
    out = plots.plot_metric_history(records, ["loss"], tmp_path / "steps.png", x="step")
    check_png(out, tmp_path)


@pytest.mark.parametrize(
    "call",
    [
        lambda p: plots.plot_length_accuracy([], p),
        lambda p: plots.plot_position_loss({}, 128, p),
        lambda p: plots.plot_valley({"levels": [], "critical": None}, p),
        lambda p: plots.plot_memorization([], [], {"bins": []}, p),
        lambda p: plots.plot_metric_history([], ["missing"], p),
    ],
)
def test_empty_inputs_still_write_a_png(tmp_path, call):
    out = call(tmp_path / "empty.png")
    assert mpimg.imread(out).shape[0] > 100


def test_overwrites_atomically(tmp_path):
    path = tmp_path / "p.png"
    path.write_bytes(b"old")
    plots.plot_length_accuracy([{"task": "a", "multiple": 1, "acc": 0.5}], path)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_save_figure_applies_the_umask_and_leaves_no_temporary_file(tmp_path):
    old = os.umask(0o027)
    try:
        fig, ax = plt.subplots()
        ax.plot([1, 2], [3, 4])
        out = plots.save_figure(fig, tmp_path / "sub" / "f.png")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # what open() gives under umask 027
    assert not plt.fignum_exists(fig.number)  # closed
    check_png(out, out.parent)


def test_labels_are_text_never_mathtext(tmp_path):
    """A run folder named `p$^$q` or `run$x$_1` is a label: typeset as is, never parsed as TeX
    (`p$^$q` raised a mathtext ValueError at savefig)."""
    rows = [{"task": name, "multiple": 1, "acc": 0.5} for name in ("p$^$q", "run$x$_1", "a$b")]
    out = plots.plot_length_accuracy(rows, tmp_path / "dollars.png")
    check_png(out, tmp_path)
    fig, ax = plt.subplots()
    assert not ax.set_title("run$x$_1").get_parse_math()
    plt.close(fig)


def test_helpers_are_public():
    assert plots.as_float("2.5") == 2.5 and math.isnan(plots.as_float(None))
    assert math.isnan(plots.as_float("x"))
    fig, ax = plt.subplots()
    plots.empty_note(ax, "no rows")
    assert [t.get_text() for t in ax.texts] == ["no rows"]
    plt.close(fig)


def test_no_module_reaches_into_private_plot_helpers():
    """report/ and experiments/ use the public names (save_figure, as_float, empty_note, plt)."""
    src = Path(plots.__file__).parents[1]
    bad = []
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "lengthwise.eval.plots":
                bad += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "plots"
                and node.attr.startswith("_")
            ):
                bad.append(f"{path.name}: plots.{node.attr}")
    assert bad == []
