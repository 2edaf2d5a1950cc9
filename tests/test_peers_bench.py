"""benchmarks/peers.py on a tiny store and model: the counts, the shared val loss, the
snapshots and the row schema that the table and `--json` rely on. Speed is not asserted."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "peers.py"
sys.path.insert(0, str(SCRIPT.parent))
import peers  # noqa: E402

from lengthwise.config import load_config  # noqa: E402
from lengthwise.data.store import TokenStore, prepare  # noqa: E402

MAX_LEN = 32
TINY = ["--max-len", str(MAX_LEN), "--tokens-per-step", "128", "--d-model", "16", "--n-layer", "1"]
TINY += ["--n-head", "2", "--budget", "1024", "--snapshots", "2", "--eval-tokens", "256"]
TINY += ["--threads", "1", "--time-limit", "0"]
ROW_KEYS = ("name", "real_tokens_per_s", "peak_rss_mb", "val_loss_equal_tokens")


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """A prepared char-level store with train and val splits of varied document lengths."""
    tmp = tmp_path_factory.mktemp("peers")
    for split, n in (("train", 60), ("val", 10)):
        docs = [("lorem ipsum dolor sit amet " * (1 + i % 5))[: 9 + 7 * i] for i in range(n)]
        (tmp / f"{split}.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    path = tmp / "cfg.yaml"
    path.write_text(
        f"data:\n  out_dir: {tmp / 'data'}\n  tokenizer: {{kind: char}}\n  splits:\n"
        f"    train: {{kind: jsonl, path: {tmp / 'train.jsonl'}}}\n"
        f"    val: {{kind: jsonl, path: {tmp / 'val.jsonl'}}}\n"
        "batching: {min_bucket: 8}\n"
    )
    prepare(load_config(path).data, progress=False)
    return path


@pytest.fixture(scope="module")
def store(config) -> TokenStore:
    return TokenStore(config.parent / "data" / "train")


def args_for(config: Path, *extra: str):
    args = peers.parser().parse_args(["--config", str(config), *TINY, *extra])
    peers.fill_defaults(args, peers.FULL, peers.QUICK)
    return args


def doc_targets(store: TokenStore, docs: range) -> int:
    """Real targets of whole documents truncated at MAX_LEN: n - 1 each."""
    return sum(min(int(store.lengths[d]), MAX_LEN) - 1 for d in docs)


def test_batch_counts_excludes_pads_and_first_labels():
    labels = torch.tensor([[5, 6, 7, -100, -100], [8, 9, -100, -100, -100]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    # row 0 trains 6 and 7, row 1 trains 9: a row's first label is never predicted
    assert peers.batch_counts({"labels": labels, "attention_mask": mask}) == (3, 10, 5)
    assert peers.batch_counts({"labels": labels}) == (3, 10, 0)


def test_padded_collator_ignores_exactly_the_pads(store, config):
    pytest.importorskip("transformers")
    tok = config.parent / "data" / "tokenizer.json"
    dataset, collate = peers.hf_data("hf_padded", store, MAX_LEN, tok)
    batch = collate([dataset[i] for i in range(3, 7)])
    pad_id = store.meta["tokenizer"]["pad_id"]
    pads = int((batch["input_ids"] == pad_id).sum())
    assert pads > 0
    assert int((batch["labels"] == -100).sum()) == pads == int((batch["attention_mask"] == 0).sum())
    targets, slots, n_pad = peers.batch_counts(batch)
    assert (targets, n_pad) == (doc_targets(store, range(3, 7)), pads)
    assert slots == 4 * batch["input_ids"].shape[1]


def test_flattening_collator_one_row_no_padding(store, config):
    pytest.importorskip("transformers")
    dataset, collate = peers.hf_data("hf_flatten", store, MAX_LEN, Path("unused"))
    docs = range(3, 7)
    batch = collate([dataset[i] for i in docs])
    lengths = [min(int(store.lengths[d]), MAX_LEN) for d in docs]
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    assert peers.batch_counts(batch) == (doc_targets(store, docs), sum(lengths), 0)


def test_group_texts_blocks(store):
    blocks = peers.Blocks(store, MAX_LEN)
    assert len(blocks) == store.n_tokens // MAX_LEN
    item = blocks[2]
    assert item["input_ids"] == store.tokens[2 * MAX_LEN : 3 * MAX_LEN].tolist()
    assert item["labels"] == item["input_ids"]
    batch = {"labels": torch.tensor([blocks[i]["labels"] for i in range(4)])}
    assert peers.batch_counts(batch) == (4 * (MAX_LEN - 1), 4 * MAX_LEN, 0)


@pytest.mark.parametrize("batch_tokens", [4, 4096])
def test_val_loss_is_mean_cross_entropy_over_real_targets(batch_tokens):
    """Three documents (5, 3 and 7 tokens) cut at max_len 4, scored by a bigram 'model'."""
    torch.manual_seed(0)
    table = torch.randn(10, 10)
    tokens = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3, 4, 5, 6])
    offsets = np.array([0, 5, 8, 15])
    pieces = [[1, 2, 3, 4], [5], [6, 7, 8], [9, 1, 2, 3], [4, 5, 6]]
    nll = [
        -F.log_softmax(table[p[t]], -1)[p[t + 1]].item() for p in pieces for t in range(len(p) - 1)
    ]
    got = peers.val_loss(lambda x: table[x], tokens, offsets, 4, 100, 0, batch_tokens)
    assert len(nll) == 3 + 2 + 3 + 2
    assert got == pytest.approx(sum(nll) / len(nll), rel=1e-6)


def test_recorder_snapshots_at_token_marks(tmp_path):
    model = torch.nn.Linear(2, 2)
    rec = peers.Recorder(budget=100, snapshots=4, folder=tmp_path)
    rec.start(model)
    stops = [rec.step(30, 40, 2, model) for _ in range(4)]
    assert stops == [False, False, False, True]
    assert [p["tokens"] for p in rec.points] == [0, 30, 60, 90, 120]  # marks 25, 50, 75, end
    assert all(p["path"].is_file() for p in rec.points)
    assert [p["seconds"] for p in rec.points] == sorted(p["seconds"] for p in rec.points)
    assert (rec.steps, rec.slots, rec.pads) == (4, 160, 8) and rec.peak_rss_mb > 0


def test_flatten_probe_is_consistent():
    pytest.importorskip("transformers")
    p = peers.flatten_probe()
    assert p["position_ids"] == [*range(7), *range(5)]
    assert p["masked_in_training"] == (p["diff_training"] < 1e-4)
    assert ("ARE masked" if p["masked_in_training"] else "NOT masked") in peers.flatten_note(p)


def fake_run(name, seed, tps, seconds, losses, reached=True):
    curve = [
        {"tokens": 100 * i, "seconds": seconds * i / (len(losses) - 1), "val_loss": v}
        for i, v in enumerate(losses)
    ]
    return {
        "name": name,
        "seed": seed,
        "params": 10,
        "steps": 4,
        "real_tokens": 100 * (len(losses) - 1),
        "reached_budget": reached,
        "pad_fraction": 0.0,
        "train_seconds": seconds,
        "real_tokens_per_s": tps,
        "peak_rss_mb": 100.0 * tps,
        "setup_rss_mb": 50.0,
        "curve": curve,
    }


def test_summarize_ratios_and_equal_time():
    runs = {
        "hf_padded": [fake_run("hf_padded", s, 1.0, 20.0, [9, 8, 7]) for s in (0, 1)],
        "concat_chunk": [fake_run("concat_chunk", s, 2.0, 10.0, [9, 7, 6]) for s in (0, 1)],
    }
    rows = {r["name"]: r for r in peers.summarize(runs)}
    assert rows["hf_padded"]["ratio_tokens_per_s"] == 1.0
    assert rows["concat_chunk"]["ratio_tokens_per_s"] == 2.0
    assert rows["concat_chunk"]["ratio_peak_rss"] == 2.0
    # W = 10 s (concat_chunk's median): hf_padded's last snapshot by then is its middle one
    assert rows["hf_padded"]["equal_time_s"] == 10.0
    assert rows["hf_padded"]["val_loss_equal_time"] == 8
    assert rows["hf_padded"]["tokens_equal_time"] == 100
    assert rows["concat_chunk"]["val_loss_equal_time"] == 6
    assert rows["concat_chunk"]["val_loss_equal_tokens"] == 6
    runs["hf_padded"][0]["reached_budget"] = False  # hit the time limit
    assert peers.summarize(runs)[0]["val_loss_equal_tokens"] is None
    assert "concat_chunk" in peers.format_table(peers.summarize(runs))


@pytest.mark.parametrize("name", ["concat_chunk", "decomposition_grow_p2", "hf_padded"])
def test_one_run(config, name, tmp_path):
    """A child's work in-process: trained to the budget, every snapshot scored."""
    if name.startswith("hf_"):
        pytest.importorskip("transformers")
        pytest.importorskip("accelerate")  # HF Trainer needs it
    args = args_for(config, "--_one", name, "--model-overrides", *peers.GPT2_LIKE)
    threads = torch.get_num_threads()
    try:
        out = peers.run_one(args)
    finally:
        torch.set_num_threads(threads)
    json.dumps(out)
    assert out["name"] == name and out["reached_budget"]
    assert 1024 <= out["real_tokens"] < 1024 + 128
    assert [p["tokens"] for p in out["curve"]][0] == 0 and len(out["curve"]) == 3
    assert out["curve"][-1]["tokens"] == out["real_tokens"]
    for p in out["curve"]:
        assert math.isfinite(p["val_loss"]) and p["val_loss"] > 0
    assert out["curve"][-1]["val_loss"] < out["curve"][0]["val_loss"]  # it learned something
    assert out["real_tokens_per_s"] > 0 and out["peak_rss_mb"] >= out["setup_rss_mb"] > 0


