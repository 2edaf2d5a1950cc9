import builtins
import gzip
import json
import os
import sys
from pathlib import Path

import pytest

from lengthwise.config import SourceConfig
from lengthwise.data.sources import (
    Document,
    SourceStats,
    describe_source,
    iter_documents,
    source_files,
    source_fingerprint,
)
from lengthwise.errors import UserError


def _cfg(kind: str, path: Path, **kw) -> SourceConfig:
    return SourceConfig(kind=kind, path=path, **kw)


def _read(cfg: SourceConfig) -> tuple[list[Document], SourceStats]:
    stats = SourceStats()
    return list(iter_documents(cfg, stats)), stats


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        data = gzip.compress(data.encode() if isinstance(data, str) else data)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _jsonl(path: Path, *lines: object) -> Path:
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    return _write(path, text)


def _error(cfg: SourceConfig) -> str:
    with pytest.raises(UserError) as e:
        list(iter_documents(cfg))
    return str(e.value)


# --- text_dir ----------------------------------------------------------------------------------


def test_text_dir_recurses_sorts_by_relative_path_and_decompresses_gz(tmp_path):
    _write(tmp_path / "b.txt", "bee")
    _write(tmp_path / "a" / "z.txt", "zed")
    _write(tmp_path / "a" / "y.txt.gz", "why")
    _write(tmp_path / "c.md", "not matched")
    (tmp_path / "dir.txt").mkdir()  # a directory the glob matches: not a document
    docs, stats = _read(_cfg("text_dir", tmp_path, glob="**/*.txt*"))
    assert docs == [
        Document("why", str(tmp_path / "a" / "y.txt.gz")),
        Document("zed", str(tmp_path / "a" / "z.txt")),
        Document("bee", str(tmp_path / "b.txt")),
    ]
    assert stats == SourceStats(docs=3, empty_skipped=0, invalid_utf8_docs=0, bytes_read=9)
    plain = [d.text for d in iter_documents(_cfg("text_dir", tmp_path))]
    assert plain == ["zed", "bee"]


def test_text_dir_skips_and_counts_empty_documents(tmp_path):
    _write(tmp_path / "1.txt", "")
    _write(tmp_path / "2.txt", " \n\t ")
    _write(tmp_path / "3.txt", " x ")
    docs, stats = _read(_cfg("text_dir", tmp_path))
    assert [d.text for d in docs] == [" x "]
    assert (stats.docs, stats.empty_skipped, stats.bytes_read) == (1, 2, 7)


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    _write(tmp_path / "bad.txt", b"ok \xff\xfe end")
    _write(tmp_path / "good.txt", "caf\u00e9".encode())
    docs, stats = _read(_cfg("text_dir", tmp_path))
    assert [d.text for d in docs] == ["ok \ufffd\ufffd end", "caf\u00e9"]
    assert (stats.docs, stats.invalid_utf8_docs) == (2, 1)


# --- jsonl -------------------------------------------------------------------------------------


def test_jsonl_plain_and_gz_in_a_directory_with_blank_lines(tmp_path):
    _jsonl(tmp_path / "a.jsonl", {"text": "one"}, "", {"text": "two", "id": 2}, "   ")
    _jsonl(tmp_path / "sub" / "b.jsonl.gz", {"text": "three"})
    _write(tmp_path / "notes.txt", "ignored")
    docs, stats = _read(_cfg("jsonl", tmp_path))
    assert docs == [
        Document("one", f"{tmp_path / 'a.jsonl'}:1"),
        Document("two", f"{tmp_path / 'a.jsonl'}:3"),
        Document("three", f"{tmp_path / 'sub' / 'b.jsonl.gz'}:1"),
    ]
    assert (stats.docs, stats.empty_skipped) == (3, 0)
    assert source_files(_cfg("jsonl", tmp_path)) == [
        tmp_path / "a.jsonl",
        tmp_path / "sub" / "b.jsonl.gz",
    ]


