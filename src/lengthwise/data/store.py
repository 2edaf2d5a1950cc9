"""TokenStore: one flat memmapped token array plus document offsets, and `prepare`, which
builds one store per split from the configured sources.

Layout of a store directory (nanoGPT's uint16 .bin, plus document boundaries):
  tokens.bin       every document's ids followed by EOS, back to back (uint16 or uint32)
  doc_offsets.npy  int64, n_docs + 1 entries: document i is tokens[off[i]:off[i+1]]
  prompt_lens.npy  int32 per document, task stores only: leading tokens that are the task's
                   prompt (no loss; see lengthwise.data.plan.assemble)
  positions.bin    int32 per token, parallel to tokens.bin, stores of a task source in the
                   `coupled` format only: the task's position id of every token (Item.positions;
                   a BOS gets 0), which batches use instead of positions counted from each
                   document start. Character ids are token ids only with a character
                   tokenizer, so any other tokenizer is refused.
  meta.json        tokenizer hash, counts, source description and fingerprint, sha256 of the files

A store is built in a temporary directory beside its destination and renamed into place
(`lengthwise.io.atomic_dir`), so an interrupted `prepare` leaves nothing half-written, only a
`.SPLIT.tmp-*` folder that the next `prepare` of the data dir removes; the store gets the modes
the umask gives (0755/0644 under 022). Documents are encoded shard by shard
(`encode_batch` on `encode_batch_docs` documents, parallel in the tokenizer's Rust threads) and
appended to tokens.bin, so memory stays bounded whatever the corpus size.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from lengthwise.config import DataConfig, SourceConfig
from lengthwise.data.sources import (
    Document,
    SourceStats,
    describe_source,
    iter_documents,
    source_fingerprint,
)
from lengthwise.data.tokenizer import (
    Tokenizer,
    char_tokenizer,
    describe,
    load_tokenizer,
    token_dtype,
    train_bpe,
)
from lengthwise.errors import UserError
from lengthwise.io import atomic_dir, atomic_write_text, check_replaceable, remove_leftovers

FORMAT_VERSION = 1


def _read_meta(store_dir: Path) -> dict:
    path = store_dir / "meta.json"
    if not path.is_file():
        raise UserError(f"{store_dir}: not a token store (no meta.json); run `lengthwise prepare`")
    return json.loads(path.read_text())


class TokenStore:
    """Read side: memmapped tokens and in-memory offsets (n_docs int64s)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta = _read_meta(self.path)
        tokens_path = self.path / "tokens.bin"
        dtype = np.dtype(self.meta["dtype"])
        n_tokens = int(self.meta["n_tokens"])
        if not tokens_path.is_file() or tokens_path.stat().st_size != n_tokens * dtype.itemsize:
            raise UserError(f"{tokens_path}: missing or truncated (expected {n_tokens} tokens)")
        self.tokens = np.memmap(tokens_path, dtype=dtype, mode="r", shape=(n_tokens,))
        self.offsets = np.load(self.path / "doc_offsets.npy", allow_pickle=False)
        if self.offsets.shape != (self.meta["n_docs"] + 1,) or self.offsets[-1] != n_tokens:
            raise UserError(f"{self.path / 'doc_offsets.npy'}: does not match meta.json")
        self.positions: np.ndarray | None = None
        if self.meta.get("has_positions"):
            pos_path = self.path / "positions.bin"
            if not pos_path.is_file() or pos_path.stat().st_size != n_tokens * 4:
                raise UserError(f"{pos_path}: missing or truncated (expected {n_tokens} ids)")
            self.positions = np.memmap(pos_path, dtype=np.int32, mode="r", shape=(n_tokens,))
        self.prompt_lens: np.ndarray | None = None
        if self.meta.get("has_prompts"):
            self.prompt_lens = np.load(self.path / "prompt_lens.npy", allow_pickle=False)
            if self.prompt_lens.shape != (self.n_docs,):
                raise UserError(f"{self.path / 'prompt_lens.npy'}: does not match meta.json")

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]])

    def verify(self) -> None:
        """Recompute the checksums recorded in meta.json (reads the whole store)."""
        for name in self.meta["sha256"]:
            if _sha256_file(self.path / name) != self.meta["sha256"][name]:
                raise UserError(f"{self.path / name}: checksum mismatch (corrupted store)")


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _batched(it: Iterator[Document], n: int) -> Iterator[list[Document]]:
    while batch := list(islice(it, n)):
        yield batch


@dataclass(frozen=True)
class _Shard:
    """A shard of documents, encoded: what each file of the store gets appended."""

    ids: list[list[int]]  # per document: BOS (if any), prompt, completion, EOS
    prompt_lens: list[int]  # per document: leading ids without loss (0 for a plain text)
    positions: list[int] | None  # coupled task items: a position id per id, back to back


