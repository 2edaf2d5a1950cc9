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

A store is built in a temporary directory beside its destination and renamed into place, so an
interrupted `prepare` leaves nothing half-written. Documents are encoded shard by shard
(`encode_batch` on `encode_batch_docs` documents, parallel in the tokenizer's Rust threads) and
appended to tokens.bin, so memory stays bounded whatever the corpus size.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lengthwise.config import DataConfig, SourceConfig
from lengthwise.data.sources import (
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
from lengthwise.io import atomic_write_text

FORMAT_VERSION = 1


class TokenStore:
    """Read side: memmapped tokens and in-memory offsets (n_docs int64s)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise UserError(
                f"{self.path}: not a token store (no meta.json); run `lengthwise prepare`"
            )
        self.meta = json.loads(meta_path.read_text())
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


def _batched(it: Iterator, n: int) -> Iterator[list]:
    while batch := list(islice(it, n)):
        yield batch


Doc = str | tuple[str, str] | tuple[str, str, tuple[int, ...]]


def _check_positions(dest: Path, doc: tuple, prompt: list[int], rest: list[int]) -> None:
    """A coupled document's ids are per character: refuse a tokenizer that does not make one
    token per character."""
    p, c, pos = doc
    if len(pos) != len(p) + len(c) + 1:
        raise ValueError(f"{len(pos)} position ids for {len(p) + len(c)} characters and EOS")
    for text, ids in ((p, prompt), (c, rest)):
        if len(ids) != len(text):
            raise UserError(
                f"{dest}: the 'coupled' format gives a position id per character, which needs "
                f"a character tokenizer (data.tokenizer.kind: char); this one makes "
                f"{len(ids)} tokens of the {len(text)} characters of {text!r}"
            )


def write_store(
    dest: Path,
    docs: Iterator[Doc],
    tok: Tokenizer,
    source: dict,
    stats: SourceStats | None = None,
    bos: bool = False,
    shard_docs: int = 1024,
    progress: bool = True,
) -> dict:
    """Encode documents shard by shard into a new store at `dest` (atomic). Returns meta.

    A document is a text, or a task item (prompt, completion): the two are encoded separately
    (so the boundary is a token boundary) and the prompt's length is recorded; or a coupled
    task item (prompt, completion, positions), whose ids go to positions.bin. `stats` is
    filled by the document iterator while it is consumed; its final counts go into meta.json."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    dtype = np.dtype(token_dtype(tok.vocab_size))
    offsets = [0]
    prompt_lens: list[int] = []
    digest, pos_digest = hashlib.sha256(), hashlib.sha256()
    has_positions: bool | None = None  # decided by the first document
    start = time.perf_counter()
    # disable=None: no bar when stderr is not a terminal (logs, CI), so errors stay one line.
    bar = tqdm(
        desc=f"prepare {dest.name}", unit=" docs", disable=None if progress else True, leave=False
    )
    try:
        with open(tmp / "tokens.bin", "wb") as out, open(tmp / "positions.bin", "wb") as pos_out:
            for shard in _batched(docs, shard_docs):
                prefix = [tok.bos_id] if bos else []
                if has_positions is None:
                    has_positions = isinstance(shard[0], tuple) and len(shard[0]) == 3
                if any((isinstance(d, tuple) and len(d) == 3) != has_positions for d in shard):
                    raise UserError(f"{dest}: documents with and without position ids mixed")
                if isinstance(shard[0], tuple):
                    prompts = tok.encode_batch([d[0] for d in shard])
                    rest = tok.encode_batch([d[1] for d in shard])
                    encoded = [p + c for p, c in zip(prompts, rest, strict=True)]
                    prompt_lens.extend(len(prefix) + len(p) for p in prompts)
                    if has_positions:
                        for d, p, c in zip(shard, prompts, rest, strict=True):
                            _check_positions(dest, d, p, c)
                        ids = np.fromiter(
                            (i for d in shard for i in (*[0] * len(prefix), *d[2])),
                            dtype=np.int32,
                        ).tobytes()
                        pos_out.write(ids)
                        pos_digest.update(ids)
                else:
                    encoded = tok.encode_batch(shard)
                    prompt_lens.extend([0] * len(shard))
                flat = np.fromiter(
                    (t for ids in encoded for t in (*prefix, *ids, tok.eos_id)),
                    dtype=dtype,
                )
                lens = np.array([len(prefix) + len(ids) + 1 for ids in encoded], dtype=np.int64)
                offsets.extend((offsets[-1] + np.cumsum(lens)).tolist())
                data = flat.tobytes()
                out.write(data)
                digest.update(data)
                bar.update(len(shard))
                secs = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{offsets[-1] / secs:,.0f} tok/s")
        bar.close()
        offsets_arr = np.asarray(offsets, dtype=np.int64)
        np.save(tmp / "doc_offsets.npy", offsets_arr, allow_pickle=False)
        sha = {
            "tokens.bin": digest.hexdigest(),
            "doc_offsets.npy": _sha256_file(tmp / "doc_offsets.npy"),
        }
        if has_positions:
            sha["positions.bin"] = pos_digest.hexdigest()
        else:
            (tmp / "positions.bin").unlink()
        has_prompts = any(prompt_lens)
        if has_prompts:
            np.save(tmp / "prompt_lens.npy", np.asarray(prompt_lens, np.int32), allow_pickle=False)
            sha["prompt_lens.npy"] = _sha256_file(tmp / "prompt_lens.npy")
        lengths = np.diff(offsets_arr)
        meta = {
            "format_version": FORMAT_VERSION,
            "dtype": dtype.name,
            "n_docs": len(lengths),
            "n_tokens": int(offsets_arr[-1]),
            "has_prompts": has_prompts,
            "has_positions": bool(has_positions),
            "doc_len": {
                "min": int(lengths.min()) if len(lengths) else 0,
                "median": float(np.median(lengths)) if len(lengths) else 0.0,
                "max": int(lengths.max()) if len(lengths) else 0,
            },
            "tokenizer": describe(tok),
            "source": {**source, "bos": bos, "counts": asdict(stats) if stats else None},
            "seconds": round(time.perf_counter() - start, 3),
            "sha256": sha,
        }
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2))
        if dest.exists():
            trash = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
            os.replace(dest, trash / dest.name)
            os.replace(tmp, dest)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, dest)
        return meta
    except BaseException:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _texts(src: SourceConfig, stats: SourceStats) -> Iterator[Doc]:
    """Documents as write_store takes them: texts, (prompt, completion) for task items, and
    (prompt, completion, positions) for coupled task items."""
    for d in iter_documents(src, stats):
        if d.positions is not None:
            yield d.text[: d.prompt_chars], d.text[d.prompt_chars :], d.positions
        elif d.prompt_chars:
            yield d.text[: d.prompt_chars], d.text[d.prompt_chars :]
        else:
            yield d.text