def test_jsonl_single_file_custom_field_null_and_empty(tmp_path):
    f = _jsonl(tmp_path / "x.jsonl", {"body": "a"}, {"body": None}, {"body": ""}, {"body": "b"})
    docs, stats = _read(_cfg("jsonl", f, text_field="body"))
    assert [(d.text, d.origin) for d in docs] == [("a", f"{f}:1"), ("b", f"{f}:4")]
    assert (stats.docs, stats.empty_skipped) == (2, 2)


def test_jsonl_bad_json_names_file_and_line(tmp_path):
    f = _jsonl(tmp_path / "x.jsonl", {"text": "a"}, {"text": "b"}, '{"text": oops}')
    assert _error(_cfg("jsonl", f)) == f"{f}:3: not valid JSON (Expecting value at column 10)"


def test_jsonl_missing_field_lists_the_fields(tmp_path):
    f = _jsonl(tmp_path / "x.jsonl", {"body": "a", "id": 1})
    assert _error(_cfg("jsonl", f)) == f"{f}:1: no field 'text' (fields: body, id)"


def test_jsonl_non_object_line_and_non_string_field(tmp_path):
    f = _jsonl(tmp_path / "x.jsonl", ["text"])
    assert _error(_cfg("jsonl", f)) == f"{f}:1: no field 'text' (the line is a JSON array)"
    g = _jsonl(tmp_path / "y.jsonl", {"text": "ok"}, {"text": 5})
    assert _error(_cfg("jsonl", g)) == f"{g}:2: field 'text' is a JSON number, expected a string"


def test_jsonl_invalid_utf8_line_is_replaced_and_counted(tmp_path):
    f = _write(tmp_path / "x.jsonl", b'{"text": "a\xffb"}\n{"text": "fine"}\n')
    docs, stats = _read(_cfg("jsonl", f))
    assert [d.text for d in docs] == ["a\ufffdb", "fine"]
    assert (stats.docs, stats.invalid_utf8_docs) == (2, 1)


def test_iteration_is_lazy(tmp_path):
    f = _jsonl(tmp_path / "x.jsonl", {"text": "first"}, "not json")
    docs = iter_documents(_cfg("jsonl", f))
    assert next(docs) == Document("first", f"{f}:1")
    with pytest.raises(UserError, match=r":2: not valid JSON"):
        next(docs)


def test_max_docs_stops_before_reading_further(tmp_path):
    f = _jsonl(tmp_path / "x.jsonl", {"text": "a"}, {"text": ""}, {"text": "b"}, "broken")
    docs, stats = _read(_cfg("jsonl", f, max_docs=2))
    assert [d.text for d in docs] == ["a", "b"]
    assert (stats.docs, stats.empty_skipped) == (2, 1)


# --- parquet -----------------------------------------------------------------------------------


def _pyarrow():
    """(pyarrow, pyarrow.parquet), or the test skips: the datasets extra brings pyarrow."""
    reason = "parquet sources need pyarrow (the datasets extra)"
    return pytest.importorskip("pyarrow", reason=reason), pytest.importorskip("pyarrow.parquet")


def test_parquet_streams_rows_and_counts_nulls_as_empty(tmp_path):
    pa, pq = _pyarrow()

    table = pa.table({"text": ["alpha", None, "gamma", "  "], "n": [1, 2, 3, 4]})
    pq.write_table(table, tmp_path / "b.parquet")
    pq.write_table(pa.table({"text": ["first"]}), tmp_path / "a.parquet")
    docs, stats = _read(_cfg("parquet", tmp_path))
    assert docs == [
        Document("first", f"{tmp_path / 'a.parquet'}#0"),
        Document("alpha", f"{tmp_path / 'b.parquet'}#0"),
        Document("gamma", f"{tmp_path / 'b.parquet'}#2"),
    ]
    assert stats == SourceStats(docs=3, empty_skipped=2, invalid_utf8_docs=0, bytes_read=17)