def _encode(shard: list[Document], tok: Tokenizer, bos: bool, dest: Path) -> _Shard:
    """Encode a shard in two `encode_batch` calls. A task item's prompt and completion are
    encoded separately, so their boundary is a token boundary; a plain text's prompt is "",
    which encodes to nothing, so its ids are its text's."""
    prefix = [tok.bos_id] if bos else []
    prompts = tok.encode_batch([d.prompt for d in shard])
    completions = tok.encode_batch([d.completion for d in shard])
    ids = [[*prefix, *p, *c, tok.eos_id] for p, c in zip(prompts, completions, strict=True)]
    prompt_lens = [
        len(prefix) + len(p) if d.prompt_chars else 0 for d, p in zip(shard, prompts, strict=True)
    ]
    with_positions = [d.positions is not None for d in shard]
    if not any(with_positions):
        return _Shard(ids, prompt_lens, None)
    if not all(with_positions):
        raise UserError(f"{dest}: documents with and without position ids mixed")
    positions = [
        i
        for d, p, c in zip(shard, prompts, completions, strict=True)
        for i in _coupled_positions(dest, d, p, c, len(prefix))
    ]
    return _Shard(ids, prompt_lens, positions)


def _coupled_positions(
    dest: Path, doc: Document, prompt: list[int], completion: list[int], n_prefix: int
) -> list[int]:
    """A coupled document's position ids, with 0 for a BOS. They are per character: refuse a
    tokenizer that does not make one token per character."""
    assert doc.positions is not None
    n = len(doc.text)
    if len(doc.positions) != n + 1:
        raise ValueError(f"{len(doc.positions)} position ids for {n} characters and EOS")
    for text, ids in ((doc.prompt, prompt), (doc.completion, completion)):
        if len(ids) != len(text):
            raise UserError(
                f"{dest}: the 'coupled' format gives a position id per character, which needs "
                f"a character tokenizer (data.tokenizer.kind: char); this one makes "
                f"{len(ids)} tokens of the {len(text)} characters of {text!r}"
            )
    return [0] * n_prefix + list(doc.positions)