def _joined(docs: Iterator[Doc]) -> Iterator[str]:
    return (d if isinstance(d, str) else d[0] + d[1] for d in docs)


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
    texts = _joined(_texts(train_src, SourceStats()))
    return train_bpe(texts, vocab_size=tcfg.vocab_size), True


def _existing_store_problem(dest: Path, tok: Tokenizer, fingerprint: str, bos: bool) -> str | None:
    meta = json.loads((dest / "meta.json").read_text())
    if meta["source"]["fingerprint"] != fingerprint or meta["source"]["bos"] != bos:
        return f"{dest}: inputs changed since it was built; rerun with --overwrite"
    if meta["tokenizer"]["sha256"] != tok.fingerprint:
        return (
            f"{dest}: built with a different tokenizer ({meta['tokenizer']['sha256'][:12]} "
            f"vs {tok.fingerprint[:12]}); rerun with --overwrite or delete it"
        )
    return None


def prepare(cfg: DataConfig, overwrite: bool = False, progress: bool = True) -> dict[str, dict]:
    """Build (or confirm up to date) one store per split. Returns {split: meta}.

    Re-running with the same inputs and tokenizer is a no-op. A store built with another
    tokenizer, or from inputs that changed, is an error unless `overwrite`; all of this is
    checked before anything is written, so a refused run changes nothing.
    """
    if cfg.tokenizer.kind == "bpe":  # refuse before training a BPE for nothing
        for split, src in cfg.splits.items():
            if src.kind == "task" and src.format == "coupled":
                raise UserError(
                    f"split '{split}': the 'coupled' format gives a position id per character, "
                    "which needs a character tokenizer (data.tokenizer.kind: char)"
                )
    tok, tok_is_new = resolve_tokenizer(cfg, progress=progress)
    fingerprints = {split: source_fingerprint(src) for split, src in cfg.splits.items()}
    existing = {split for split in cfg.splits if (cfg.out_dir / split / "meta.json").is_file()}
    if not overwrite:
        for split in existing:
            problem = _existing_store_problem(
                cfg.out_dir / split, tok, fingerprints[split], cfg.tokenizer.bos
            )
            if problem:
                raise UserError(problem)
    results = {}
    for split, src in cfg.splits.items():
        dest = cfg.out_dir / split
        if split in existing and not overwrite:
            meta = json.loads((dest / "meta.json").read_text())
            if progress:
                print(f"{split}: up to date ({meta['n_docs']:,} docs, {meta['n_tokens']:,} tokens)")
            results[split] = meta
            continue
        stats = SourceStats()
        meta = write_store(
            dest,
            _texts(src, stats),
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
