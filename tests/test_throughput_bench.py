"""benchmarks/throughput.py worker mode on a tiny store and model: the JSON it prints is what the
parent and `--json` consumers rely on. Speed is not asserted (it depends on the machine).
The workers run in this process (`main()` with their argv): a worker process would add ~3 s of
Python and torch start-up each and test nothing more."""

import contextlib
import importlib.util
import io
import json
import math
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCHED = ("concat_chunk", "decomposition")
POSITIVE = ("tokens_per_s", "slots_per_s", "flops_per_s", "step_s", "peak_rss_mb", "loss")


def worker_lines(throughput, cwd: Path, argv: list[str]) -> list[dict]:
    """Run the script's worker mode in this process (cwd `cwd`); its JSON lines."""
    stdout = io.StringIO()
    with (
        mock.patch.object(sys, "argv", [str(SCRIPT), *argv]),
        contextlib.chdir(cwd),
        contextlib.redirect_stdout(stdout),
    ):
        assert throughput.main() == 0
    return [json.loads(x) for x in stdout.getvalue().splitlines() if x.startswith("{")]


@pytest.fixture(scope="module")
def measurements(throughput, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("throughput")
    docs = [("lorem ipsum dolor sit amet " * (1 + i % 9))[: 20 + 13 * i] for i in range(60)]
    (tmp / "docs.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    (tmp / "cfg.yaml").write_text(
        f"data:\n  out_dir: {tmp / 'data'}\n  tokenizer: {{kind: char}}\n"
        f"  splits:\n    train: {{kind: jsonl, path: {tmp / 'docs.jsonl'}}}\n"
        "batching: {min_bucket: 8, curriculum: {name: grow_p2, cycles: 2}}\n"
    )
    common = ["--config", str(tmp / "cfg.yaml"), "--max-len", "64", "--tokens-per-step", "256"]
    common += ["--d-model", "32", "--n-layer", "1", "--n-head", "2", "--repeats", "2"]
    # The first worker also builds the store; the second then finds it up to date.
    out = {}
    for name in BENCHED:
        out[name] = worker_lines(throughput, tmp, ["--worker", name, *common])
    out["_tmp"] = str(tmp)
    return out


@pytest.mark.parametrize("name", BENCHED)
def test_worker_json(measurements, name):
    ms = measurements[name]
    assert [m["repeat"] for m in ms] == [0, 1]
    for m in ms:
        assert (m["strategy"], m["max_len"], m["device"]) == (name, 64, "cpu")
        for key in POSITIVE:
            assert math.isfinite(m[key]) and m[key] > 0, key
        assert 0 < m["attn_flop_share"] < 1 and 0 <= m["pad_fraction"] < 1
        assert 0.5 < m["fwd_frac"] + m["bwd_frac"] + m["opt_frac"] <= 1  # of the step's wall time
        assert m["slots_per_s"] >= m["tokens_per_s"] * (1 - 1e-9)  # real tokens <= slots
        assert sum(g["epoch_steps"] for g in m["groups"]) == m["epoch_steps"]
        assert all(g["step_s"] > 0 for g in m["groups"])


def test_summary_rows(throughput, measurements):
    """The parent's reduction: one row per strategy with the keys `--json` promises."""
    rows = throughput.summarize({k: measurements[k] for k in BENCHED}, peak=1e12)
    by = {r["strategy"]: r for r in rows}
    assert by["concat_chunk"]["ratio_vs_concat_chunk"] == 1.0
    for r in rows:
        for key in ("tokens_per_s", "ratio_vs_concat_chunk", "peak_rss_mb", "mfu"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert r["max_len"] == 64
    assert throughput.explain(rows, {})[0].startswith("max_len 64: decomposition = ")


def _measurement(name, fpt, tps, **extra):
    """A hand-made worker measurement: only what `summarize` reads."""
    return {
        "strategy": name,
        "max_len": 1024,
        "device": "cpu",
        "tokens_per_step": 4096,
        "tokens_per_s": tps,
        "slots_per_s": tps,
        "flops_per_s": fpt * tps,
        "step_s": 4096 / tps,
        "fwd_frac": 0.3,
        "bwd_frac": 0.6,
        "opt_frac": 0.1,
        "groups": [{"label": "1024", "seq_len": 1024, "epoch_steps": 10, "step_s": 4096 / tps}],
        "attn_flop_share": 0.2,
        "flops_per_real_token": fpt,
        "mean_seq_len": 1024.0,
        "pad_fraction": 0.0,
        "epoch_steps": 10,
        "d_model": 64,
        "n_layer": 2,
        "n_head": 2,
        "vocab": 100,
        "peak_rss_mb": 100.0,
        "timed_steps": 1,
        "retries": 0,
        "contended_steps": 0,
        "setup_rss_mb": 90.0,
        "peak_device_mb": None,
        **extra,
    }


def test_flop_bound(throughput):
    """flop_bound = concat_chunk's FLOPs per real token / the strategy's; None without cc."""
    runs = {
        "concat_chunk": [_measurement("concat_chunk", 3000.0, 100.0)] * 2,
        "decomposition": [_measurement("decomposition", 2000.0, 130.0)] * 2,
        "pad": [_measurement("pad", 6000.0, 50.0)] * 2,
    }
    by = {r["strategy"]: r for r in throughput.summarize(runs, peak=1e12)}
    assert by["concat_chunk"]["flop_bound"] == 1.0
    assert by["decomposition"]["flop_bound"] == pytest.approx(1.5)
    assert by["pad"]["flop_bound"] == pytest.approx(0.5)
    assert by["decomposition"]["ratio_vs_concat_chunk"] == pytest.approx(1.3)
    assert all(r["compiled"] is False and r["docs"] == "store" for r in by.values())
    no_ref = throughput.summarize({"pad": runs["pad"]}, peak=1e12)
    assert no_ref[0]["flop_bound"] is None and no_ref[0]["ratio_vs_concat_chunk"] is None
    table = throughput.format_table(list(by.values()), "cpu")
    assert "bound" in table.splitlines()[0] and "1.50x" in table
    why = "\n".join(throughput.explain(list(by.values()), {}))
    assert "a FLOP bound of 1.50x" in why and "measured 1.30x, 60% of the gain" in why
    assert "pad 0.50x (measured 0.50x)" in why


def test_compile_payoff(throughput):
    """Compiled rows: speedup over the eager row, steps until the compile time is paid back."""
    eager = throughput.summarize({"concat_chunk": [_measurement("concat_chunk", 1.0, 100.0)]}, 1)
    fast = _measurement("concat_chunk", 1.0, 128.0, mode="compiled", compile_s=30.0)
    slow = _measurement("decomposition", 1.0, 90.0, mode="compiled", compile_s=30.0)
    e2 = throughput.summarize({"decomposition": [_measurement("decomposition", 1.0, 100.0)]}, 1)
    rows = eager + e2 + throughput.summarize({"concat_chunk": [fast], "decomposition": [slow]}, 1)
    throughput.add_compile_payoff(rows)
    by = {(r["strategy"], r["compiled"]): r for r in rows}
    assert by["concat_chunk", False]["speedup_vs_eager"] is None
    c = by["concat_chunk", True]
    assert c["speedup_vs_eager"] == pytest.approx(1.28)
    saved = 4096 / 100 - 4096 / 128  # eager step_s - compiled step_s
    assert c["compile_payoff_steps"] == pytest.approx(30.0 / saved)
    assert by["decomposition", True]["compile_payoff_steps"] is None  # slower: never pays
    full = throughput.summarize(
        {"concat_chunk": [_measurement("concat_chunk", 1, 80.0, mode="full_logits")]}, 1
    )
    throughput.add_compile_payoff(eager + full)
    assert full[0]["speedup_vs_eager"] == pytest.approx(0.8)
    assert full[0]["compile_payoff_steps"] is None and not full[0]["compiled"]
    assert "concat_chunk [full]" in throughput.format_table(full, "cpu")


def test_full_logits_mode_trains_the_same_loss(throughput, measurements):
    """--mode full_logits (the loss before the chunked LM head) steps the same model through
    the same batches to the same loss as the default: only the cost differs."""
    tmp = Path(measurements["_tmp"])
    losses = {}
    for mode in ("eager", "full_logits"):
        argv = ["--worker", "concat_chunk", "--mode", mode, "--config", "cfg.yaml"]
        argv += ["--max-len", "64", "--tokens-per-step", "256", "--d-model", "32"]
        argv += ["--n-layer", "1", "--n-head", "2", "--repeats", "1", "--retries", "0"]
        (m,) = worker_lines(throughput, tmp, argv)
        assert m["mode"] == mode and m["compiled"] is False
        losses[mode] = m["loss"]
    assert losses["full_logits"] == pytest.approx(losses["eager"], rel=1e-5)


def test_docs_longer_than(throughput):
    offsets = np.cumsum([0, 100, 300, 600, 5000, 10000])  # lengths 100, 300, 600, 5000, 10000
    got = throughput.docs_longer_than(offsets, 8192)
    assert list(got) == [256, 512, 1024, 2048, 4096, 8192]
    total = 16000
    assert got[256] == (4, pytest.approx(15900 / total))
    assert got[512] == (3, pytest.approx(15600 / total))
    assert got[1024] == got[2048] == got[4096] == (2, pytest.approx(15000 / total))
    assert got[8192] == (1, pytest.approx(10000 / total))
    assert throughput.docs_longer_than(offsets, 128) == {}
    line = throughput.format_docs_longer(8192, "store", offsets)
    assert "(5) longer than" in line and "> 8192: 1 (62% of tokens)" in line


def test_docs_web_recuts_offsets_not_tokens(throughput, measurements, tmp_path):
    """--docs web: the strategies see the store's tokens with other document boundaries."""
    from lengthwise.data.store import TokenStore

    store = TokenStore(next(Path(measurements["_tmp"]).glob("data/train")))
    web = throughput.doc_offsets(store, "web", seed=0)
    assert np.array_equal(throughput.doc_offsets(store, "store", 0), store.offsets)
    assert web[0] == 0 and web[-1] == store.n_tokens and (np.diff(web) > 0).all()
    assert not np.array_equal(web, store.offsets)
    assert np.array_equal(web, throughput.doc_offsets(store, "web", seed=0))  # seeded


def test_plot_from_json(throughput, measurements, tmp_path):
    """--plot writes a PNG and the rows beside it; --from-json re-plots saved rows."""
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib")
    ms = {k: v for k, v in measurements.items() if k in BENCHED}
    rows = throughput.summarize(ms, peak=1e12)
    other = [{**r, "max_len": 128, "tokens_per_s": r["tokens_per_s"] / 2} for r in rows]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(rows))
    b.write_text(json.dumps(other))
    out = tmp_path / "plots" / "both.png"
    argv = [str(SCRIPT), "--from-json", str(a), str(b), "--plot", str(out)]
    with mock.patch.object(sys, "argv", argv):
        assert throughput.main() == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert json.loads(out.with_suffix(".json").read_text()) == rows + other
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]  # atomic: no leftovers
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    argv = [str(SCRIPT), "--from-json", str(bad), "--plot", str(out)]
    with mock.patch.object(sys, "argv", argv):
        assert throughput.main() == 2


