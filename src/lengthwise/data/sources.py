"""Documents from files: text folders, JSON lines, Parquet and `datasets` folders.

Every reader streams (one file, line or 1024-row batch at a time) so corpora larger than memory
work, and walks files in sorted relative-path order so a source always yields the same documents
in the same order. Problems with the source itself (missing path, no matching files) raise when
`iter_documents` is called; problems in the content raise while iterating, at the offending line
or row. Either way the `UserError` is one line naming the file and what is wrong.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import random
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lengthwise import __version__
from lengthwise.config import SourceConfig
from lengthwise.errors import UserError

BATCH_ROWS = 1024  # rows per Arrow batch (parquet, hf_disk): bounded memory, few Python calls
EXTRA = "pip install 'lengthwise[datasets]'"
_READ_ERRORS = (OSError, EOFError, zlib.error)  # gzip reports truncation as EOFError/zlib.error
_PATTERNS = {
    "jsonl": ("**/*.jsonl", "**/*.jsonl.gz"),
    "parquet": ("**/*.parquet",),
    "hf_disk": ("**/*.arrow", "**/*.json"),
}

Raw = Generator[tuple[str, str], None, None]  # (text, origin), empty texts included


@dataclass(frozen=True)
class Document:
    text: str
    origin: str  # "path", "path:line", "path#row" or "task:name#i", for messages
    prompt_chars: int = 0  # task items: text[:prompt_chars] is the prompt (no loss)
    # coupled task items: a position id per character of text, then one for EOS (Item.positions)
    positions: tuple[int, ...] | None = None

    @property
    def prompt(self) -> str:
        """The leading characters trained without loss ("" for a plain text)."""
        return self.text[: self.prompt_chars]

    @property
    def completion(self) -> str:
        """The characters trained with loss (the whole text of a plain text)."""
        return self.text[self.prompt_chars :]


@dataclass
class SourceStats:
    docs: int = 0  # documents yielded
    empty_skipped: int = 0  # empty or whitespace-only documents skipped
    invalid_utf8_docs: int = 0  # documents with invalid UTF-8, decoded with errors="replace"
    bytes_read: int = 0  # text bytes read (after decompression)


def iter_documents(cfg: SourceConfig, stats: SourceStats | None = None) -> Iterator[Document]:
    """Stream the non-empty documents of a source, in a fixed order, counting into `stats`.

    Not a generator itself, so a bad path or glob fails at the call rather than at first use.
    """
    stats = SourceStats() if stats is None else stats
    if cfg.kind == "task":
        return _task_documents(cfg, stats)
    root = _root(cfg)
    raw: Raw
    if cfg.kind == "hf_disk":
        raw = _hf_rows(*_open_hf(cfg, root), stats)
    else:
        files = source_files(cfg)
        if cfg.kind == "parquet":
            _arrow()  # a missing extra is a setup problem: report it now, not mid-stream
        read = {"text_dir": _read_text_file, "jsonl": _read_jsonl, "parquet": _read_parquet}
        raw = (item for f in files for item in read[cfg.kind](f, cfg.text_field, stats))
    return _keep_non_empty(raw, cfg, stats)


def source_files(cfg: SourceConfig) -> list[Path]:
    """The files a source reads, sorted by relative path (hf_disk: its arrow/json files)."""
    if cfg.kind == "task":
        return []
    root = _root(cfg)
    if cfg.kind == "text_dir":
        _need_dir(root, cfg.kind)
        patterns: tuple[str, ...] = (cfg.glob,)
    elif root.is_file() and cfg.kind in ("jsonl", "parquet"):
        return [root]
    else:
        _need_dir(root, cfg.kind)
        patterns = _PATTERNS[cfg.kind]
    files = _walk(root, patterns)
    if not files and cfg.kind == "hf_disk":
        raise UserError(f"{root}: not a folder written by datasets' save_to_disk (no .arrow files)")
    if not files:
        raise UserError(f"{root}: no files match {', '.join(repr(p) for p in patterns)}")
    return files


def source_fingerprint(cfg: SourceConfig) -> str:
    """sha256 over the config and each file's relative path, size and mtime: when it is
    unchanged, the inputs are (for all practical purposes) unchanged and `prepare` can skip.
    Task sources: the config and the lengthwise version (the generators are code)."""
    if cfg.kind == "task":
        fields = {**cfg.model_dump(mode="json"), "lengthwise": __version__}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    root = _root(cfg)
    fields = cfg.model_dump(mode="json", exclude_defaults=True)  # new fields keep old stores valid
    fields["path"] = str(root.resolve())  # a relative path means different data from another cwd
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for f in source_files(cfg):
        try:
            st = f.stat()
        except OSError as e:
            raise _cannot_read(f, e) from None
        h.update(json.dumps([_relative(f, root), st.st_size, st.st_mtime_ns]).encode() + b"\n")
    return h.hexdigest()


def describe_source(cfg: SourceConfig) -> dict[str, Any]:
    """A JSON-able summary for meta.json: enough to tell later which data a store came from."""
    if cfg.kind == "task":
        return cfg.model_dump(mode="json", include=TASK_FIELDS | {"kind"})
    desc: dict[str, Any] = {"kind": cfg.kind, "path": str(cfg.path)}
    if cfg.kind == "text_dir":
        desc["glob"] = cfg.glob
    else:
        desc["text_field"] = cfg.text_field
    if cfg.kind == "hf_disk":
        desc["split"] = cfg.split
    if cfg.max_docs is not None:
        desc["max_docs"] = cfg.max_docs
    desc["n_files"] = len(source_files(cfg))
    return desc


# --- task sources ------------------------------------------------------------------------------

TASK_FIELDS = {
    "task",
    "lengths",
    "n",
    "format",
    "seed",
    "params",
    "values",
    "heldout",
    "label_noise",
}


def task_names(cfg: SourceConfig) -> list[str]:
    return [cfg.task] if isinstance(cfg.task, str) else list(cfg.task or [])


def task_source_items(cfg: SourceConfig) -> Iterator[Any]:
    """The items of a task source, in document order: `n` items shared evenly between its
    tasks (task k seeded with seed + k), interleaved round-robin. Bad task names, parameters
    or formats are one-line errors at the call."""
    from lengthwise.tasks import generate_items, get_task

    names = task_names(cfg)
    streams = []
    for k, name in enumerate(names):
        try:
            task = get_task(name, **cfg.params)
            if cfg.format not in task.formats:
                raise ValueError(
                    f"format '{cfg.format}' not available (choose from {', '.join(task.formats)})"
                )
        except (ValueError, TypeError) as e:
            raise UserError(f"task source '{name}': {e}") from None
        share = cfg.n // len(names) + (k < cfg.n % len(names))
        streams.append(
            generate_items(
                task,
                tuple(cfg.lengths),
                share,
                cfg.format,
                cfg.seed + k,
                values=cfg.values,
                heldout=cfg.heldout,
            )
        )

    def interleaved() -> Iterator[Any]:
        live = list(streams)
        while live:
            for stream in list(live):
                item = next(stream, None)
                if item is None:
                    live.remove(stream)
                else:
                    yield item

    return interleaved()


def noisy_documents(cfg: SourceConfig) -> dict[int, int]:
    """Document index -> shift (1-9) of its last answer digit, for `label_noise`: a fixed random
    share of the source's documents is trained on a wrong answer (last digit + shift, mod 10).
    The items themselves stay correct: eval sets and suites regenerate the true answers."""
    rng = random.Random(f"lengthwise.label_noise:{cfg.seed}")
    chosen = sorted(rng.sample(range(cfg.n), round(cfg.label_noise * cfg.n)))
    return {i: rng.randint(1, 9) for i in chosen}


def _task_documents(cfg: SourceConfig, stats: SourceStats) -> Iterator[Document]:
    """One document per task item: prompt (no loss) + completion, and the item's position ids
    (coupled format). `label_noise` documents end in a wrong digit."""
    items = task_source_items(cfg)
    noisy = noisy_documents(cfg)

    def documents() -> Iterator[Document]:
        for i, item in enumerate(items):
            stats.docs += 1
            completion = item.completion
            if i in noisy:  # every task's answer ends in a digit (a number or a list of them)
                wrong = (int(completion[-1]) + noisy[i]) % 10
                completion = f"{completion[:-1]}{wrong}"
            text = item.prompt + completion
            yield Document(text, f"task:{item.task}#{i}", len(item.prompt), item.positions)

    return documents()


# --- paths -------------------------------------------------------------------------------------


def _root(cfg: SourceConfig) -> Path:
    """The checked `path` of a file-based source."""
    assert cfg.path is not None  # SourceConfig guarantees it for file-based kinds
    if not cfg.path.exists():
        raise UserError(f"{cfg.path}: does not exist")
    if not (cfg.path.is_dir() or cfg.path.is_file()):
        raise UserError(f"{cfg.path}: not a regular file or directory")
    return cfg.path


def _need_dir(root: Path, kind: str) -> None:
    if not root.is_dir():
        raise UserError(f"{root}: is a file, but a '{kind}' source needs a directory")


def _walk(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    found: set[Path] = set()
    for pattern in patterns:
        try:
            found.update(p for p in root.glob(pattern) if p.is_file())
        except (ValueError, NotImplementedError) as e:  # empty or absolute pattern
            raise UserError(f"{root}: bad glob {pattern!r} ({e})") from None
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _relative(f: Path, root: Path) -> str:
    return f.name if f == root else f.relative_to(root).as_posix()


def _cannot_read(path: Path, e: BaseException) -> UserError:
    reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return UserError(f"{path}: cannot read ({reason})")


# --- common ------------------------------------------------------------------------------------


def _keep_non_empty(raw: Raw, cfg: SourceConfig, stats: SourceStats) -> Iterator[Document]:
    """Skip and count blank documents, stop at max_docs, and refuse a corpus with none."""
    yielded = empty = 0
    try:
        for text, origin in raw:
            if not text or text.isspace():  # isspace() does not copy a long text, strip() would
                empty += 1
                stats.empty_skipped += 1
                continue
            yielded += 1
            stats.docs += 1
            yield Document(text, origin)
            if yielded == cfg.max_docs:
                return
    finally:
        raw.close()  # closes the open file now, also when the caller stops early
    if yielded == 0:
        raise UserError(f"{cfg.path}: no non-empty documents ({empty} empty skipped)")


def _decode(data: bytes, stats: SourceStats) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        stats.invalid_utf8_docs += 1
        return data.decode("utf-8", errors="replace")


def _open_bytes(path: Path) -> Any:
    """A binary file object; `.gz` files are decompressed while reading."""
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


# --- text_dir ----------------------------------------------------------------------------------


def _read_text_file(path: Path, _field: str, stats: SourceStats) -> Raw:
    try:
        with _open_bytes(path) as f:
            data = f.read()
    except _READ_ERRORS as e:
        raise _cannot_read(path, e) from None
    stats.bytes_read += len(data)
    yield _decode(data, stats), str(path)


# --- jsonl -------------------------------------------------------------------------------------


def _read_jsonl(path: Path, field: str, stats: SourceStats) -> Raw:
    try:
        with _open_bytes(path) as f:
            for lineno, line in enumerate(f, start=1):
                stats.bytes_read += len(line)
                if lineno == 1:
                    line = line.removeprefix(codecs.BOM_UTF8)
                if line.strip():
                    where = f"{path}:{lineno}"
                    yield _jsonl_text(_decode(line, stats), where, field), where
    except _READ_ERRORS as e:
        raise _cannot_read(path, e) from None


def _jsonl_text(line: str, where: str, field: str) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: no field '{field}' (the line is a JSON {_json_type(obj)})")
    if field not in obj:
        names = list(obj)
        shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
        raise UserError(f"{where}: no field '{field}' (fields: {shown or 'none'})")
    text = obj[field]
    if text is None:  # like a null in parquet: an empty document
        return ""
    if not isinstance(text, str):
        raise UserError(f"{where}: field '{field}' is a JSON {_json_type(text)}, expected a string")
    return text


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


# --- parquet and hf_disk (Arrow) ---------------------------------------------------------------


def _arrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.compute  # makes pa.compute available
        import pyarrow.parquet  # makes pa.parquet available
    except ImportError:
        raise UserError(f"parquet and hf_disk sources need the optional extra: {EXTRA}") from None
    return pa


def _read_parquet(path: Path, field: str, stats: SourceStats) -> Raw:
    pa = _arrow()
    try:
        pf = pa.parquet.ParquetFile(path)
        schema = pf.schema_arrow
        if field not in schema.names:
            raise UserError(f"{path}: no column '{field}' (columns: {', '.join(schema.names)})")
        _check_text_type(pa, schema.field(field).type, str(path), field)
        row = 0
        for batch in pf.iter_batches(columns=[field], batch_size=BATCH_ROWS):
            yield from _arrow_texts(pa, batch.column(0), f"{path}#", row, stats)
            row += batch.num_rows
    except (OSError, pa.ArrowException) as e:  # not parquet, truncated, unreadable
        raise _cannot_read(path, e) from None


def _open_hf(cfg: SourceConfig, root: Path) -> tuple[Any, str]:
    """The selected split of a save_to_disk folder (memory-mapped, reduced to the text column)
    and the folder name to use in messages."""
    _need_dir(root, cfg.kind)
    pa = _arrow()
    try:
        import datasets
    except ImportError:
        raise UserError(f"hf_disk sources need the optional extra: {EXTRA}") from None
    try:
        ds = datasets.load_from_disk(str(root))
    except FileNotFoundError:
        raise UserError(f"{root}: not a folder written by datasets' save_to_disk") from None
    except OSError as e:
        raise _cannot_read(root, e) from None
    if isinstance(ds, datasets.DatasetDict):
        splits = ", ".join(ds)
        if cfg.split is None:
            raise UserError(f"{root}: holds several splits; set 'split' to one of: {splits}")
        if cfg.split not in ds:
            raise UserError(f"{root}: no split '{cfg.split}' (splits: {splits})")
        ds = ds[cfg.split]
    elif cfg.split is not None:
        raise UserError(f"{root}: split '{cfg.split}' is set, but this dataset has no splits")
    where = str(root / cfg.split) if cfg.split else str(root)
    if cfg.text_field not in ds.column_names:
        columns = ", ".join(ds.column_names)
        raise UserError(f"{where}: no column '{cfg.text_field}' (columns: {columns})")
    _check_text_type(pa, ds.data.schema.field(cfg.text_field).type, where, cfg.text_field)
    return ds.select_columns([cfg.text_field]).with_format("arrow"), where


def _hf_rows(ds: Any, where: str, stats: SourceStats) -> Raw:
    pa = _arrow()
    row = 0
    for table in ds.iter(batch_size=BATCH_ROWS):
        yield from _arrow_texts(pa, table.column(0), f"{where}#", row, stats)
        row += table.num_rows


def _check_text_type(pa: Any, typ: Any, where: str, field: str) -> None:
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    if not _is_text(pa, typ):
        raise UserError(f"{where}: column '{field}' holds {typ}, expected strings")


def _is_text(pa: Any, typ: Any) -> bool:
    checks = ("is_string", "is_large_string", "is_string_view", "is_binary", "is_large_binary")
    return any(getattr(pa.types, name, lambda _t: False)(typ) for name in checks)


def _arrow_texts(pa: Any, col: Any, prefix: str, start: int, stats: SourceStats) -> Raw:
    """One Arrow batch as (text, origin); nulls become "" (counted as empty), bytes are decoded."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    stats.bytes_read += pa.compute.sum(pa.compute.binary_length(col)).as_py() or 0
    for row, value in enumerate(col.to_pylist(), start):
        if value is None:
            value = ""
        elif isinstance(value, bytes):
            value = _decode(value, stats)
        yield value, f"{prefix}{row}"