def test_parquet_missing_column_and_unreadable_file(tmp_path):
    pa, pq = _pyarrow()

    f = tmp_path / "x.parquet"
    pq.write_table(pa.table({"body": ["a"], "id": [1]}), f)
    assert _error(_cfg("parquet", f)) == f"{f}: no column 'text' (columns: body, id)"
    g = _write(tmp_path / "fake.parquet", "not parquet at all")
    assert _error(_cfg("parquet", g)).startswith(f"{g}: cannot read (")


def test_missing_optional_extra_is_a_user_error(tmp_path, monkeypatch):
    f = _write(tmp_path / "x.parquet", "irrelevant")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    msg = _error(_cfg("parquet", f))
    assert msg.endswith("need the optional extra: pip install 'lengthwise[datasets]'")


# --- hf_disk -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    root = tmp_path_factory.mktemp("hf")
    train = datasets.Dataset.from_dict({"text": ["a", None, "c"], "n": [1, 2, 3]})
    train.save_to_disk(str(root / "plain"))
    test = datasets.Dataset.from_dict({"text": ["t1", "t2"], "n": [4, 5]})
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(root / "dict"))
    return root / "plain", root / "dict"


def test_hf_disk_plain_dataset(hf_dirs):
    plain, _ = hf_dirs
    docs, stats = _read(_cfg("hf_disk", plain))
    assert docs == [Document("a", f"{plain}#0"), Document("c", f"{plain}#2")]
    assert (stats.docs, stats.empty_skipped, stats.bytes_read) == (2, 1, 2)
    assert [f.name for f in source_files(_cfg("hf_disk", plain))] == [
        "data-00000-of-00001.arrow",
        "dataset_info.json",
        "state.json",
    ]
    msg = _error(_cfg("hf_disk", plain, split="train"))
    assert msg == f"{plain}: split 'train' is set, but this dataset has no splits"


def test_hf_disk_dataset_dict_split_selection_and_errors(hf_dirs):
    _, dd = hf_dirs
    docs, _ = _read(_cfg("hf_disk", dd, split="test"))
    assert docs == [Document("t1", f"{dd / 'test'}#0"), Document("t2", f"{dd / 'test'}#1")]
    msg = _error(_cfg("hf_disk", dd))
    assert msg == f"{dd}: holds several splits; set 'split' to one of: train, test"
    assert _error(_cfg("hf_disk", dd, split="dev")) == f"{dd}: no split 'dev' (splits: train, test)"
    msg = _error(_cfg("hf_disk", dd, split="test", text_field="body"))
    assert msg == f"{dd / 'test'}: no column 'body' (columns: text, n)"


def test_hf_disk_folder_that_is_not_a_dataset(tmp_path):
    pytest.importorskip("datasets", reason="hf_disk sources need the datasets extra")
    _write(tmp_path / "state.json", "{}")
    msg = _error(_cfg("hf_disk", tmp_path))
    assert msg == f"{tmp_path}: not a folder written by datasets' save_to_disk"


# --- common errors -----------------------------------------------------------------------------


def test_missing_path_wrong_kind_and_no_matching_files(tmp_path):
    missing = tmp_path / "nope"
    assert _error(_cfg("jsonl", missing)) == f"{missing}: does not exist"
    f = _write(tmp_path / "file.txt", "x")
    msg = _error(_cfg("text_dir", f))
    assert msg == f"{f}: is a file, but a 'text_dir' source needs a directory"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _error(_cfg("text_dir", empty)) == f"{empty}: no files match '**/*.txt'"
    assert _error(_cfg("jsonl", empty)) == f"{empty}: no files match '**/*.jsonl', '**/*.jsonl.gz'"


