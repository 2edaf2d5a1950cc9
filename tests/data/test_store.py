import json
import os
import stat

import numpy as np
import pytest

from lengthwise.config import DataConfig
from lengthwise.data.store import TokenStore, prepare
from lengthwise.data.tokenizer import load_tokenizer
from lengthwise.errors import UserError

DOCS = {
    "a.txt": "Memory barriers order loads and stores.\n",
    "sub/b.txt": "The scheduler picks the next task.\n" * 3,
    "sub/c.txt": "",  # empty: skipped and counted
    "d.txt": "x",
}


def _corpus(root):
    for name, text in DOCS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _cfg(tmp_path, **tok):
    if not (tmp_path / "corpus").exists():
        _corpus(tmp_path / "corpus")
    return DataConfig.model_validate(
        {
            "out_dir": str(tmp_path / "out"),
            "tokenizer": {"kind": "bpe", "vocab_size": 300, **tok},
            "splits": {"train": {"kind": "text_dir", "path": str(tmp_path / "corpus")}},
        }
    )


def test_prepare_writes_documents_with_eos(tmp_path):
    meta = prepare(_cfg(tmp_path), progress=False)["train"]
    store = TokenStore(tmp_path / "out" / "train")
    tok = load_tokenizer(tmp_path / "out" / "tokenizer.json")
    texts = [DOCS["a.txt"], DOCS["d.txt"], DOCS["sub/b.txt"]]  # sorted paths, empty skipped
    assert store.n_docs == 3 == meta["n_docs"]
    for i, text in enumerate(texts):
        assert store.doc(i).tolist() == tok.encode(text) + [tok.eos_id]
        assert tok.decode(store.doc(i)) == text
    assert store.tokens.dtype == np.uint16
    assert store.offsets.dtype == np.int64
    assert store.offsets[0] == 0 and store.offsets[-1] == store.n_tokens
    counts = meta["source"]["counts"]
    assert (counts["docs"], counts["empty_skipped"], counts["invalid_utf8_docs"]) == (3, 1, 0)
    assert meta["tokenizer"]["sha256"] == tok.fingerprint
    store.verify()


def test_rerun_is_a_noop(tmp_path):
    cfg = _cfg(tmp_path)
    prepare(cfg, progress=False)
    tokens = tmp_path / "out" / "train" / "tokens.bin"
    before = tokens.stat().st_mtime_ns, (tmp_path / "out" / "tokenizer.json").stat().st_mtime_ns
    prepare(cfg, progress=False)
    after = tokens.stat().st_mtime_ns, (tmp_path / "out" / "tokenizer.json").stat().st_mtime_ns
    assert before == after


def test_tokenizer_mismatch_is_an_error(tmp_path):
    prepare(_cfg(tmp_path), progress=False)
    other = tmp_path / "char.json"
    from lengthwise.data.tokenizer import char_tokenizer

    char_tokenizer().save(other)
    with pytest.raises(UserError, match="built with a different tokenizer"):
        prepare(_cfg(tmp_path, kind="file", path=str(other)), progress=False)
    # --overwrite rebuilds with the new tokenizer.
    meta = prepare(_cfg(tmp_path, kind="file", path=str(other)), overwrite=True, progress=False)
    assert meta["train"]["tokenizer"]["model"] == "WordLevel"
    assert TokenStore(tmp_path / "out" / "train").n_tokens == sum(
        len(t) + 1 for t in DOCS.values() if t
    )


def test_changed_inputs_are_an_error(tmp_path):
    cfg = _cfg(tmp_path)
    prepare(cfg, progress=False)
    tok_file = tmp_path / "out" / "tokenizer.json"
    before = tok_file.read_bytes()
    (tmp_path / "corpus" / "e.txt").write_text("a new document")
    # The BPE would be retrained on the new inputs, but a refused run writes nothing.
    with pytest.raises(UserError, match="train: inputs changed since it was built"):
        prepare(cfg, progress=False)
    assert tok_file.read_bytes() == before
    assert prepare(cfg, overwrite=True, progress=False)["train"]["n_docs"] == 4