class _HashedFile:
    """A file written front to back whose sha256 is known when it is done, without a reread."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.sha256.update(data)


class _StoreWriter:
    """The files of a store being written in `folder`: tokens.bin and positions.bin grow shard
    by shard (closed when the `with` block ends); offsets and prompt lengths (8 and 4 bytes per
    document) wait in memory for `finish`, which writes them and describes the layout."""

    def __init__(self, folder: Path, dtype: np.dtype, dest: Path) -> None:
        self.folder, self.dtype, self.dest = folder, dtype, dest
        self._files = ExitStack()
        self.tokens = self._open("tokens.bin")
        self.positions: _HashedFile | None = None
        self.has_positions: bool | None = None  # decided by the first shard
        self.offsets = [0]
        self.prompt_lens: list[int] = []

    def _open(self, name: str) -> _HashedFile:
        return _HashedFile(self._files.enter_context(open(self.folder / name, "wb")))

    def __enter__(self) -> _StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._files.close()

    def append(self, shard: _Shard) -> None:
        if self.has_positions is None:
            self.has_positions = shard.positions is not None
            if self.has_positions:
                self.positions = self._open("positions.bin")
        if (shard.positions is not None) != self.has_positions:
            raise UserError(f"{self.dest}: documents with and without position ids mixed")
        flat = np.fromiter((t for ids in shard.ids for t in ids), dtype=self.dtype)
        self.tokens.write(flat.tobytes())
        if self.positions is not None:
            self.positions.write(np.asarray(shard.positions, dtype=np.int32).tobytes())
        lengths = np.array([len(ids) for ids in shard.ids], dtype=np.int64)
        self.offsets.extend((self.offsets[-1] + np.cumsum(lengths)).tolist())
        self.prompt_lens.extend(shard.prompt_lens)

    def finish(self) -> tuple[dict, dict[str, str]]:
        """After the `with` block: write doc_offsets.npy (and prompt_lens.npy when a document
        has a prompt); return the layout part of meta.json and the sha256 of every file."""
        offsets = np.asarray(self.offsets, dtype=np.int64)
        np.save(self.folder / "doc_offsets.npy", offsets, allow_pickle=False)
        sha = {
            "tokens.bin": self.tokens.sha256.hexdigest(),
            "doc_offsets.npy": _sha256_file(self.folder / "doc_offsets.npy"),
        }
        if self.positions is not None:
            sha["positions.bin"] = self.positions.sha256.hexdigest()
        has_prompts = any(self.prompt_lens)
        if has_prompts:
            path = self.folder / "prompt_lens.npy"
            np.save(path, np.asarray(self.prompt_lens, np.int32), allow_pickle=False)
            sha["prompt_lens.npy"] = _sha256_file(path)
        lengths = np.diff(offsets)
        layout = {
            "format_version": FORMAT_VERSION,
            "dtype": self.dtype.name,
            "n_docs": len(lengths),
            "n_tokens": int(offsets[-1]),
            "has_prompts": has_prompts,
            "has_positions": bool(self.has_positions),
            "doc_len": {
                "min": int(lengths.min()) if len(lengths) else 0,
                "median": float(np.median(lengths)) if len(lengths) else 0.0,
                "max": int(lengths.max()) if len(lengths) else 0,
            },
        }
        return layout, sha


def write_store(
    dest: Path,
    docs: Iterable[Document],
    tok: Tokenizer,
    source: dict,
    stats: SourceStats | None = None,
    bos: bool = False,
    shard_docs: int = 1024,
    progress: bool = True,
) -> dict:
    """Encode documents shard by shard into a new store at `dest`, replacing it atomically
    (`lengthwise.io.atomic_dir`: built in `.NAME.tmp-*` beside it, so a kill leaves only what
    `prepare` removes at its next start). Returns meta.

    A plain text is encoded whole; a task item's prompt length is recorded (prompt_lens.npy),
    and a coupled task item's position ids go to positions.bin. `stats` is filled by the
    document iterator while it is consumed; its final counts go into meta.json."""
    start = time.perf_counter()
    # disable=None: no bar when stderr is not a terminal (logs, CI), so errors stay one line.
    bar = tqdm(
        desc=f"prepare {dest.name}", unit=" docs", disable=None if progress else True, leave=False
    )
    with bar, atomic_dir(dest) as tmp:
        with _StoreWriter(tmp, np.dtype(token_dtype(tok.vocab_size)), dest) as writer:
            for shard in _batched(iter(docs), shard_docs):
                writer.append(_encode(shard, tok, bos, dest))
                bar.update(len(shard))
                secs = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{writer.offsets[-1] / secs:,.0f} tok/s")
        bar.close()
        layout, sha = writer.finish()
        meta = {
            **layout,
            "tokenizer": describe(tok),
            "source": {**source, "bos": bos, "counts": asdict(stats) if stats else None},
            "seconds": round(time.perf_counter() - start, 3),
            "sha256": sha,
        }
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2))
    return meta


def _bpe_recipe(cfg: DataConfig) -> tuple[SourceConfig, dict]:
    tcfg = cfg.tokenizer
    train_src = cfg.splits[tcfg.train_split]
    if tcfg.train_max_docs is not None:
        train_src = train_src.model_copy(update={"max_docs": tcfg.train_max_docs})
    return train_src, {
        "vocab_size": tcfg.vocab_size,
        "source_fingerprint": source_fingerprint(train_src),
    }


def resolve_tokenizer(cfg: DataConfig, progress: bool = True) -> tuple[Tokenizer, bool]:
    """The tokenizer for this data config and whether out_dir/tokenizer.json must be (re)written.

    A BPE is trained once and cached as out_dir/tokenizer.json; the cache is reused only if it
    was trained on the same inputs with the same settings (recorded in tokenizer.meta.json).
    """
    tcfg = cfg.tokenizer
    path, recipe_path = cfg.out_dir / "tokenizer.json", cfg.out_dir / "tokenizer.meta.json"
    if tcfg.kind in ("file", "char"):
        tok = load_tokenizer(tcfg.path) if tcfg.kind == "file" else char_tokenizer(tcfg.alphabet)  # type: ignore[arg-type]
        same = path.is_file() and load_tokenizer(path).fingerprint == tok.fingerprint
        return tok, not same
    train_src, recipe = _bpe_recipe(cfg)
    if path.is_file() and recipe_path.is_file() and json.loads(recipe_path.read_text()) == recipe:
        return load_tokenizer(path), False
    if progress:
        print(f"training a byte-level BPE (vocab {tcfg.vocab_size}) on split '{tcfg.train_split}'")
    texts = (d.text for d in iter_documents(train_src, SourceStats()))
    return train_bpe(texts, vocab_size=tcfg.vocab_size), True


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.meta.json")  # beside the stores in out_dir


def tokenizer_mismatch(store_dir: Path, tokenizer: Tokenizer | Path) -> str | None:
    """None when `tokenizer` (a Tokenizer, or the path of a tokenizer.json) is the one the
    store in `store_dir` was built with; else why not, one line naming the store and both
    hashes. A store's ids mean nothing under another vocabulary: `prepare` refuses to keep
    such a store, and a trainer should refuse to read one."""
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, Path) else tokenizer
    built = _read_meta(store_dir)["tokenizer"]["sha256"]
    if built == tok.fingerprint:
        return None
    of = f" of {tokenizer}" if isinstance(tokenizer, Path) else ""
    return (
        f"{store_dir}: built with a different tokenizer ({built[:12]} vs {tok.fingerprint[:12]}"
        f"{of})"
    )


def _existing_store_problem(dest: Path, tok: Tokenizer, fingerprint: str, bos: bool) -> str | None:
    meta = _read_meta(dest)
    if meta["source"]["fingerprint"] != fingerprint or meta["source"]["bos"] != bos:
        return f"{dest}: inputs changed since it was built; rerun with --overwrite"
    mismatch = tokenizer_mismatch(dest, tok)
    return f"{mismatch}; rerun with --overwrite or delete it" if mismatch else None


def _is_store(path: Path) -> bool:
    return (path / "meta.json").is_file()


def _check_before_tokenizer(cfg: DataConfig, overwrite: bool) -> None:
    """What can be refused before a BPE is trained for nothing."""
    for split, src in cfg.splits.items():
        if cfg.tokenizer.kind == "bpe" and src.kind == "task" and src.format == "coupled":
            raise UserError(
                f"split '{split}': the 'coupled' format gives a position id per character, "
                "which needs a character tokenizer (data.tokenizer.kind: char)"
            )
        check_replaceable(cfg.out_dir / split, _is_store, "a token store", overwrite)


def _remove_leftovers(cfg: DataConfig, progress: bool) -> None:
    """Remove what a killed `prepare` of this data dir left: `.SPLIT.tmp-*` / `.SPLIT.old-*`
    store folders and `.tokenizer.json.tmp-*` files (`lengthwise.io`'s names). Only the names
    this config writes, so nothing of anyone else's in out_dir is touched."""
    ours = {*cfg.splits, *TOKENIZER_FILES}
    removed = remove_leftovers(cfg.out_dir, names=ours.__contains__)
    if removed and progress:
        print(f"removed {len(removed)} leftover(s) of an interrupted prepare in {cfg.out_dir}")


def prepare(cfg: DataConfig, overwrite: bool = False, progress: bool = True) -> dict[str, dict]:
    """Build (or confirm up to date) one store per split. Returns {split: meta}.

    Re-running with the same inputs and tokenizer is a no-op. A store built with another
    tokenizer, or from inputs that changed, is an error unless `overwrite`, and so is a
    non-empty folder at a store's path that is not a store; all of this is checked before
    anything is written, so a refused run changes nothing. Then the leftovers of an
    interrupted earlier run are removed.
    """
    _check_before_tokenizer(cfg, overwrite)
    tok, tok_is_new = resolve_tokenizer(cfg, progress=progress)
    fingerprints = {split: source_fingerprint(src) for split, src in cfg.splits.items()}
    existing = {split for split in cfg.splits if _is_store(cfg.out_dir / split)}
    if not overwrite:
        for split in existing:
            problem = _existing_store_problem(
                cfg.out_dir / split, tok, fingerprints[split], cfg.tokenizer.bos
            )
            if problem:
                raise UserError(problem)
    _remove_leftovers(cfg, progress)
    results = {}
    for split, src in cfg.splits.items():
        dest = cfg.out_dir / split
        if split in existing and not overwrite:
            meta = _read_meta(dest)
            if progress:
                print(f"{split}: up to date ({meta['n_docs']:,} docs, {meta['n_tokens']:,} tokens)")
            results[split] = meta
            continue
        stats = SourceStats()
        meta = write_store(
            dest,
            iter_documents(src, stats),
            tok,
            {**describe_source(src), "fingerprint": fingerprints[split]},
            stats=stats,
            bos=cfg.tokenizer.bos,
            shard_docs=cfg.encode_batch_docs,
            progress=progress,
        )
        counts = meta["source"]["counts"]
        if progress:
            print(
                f"{split}: {meta['n_docs']:,} docs, {meta['n_tokens']:,} tokens "
                f"({meta['dtype']}) in {meta['seconds']:.1f}s; "
                f"skipped {counts['empty_skipped']} empty, "
                f"{counts['invalid_utf8_docs']} with invalid UTF-8 replaced"
            )
        results[split] = meta
    # Last, so a failed run leaves no tokenizer that no store was built with.
    if tok_is_new:  # every store under out_dir is read with out_dir/tokenizer.json
        tok.save(cfg.out_dir / "tokenizer.json")
        recipe = (
            _bpe_recipe(cfg)[1] if cfg.tokenizer.kind == "bpe" else {"kind": cfg.tokenizer.kind}
        )
        atomic_write_text(cfg.out_dir / "tokenizer.meta.json", json.dumps(recipe, indent=2))
    return results