def test_source_errors_raise_at_the_call_not_at_first_use(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        iter_documents(_cfg("text_dir", tmp_path / "nope"))


def test_file_vanishing_after_listing_cannot_be_read(tmp_path):
    f = _write(tmp_path / "a.txt", "x")
    docs = iter_documents(_cfg("text_dir", tmp_path))  # lists the files now
    f.unlink()
    with pytest.raises(UserError) as e:
        next(docs)
    assert str(e.value) == f"{f}: cannot read (No such file or directory)"


def test_permission_error_is_reported_as_cannot_read(tmp_path, monkeypatch):
    _write(tmp_path / "a.txt", "fine")
    locked = _write(tmp_path / "b.txt", "secret")
    real_open = builtins.open

    def fake_open(file, *args, **kwargs):
        if Path(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    docs = iter_documents(_cfg("text_dir", tmp_path))
    assert next(docs).text == "fine"
    with pytest.raises(UserError) as e:
        next(docs)
    assert str(e.value) == f"{locked}: cannot read (Permission denied)"


def test_corrupt_gzip_cannot_be_read(tmp_path):
    f = tmp_path / "x.jsonl.gz"
    f.write_bytes(gzip.compress(b'{"text": "a"}\n' * 50)[:-20])  # truncated
    msg = _error(_cfg("jsonl", f))
    assert msg.startswith(f"{f}: cannot read (")


def test_corpus_without_non_empty_documents(tmp_path):
    _write(tmp_path / "1.txt", "")
    _write(tmp_path / "2.txt", "\n\n")
    msg = _error(_cfg("text_dir", tmp_path))
    assert msg == f"{tmp_path}: no non-empty documents (2 empty skipped)"
    f = _jsonl(tmp_path / "x.jsonl", "", "")
    assert _error(_cfg("jsonl", f)) == f"{f}: no non-empty documents (0 empty skipped)"


def test_task_source_config_is_checked():
    with pytest.raises(ValueError, match="needs 'task'"):
        SourceConfig(kind="task")
    with pytest.raises(ValueError, match="lengths must be"):
        SourceConfig(kind="task", task="addition", lengths=[5, 2])
    cfg = SourceConfig(kind="task", task="addition")
    assert source_files(cfg) == []
    assert source_fingerprint(cfg) == source_fingerprint(SourceConfig(kind="task", task="addition"))
    assert source_fingerprint(cfg) != source_fingerprint(cfg.model_copy(update={"seed": 1}))


# --- fingerprint and description ---------------------------------------------------------------


def test_fingerprint_tracks_size_mtime_and_config(tmp_path):
    f = _write(tmp_path / "a.txt", "hello")
    _write(tmp_path / "b.txt", "world")
    cfg = _cfg("text_dir", tmp_path)
    first = source_fingerprint(cfg)
    assert len(first) == 64 and first == source_fingerprint(cfg)
    st = f.stat()
    f.write_text("HELLO")  # same size: only the mtime tells
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert source_fingerprint(cfg) == first
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000))
    touched = source_fingerprint(cfg)
    assert touched != first
    f.write_text("hello again")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000))
    assert source_fingerprint(cfg) not in (first, touched)
    assert source_fingerprint(_cfg("text_dir", tmp_path, max_docs=1)) != source_fingerprint(cfg)


def test_describe_source(tmp_path):
    _write(tmp_path / "a.txt", "x")
    _write(tmp_path / "s" / "b.txt", "y")
    assert describe_source(_cfg("text_dir", tmp_path)) == {
        "kind": "text_dir",
        "path": str(tmp_path),
        "glob": "**/*.txt",
        "n_files": 2,
    }
    f = _jsonl(tmp_path / "x.jsonl", {"t": "a"})
    assert describe_source(_cfg("jsonl", f, text_field="t", max_docs=5)) == {
        "kind": "jsonl",
        "path": str(f),
        "text_field": "t",
        "max_docs": 5,
        "n_files": 1,
    }