def test_web_docs_recut_the_same_tokens_and_score_positions_to_2x(config, store, tmp_path):
    """--docs web: a data folder whose train store holds the same tokens in web-length
    documents (the val store unchanged), which prepare accepts as up to date; a run on it with
    --position-loss 2 scores its final weights at every position up to 2 x max_len."""
    from lengthwise.data.recut import recut_offsets

    args = args_for(config, "--_one", "concat_chunk", "--docs", "web", "--position-loss", "2")
    cfg = peers.run_config(args, "concat_chunk", 0, tmp_path)
    assert cfg.data.out_dir.name == "data_web0"
    web = TokenStore(cfg.data.out_dir / "train")
    assert np.array_equal(np.asarray(web.tokens), np.asarray(store.tokens))
    assert np.array_equal(web.offsets, recut_offsets(store.n_tokens, 0))
    assert not np.array_equal(web.offsets, store.offsets)
    assert prepare(cfg.data, progress=False)["train"]["recut"]["seed"] == 0  # kept, not rebuilt
    val = TokenStore(cfg.data.out_dir / "val")
    assert np.array_equal(val.offsets, TokenStore(config.parent / "data" / "val").offsets)
    threads = torch.get_num_threads()
    try:
        out = peers.run_one(args)
    finally:
        torch.set_num_threads(threads)
    pos = out["position_loss"]
    assert pos["max_len"] == MAX_LEN and len(pos["loss"]) == 2 * MAX_LEN
    assert pos["docs_at"][0] == peers.POSITION_DOCS  # 10 val documents, the 8 longest scored
    assert pos["docs_at"][-1] == int((val.lengths > 2 * MAX_LEN).sum())