def test_failed_build_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "fine too"}\nnot json\n')
    cfg = DataConfig.model_validate(
        {
            "out_dir": str(tmp_path / "out"),
            "tokenizer": {"kind": "char"},
            "splits": {"train": {"kind": "jsonl", "path": str(bad)}},
        }
    )
    with pytest.raises(UserError, match=r"bad.jsonl:3: not valid JSON"):
        prepare(cfg, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_truncated_or_corrupted_store_is_detected(tmp_path):
    prepare(_cfg(tmp_path), progress=False)
    path = tmp_path / "out" / "train"
    raw = (path / "tokens.bin").read_bytes()
    (path / "tokens.bin").write_bytes(raw[:-2])
    with pytest.raises(UserError, match="tokens.bin: missing or truncated"):
        TokenStore(path)
    flipped = bytearray(raw)
    flipped[0] ^= 1
    (path / "tokens.bin").write_bytes(bytes(flipped))
    with pytest.raises(UserError, match="checksum mismatch"):
        TokenStore(path).verify()


def test_bos_and_uint32(tmp_path):
    meta = prepare(_cfg(tmp_path, kind="char", bos=True), progress=False)["train"]
    store = TokenStore(tmp_path / "out" / "train")
    first = store.doc(0)
    assert first[0] == meta["tokenizer"]["bos_id"] and first[-1] == meta["tokenizer"]["eos_id"]
    assert len(first) == len(DOCS["a.txt"]) + 2
    assert json.loads((store.path / "meta.json").read_text())["source"]["bos"] is True


# shards of 2: a mix within the first shard, within a later one, and between shards either way
@pytest.mark.parametrize("coupled", [{1}, {3}, {2, 3}, {0, 1}])
def test_documents_with_and_without_positions_are_refused(tmp_path, coupled):
    from lengthwise.data.sources import Document
    from lengthwise.data.store import write_store
    from lengthwise.data.tokenizer import char_tokenizer

    docs = [Document("1+2=3", f"task:x#{i}", 4) for i in range(4)]
    for i in coupled:
        docs[i] = Document("1+2=3", f"task:x#{i}", 4, (1, 0, 1, 0, 1, 0))
    with pytest.raises(UserError, match="documents with and without position ids mixed"):
        write_store(tmp_path / "s", iter(docs), char_tokenizer(), {}, shard_docs=2)
    assert list(tmp_path.iterdir()) == []  # no store, no temporary folder


def test_prepare_removes_only_its_own_leftovers(tmp_path):
    cfg = _cfg(tmp_path, kind="char")
    prepare(cfg, progress=False)
    out = tmp_path / "out"
    ours = [  # what killed writers of this data dir leave (lengthwise.io's names)
        out / ".train.tmp-k1ll3d",
        out / ".train.old-4242-abcdefgh",
        out / ".tokenizer.json.tmp-x1y2z3",
        out / ".tokenizer.meta.json.tmp-q9",
    ]
    for p in ours[:2]:
        p.mkdir()
        (p / "tokens.bin").write_bytes(b"\0" * 64)
    for p in ours[2:]:
        p.write_text("{")
    (out / ".notes").write_text("mine")
    (out / "mine.tmp").mkdir()
    (out / "mine.tmp" / "x").write_text("mine")
    (out / "train.tmp-1").write_text("mine")  # no leading dot: not a name io.py gives
    before = sorted(p.name for p in out.iterdir())
    prepare(cfg, progress=False)  # up to date: nothing rebuilt, leftovers still removed
    after = sorted(p.name for p in out.iterdir())
    assert sorted(set(before) - set(after)) == sorted(p.name for p in ours)
    assert after == [
        ".notes",
        "mine.tmp",
        "tokenizer.json",
        "tokenizer.meta.json",
        "train",
        "train.tmp-1",
    ]
    assert (out / "mine.tmp" / "x").read_text() == "mine"


def test_a_refused_prepare_removes_nothing(tmp_path):
    prepare(_cfg(tmp_path, kind="char"), progress=False)
    (tmp_path / "out" / ".train.tmp-k1ll3d").mkdir()
    with pytest.raises(UserError, match="built with a different tokenizer"):
        prepare(_cfg(tmp_path, kind="char", alphabet="abc"), progress=False)
    assert (tmp_path / "out" / ".train.tmp-k1ll3d").is_dir()


@pytest.mark.parametrize(
    "umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)]
)
def test_store_modes_follow_the_umask(tmp_path, umask, folder_mode, file_mode):
    old = os.umask(umask)
    try:
        prepare(_cfg(tmp_path, kind="char", bos=True), progress=False)
        prepare(_cfg(tmp_path, kind="char", bos=True), overwrite=True, progress=False)  # replace
    finally:
        os.umask(old)
    out = tmp_path / "out"
    store = out / "train"
    assert stat.S_IMODE(store.stat().st_mode) == folder_mode
    files = [*store.iterdir(), out / "tokenizer.json", out / "tokenizer.meta.json"]
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {
        p.name: file_mode for p in files
    }
    assert len(files) == 5  # tokens.bin, doc_offsets.npy, meta.json and the tokenizer's two


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_is_not_a_store_is_not_replaced(tmp_path, overwrite):
    (tmp_path / "out" / "train").mkdir(parents=True)
    (tmp_path / "out" / "train" / "notes.txt").write_text("mine")
    cfg = _cfg(tmp_path, kind="char")
    if overwrite:  # asked for: replaced
        assert prepare(cfg, overwrite=True, progress=False)["train"]["n_docs"] == 3
        assert not (tmp_path / "out" / "train" / "notes.txt").exists()
    else:
        with pytest.raises(UserError, match="not a token store; choose another path or pass"):
            prepare(cfg, progress=False)
        assert (tmp_path / "out" / "train" / "notes.txt").read_text() == "mine"
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train"]


def test_a_file_at_a_store_path_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train").write_text("mine")
    with pytest.raises(UserError, match="train: exists and is not a folder"):
        prepare(_cfg(tmp_path, kind="char"), overwrite=True, progress=False)
    assert (tmp_path / "out" / "train").read_text() == "mine"


def test_tokenizer_mismatch(tmp_path):
    from lengthwise.data.store import tokenizer_mismatch
    from lengthwise.data.tokenizer import char_tokenizer

    prepare(_cfg(tmp_path, kind="char"), progress=False)
    store, tok_file = tmp_path / "out" / "train", tmp_path / "out" / "tokenizer.json"
    assert tokenizer_mismatch(store, tok_file) is None
    assert tokenizer_mismatch(store, load_tokenizer(tok_file)) is None
    other = char_tokenizer("abc")
    other.save(tok_file)  # swapped after prepare
    problem = tokenizer_mismatch(store, tok_file)
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"{store}: built with a different tokenizer (")
    assert problem.endswith(f"vs {other.fingerprint[:12]} of {tok_file})")
    with pytest.raises(UserError, match="not a token store"):
        tokenizer_mismatch(tmp_path, tok_file)