@pytest.mark.slow  # torch.compile of every step shape: ~20-60 s of cold compiles on 2 cores
def test_compiled_worker(throughput, measurements):
    """--mode compiled: every exact step shape compiled in warm-up, its seconds reported."""
    tmp = Path(measurements["_tmp"])
    argv = ["--worker", "decomposition", "--mode", "compiled", "--config", "cfg.yaml"]
    argv += ["--max-len", "32", "--tokens-per-step", "128", "--d-model", "16"]
    argv += ["--n-layer", "1", "--n-head", "2", "--repeats", "1"]
    (m,) = worker_lines(throughput, tmp, argv)
    assert m["compiled"] is True and m["compile_s"] > 0
    shapes = m["compile_s_per_shape"]
    assert set(shapes) == {"16x8", "8x16", "4x32"}  # buckets 8, 16, 32 at 128 tokens/step
    assert m["compile_s"] == pytest.approx(sum(shapes.values()))
    assert m["tokens_per_s"] > 0 and math.isfinite(m["loss"])


def test_split_by_cost_stratifies_shapes_whose_steps_differ_in_attention(throughput):
    """A shape whose steps differ > 2x in attention pairs is cut into PAIR_STRATA strata,
    cheapest first, every step kept once; a uniform shape, or a small one, stays whole."""
    pairs = [10, 80, 20, 70, 30, 60, 40, 50] + [100] * 8 + [1, 50]
    by_shape = {(64, 4): list(range(8)), (128, 2): list(range(8, 16)), (32, 8): [16, 17]}
    out = throughput.split_by_cost(by_shape, pairs, min_steps=4)
    assert out[(128, 2)] == list(range(8, 16))  # all 100: one stratum
    assert out[(32, 8)] == [16, 17]  # 50x apart, but fewer steps than strata
    split = [out[(64, 4, q)] for q in range(throughput.PAIR_STRATA)]
    assert [[pairs[s] for s in part] for part in split] == [[10, 20], [30, 40], [50, 60], [70, 80]]
    assert throughput.split_by_cost(by_shape, pairs, min_steps=9)[(64, 4)] == list(range(8))