@pytest.mark.slow
def test_json_rows(config):
    """The whole script, two rows x two repeats in child processes: `--json` rows."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    cmd = [sys.executable, str(SCRIPT), "--json", "--config", str(config), *TINY]
    cmd += ["--repeats", "2", "--peers", "hf_group_texts", "best_fit"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows] == ["hf_group_texts", "best_fit"]
    for r in rows:
        for key in ROW_KEYS:
            assert r[key] is not None, key
        assert r["seeds"] == [0, 1] and r["real_tokens_per_s"] > 0
    assert rows[0]["ratio_tokens_per_s"] is None  # no hf_padded row to compare with


def test_the_hf_trainer_on_lengthwise_batches_trains_what_lengthwise_train_trains(config):
    """llama_hf_dd (the stock HF Trainer loop on lengthwise's DD + Grow-P2 batches) and
    llama_decomposition_grow_p2 (`lengthwise train`, model.kind: hf): the same Llama, the same
    seed, batches, optimizer groups and schedule: the same val loss at every snapshot, so
    their tok/s compare the loops and nothing else. llama_hf_padded builds the same model."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    threads = torch.get_num_threads()
    out = {}
    try:
        for name in ("llama_hf_dd", "llama_decomposition_grow_p2", "llama_hf_padded"):
            out[name] = peers.run_one(args_for(config, "--_one", name))
    finally:
        torch.set_num_threads(threads)
    ours, theirs = out["llama_decomposition_grow_p2"], out["llama_hf_dd"]
    assert ours["params"] == theirs["params"] == out["llama_hf_padded"]["params"]
    assert [p["tokens"] for p in ours["curve"]] == [p["tokens"] for p in theirs["curve"]]
    for a, b in zip(ours["curve"], theirs["curve"], strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)
    assert ours["curve"][-1]["val_loss"] < ours["curve"][0]["val_loss"]
