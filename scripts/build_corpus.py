#!/usr/bin/env python3
"""Rebuild the bundled text corpus in ``corpus/`` from two Debian documentation packages.

Training domain: the Linux kernel documentation (``linux-doc-6.1``: reStructuredText and
plain-text files). Out-of-distribution domain: the PostgreSQL manual (``postgresql-doc-15``:
HTML pages converted to plain text). Both come from Debian so that the exact source is named
by a package version and can be fetched again with ``apt-get download``; nothing is installed.

Everything after the download is deterministic: document selection and the train/validation
split use SHA-256 of the document id (not Python's ``random`` or ``hash``), the output order
is sorted by id, and gzip headers carry no timestamp or file name. Re-running with the same
package versions rewrites byte-identical files.

Usage (stdlib only)::

    python3 scripts/build_corpus.py --out corpus --workdir /tmp/lengthwise-corpus
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html.parser
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Pinned so that a rebuild reads the same bytes; pass a bare package name to take whatever
# version the configured archive currently offers (the README then records that version).
LINUX_DOC_PACKAGE = "linux-doc-6.1=6.1.176-1"
POSTGRES_DOC_PACKAGE = "postgresql-doc-15=15.18-0+deb12u1"

# Budgets are on UTF-8 text bytes rather than on compressed size, so that the chosen subset
# does not depend on the zlib build. They land at roughly 5 MB and 1.4 MB gzipped.
TRAIN_TEXT_BYTES = 16_000_000
OOD_TEXT_BYTES = 5_000_000
# Documents at least this long always enter the training subset (length is what this project
# studies, and a sample of the long tail would otherwise be left to chance).
ALWAYS_KEEP_BYTES = 64 * 1024
# Share of documents (in 1/10000) assigned to validation by hash, out of the whole pool.
VAL_PER_10000 = 500
SEED = "lengthwise-corpus-v1"

LINUX_SUFFIXES = (".rst", ".txt")
# bookindex.html is the back-of-book index: ~450 KB of link text, not prose.
POSTGRES_SKIP = frozenset({"html/bookindex.html"})

SPDX_RE = re.compile(r"SPDX-License-Identifier:\s*(.+?)\s*(?:\*/|-->)?\s*$")
SPDX_LINES = 10


@dataclass(frozen=True)
class Doc:
    """One corpus document; ``id`` is its path relative to the package's doc directory."""

    id: str
    text: str

    @property
    def nbytes(self) -> int:
        return len(self.text.encode("utf-8"))


# --------------------------------------------------------------------------- fetching


def run(cmd: list[str], cwd: Path | None = None) -> str:
    """Run a command, failing loudly with its output (apt errors are the usual cause)."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return proc.stdout


def deb_field(deb: Path, field: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), field]).strip()


def fetch_deb(spec: str, workdir: Path) -> Path:
    """Download ``name[=version]`` with ``apt-get download`` (never install), reusing a match.

    A plain ``apt-get download`` needs package lists; if it fails we run ``apt-get update``
    once and retry, which is what a fresh machine needs.
    """
    name, _, version = spec.partition("=")
    dest = workdir / "debs" / name
    dest.mkdir(parents=True, exist_ok=True)
    for old in sorted(dest.glob("*.deb")):
        if not version or deb_field(old, "Version") == version:
            return old
        old.unlink()
    cmd = ["apt-get", "download", spec]
    proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    if proc.returncode != 0:
        run(["apt-get", "update"])
        run(cmd, cwd=dest)
    debs = sorted(dest.glob("*.deb"))
    if len(debs) != 1:
        sys.exit(f"expected one .deb in {dest}, found {[d.name for d in debs]}")
    return debs[0]


def extract(deb: Path, workdir: Path) -> Path:
    """Unpack with ``dpkg-deb -x`` into a fresh directory and return the package doc dir."""
    name = deb_field(deb, "Package")
    dest = workdir / "tree" / name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    run(["dpkg-deb", "-x", str(deb), str(dest)])
    return dest / "usr" / "share" / "doc" / name


# --------------------------------------------------------------------------- reading


def read_maybe_gz(path: Path) -> bytes:
    """Debian gzips larger doc files; the id and the text are those of the original file."""
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def spdx_of(text: str) -> str | None:
    """The SPDX expression near the top of a kernel doc, if it declares one."""
    for line in text.splitlines()[:SPDX_LINES]:
        m = SPDX_RE.search(line)
        if m:
            return m.group(1).strip()
    return None


def gfdl_only(expr: str | None) -> bool:
    """True when no GPL/permissive alternative is offered (the media uAPI books are GFDL).

    Those are left out so that every shipped kernel document can be redistributed under
    GPL-2.0 (or a permissive licence it is dual-licensed under).
    """
    if not expr:
        return False
    ids = [t for t in re.findall(r"[A-Za-z0-9.+-]+", expr) if t not in {"OR", "AND", "WITH"}]
    return bool(ids) and all(t.startswith("GFDL") for t in ids)


def linux_docs(doc_dir: Path) -> tuple[list[Doc], dict[str, str | None], int]:
    """All non-empty .rst/.txt files under Documentation/, plus their SPDX expressions.

    html/_sources/ holds copies of the same .rst files, so only Documentation/ is read.
    Returns the eligible documents, the SPDX map for them, and how many GFDL-only were dropped.
    """
    docs, spdx, dropped = [], {}, 0
    for path in sorted((doc_dir / "Documentation").rglob("*")):
        rel = path.relative_to(doc_dir).as_posix().removesuffix(".gz")
        if not path.is_file() or not rel.endswith(LINUX_SUFFIXES):
            continue
        text = read_maybe_gz(path).decode("utf-8")
        if not text.strip():
            continue
        expr = spdx_of(text)
        if gfdl_only(expr):
            dropped += 1
            continue
        docs.append(Doc(rel, text))
        spdx[rel] = expr
    return docs, spdx, dropped


class HTMLToText(html.parser.HTMLParser):
    """Plain text from DocBook HTML: paragraphs kept, <pre> verbatim, boilerplate dropped.

    Only stdlib parsing is used. Block elements end a paragraph (blank line), list items, rows
    and <br> end a line, table cells are separated by a space, and whitespace inside flowing
    text is collapsed. The <head>, scripts, styles and the Prev/Up/Next navigation bars that
    repeat on every page are skipped.
    """

    PARAGRAPH = frozenset(
        {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6"}
        | {"table", "ul", "ol", "dl", "blockquote", "section", "hr", "body"}
    )
    LINE = frozenset({"li", "dt", "dd", "tr", "br", "caption"})
    SKIP = frozenset({"head", "script", "style"})
    SKIP_DIV_CLASSES = frozenset({"navheader", "navfooter"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, str]] = []  # (separator before, text)
        self.flow: list[str] = []
        self.pre: list[str] | None = None
        self.pending = ""
        self.skip_depth = 0  # >0 while inside a skipped element
        self.skip_tag = ""

    def _sep(self, sep: str) -> None:
        self._flush()
        if len(sep) > len(self.pending):
            self.pending = sep

    def _flush(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self.flow)).strip()
        self.flow = []
        if text:
            self._emit(text)

    def _emit(self, text: str) -> None:
        self.blocks.append((self.pending or "\n\n", text))
        self.pending = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skip_depth:
            if tag == self.skip_tag:
                self.skip_depth += 1
            return
        classes = set((dict(attrs).get("class") or "").split())
        if tag in self.SKIP or (tag == "div" and classes & self.SKIP_DIV_CLASSES):
            self.skip_depth, self.skip_tag = 1, tag
            return
        if tag == "pre" and self.pre is None:
            self._sep("\n\n")
            self.pre = []
        elif self.pre is None and tag in self.PARAGRAPH:
            self._sep("\n\n")
        elif self.pre is None and tag in self.LINE:
            self._sep("\n")
        elif self.pre is None and tag in ("td", "th"):
            self.flow.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <br/> and <hr/> arrive here; they never open anything to skip or close.
        if not self.skip_depth and self.pre is None:
            if tag in self.PARAGRAPH:
                self._sep("\n\n")
            elif tag in self.LINE:
                self._sep("\n")

    def handle_endtag(self, tag: str) -> None:
        if self.skip_depth:
            if tag == self.skip_tag:
                self.skip_depth -= 1
            return
        if tag == "pre" and self.pre is not None:
            lines = "".join(self.pre).split("\n")
            text = "\n".join(line.rstrip() for line in lines).strip("\n")
            self.pre = None
            if text.strip():
                self._emit(text)
            self._sep("\n\n")
        elif self.pre is None and tag in self.PARAGRAPH:
            self._sep("\n\n")
        elif self.pre is None and tag in self.LINE:
            self._sep("\n")
        elif self.pre is None and tag in ("td", "th"):
            self.flow.append(" ")

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if self.pre is not None:
            self.pre.append(data)
        else:
            self.flow.append(data)

    def text(self) -> str:
        self._flush()
        return "".join(sep + text for sep, text in self.blocks).strip() + "\n"


def html_to_text(markup: str) -> str:
    parser = HTMLToText()
    parser.feed(markup)
    parser.close()
    return parser.text()


def postgres_docs(doc_dir: Path) -> list[Doc]:
    """Every HTML page of the manual as plain text, in id order."""
    docs = []
    for path in sorted((doc_dir / "html").glob("*.html")):
        rel = path.relative_to(doc_dir).as_posix()
        if rel in POSTGRES_SKIP:
            continue
        text = html_to_text(path.read_text(encoding="utf-8"))
        if text.strip():
            docs.append(Doc(rel, text))
    return docs


# --------------------------------------------------------------------------- selection


def digest(salt: str, doc_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}:{doc_id}".encode()).digest()[:8], "big")


def is_val(doc_id: str) -> bool:
    """Split by hash of the id alone, so a document never changes side as budgets change."""
    return digest(f"{SEED}:split", doc_id) % 10_000 < VAL_PER_10000


def shuffled(docs: list[Doc], salt: str) -> list[Doc]:
    """A seeded shuffle that is the same on every Python version: order by SHA-256."""
    return sorted(docs, key=lambda d: (digest(f"{SEED}:{salt}", d.id), d.id))


def take_budget(docs: list[Doc], budget: int, always: Sequence[Doc] = ()) -> list[Doc]:
    """``always`` first, then a prefix of ``docs`` up to the first one that would overflow.

    Stopping at the first misfit (instead of packing smaller documents into the remainder)
    keeps the length mix unbiased and makes a larger budget choose a superset of a smaller
    one's documents.
    """
    chosen, used = list(always), sum(d.nbytes for d in always)
    for doc in docs:
        if used + doc.nbytes > budget:
            break
        chosen.append(doc)
        used += doc.nbytes
    return sorted(chosen, key=lambda d: d.id)


# --------------------------------------------------------------------------- writing


def jsonl_line(doc: Doc) -> str:
    """One JSON object per line; also escape the Unicode line breaks that json leaves raw.

    U+0085, U+2028 and U+2029 are valid unescaped in JSON but ``str.splitlines`` splits on
    them; escaping keeps the decoded value identical and makes line-splitting safe.
    """
    line = json.dumps({"id": doc.id, "text": doc.text}, ensure_ascii=False)
    for ch in ("\u0085", "\u2028", "\u2029"):
        line = line.replace(ch, f"\\u{ord(ch):04x}")
    return line + "\n"


def write_jsonl_gz(path: Path, docs: list[Doc]) -> None:
    """gzip level 9 with mtime=0 and no embedded file name, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz,
    ):
        for doc in docs:
            gz.write(jsonl_line(doc).encode("utf-8"))
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stats_row(name: str, path: Path, docs: list[Doc]) -> str:
    sizes = [d.nbytes for d in docs]
    words = sum(len(d.text.split()) for d in docs)
    return (
        f"| `{name}` | {len(docs):,} | {min(sizes):,} | {statistics.median_low(sizes):,} "
        f"| {max(sizes):,} | {sum(sizes):,} | {words:,} | {path.stat().st_size:,} |"
    )


# --------------------------------------------------------------------------- README


README = """\
# Bundled text corpus

Real text for `lengthwise` demos, tests and small experiments, small enough to live in the
repository. Generated by `scripts/build_corpus.py`; do not edit these files by hand.

| file | role |
| --- | --- |
| `linux-doc/train.jsonl.gz` | training split, Linux kernel documentation |
| `linux-doc/val.jsonl.gz` | validation split, same domain, disjoint documents |
| `postgres-doc/ood.jsonl.gz` | out-of-distribution evaluation, PostgreSQL manual |

Each file is gzip'd JSON Lines, one document per line: `{{"id": ..., "text": ...}}`, UTF-8,
written with `json.dumps(ensure_ascii=False)` (U+0085/U+2028/U+2029 are `\\u`-escaped so
that any line splitter is safe), sorted by `id`. `id` is the file's path relative to the
package's documentation directory (`/usr/share/doc/<package>/`), without Debian's `.gz`
suffix. Empty and whitespace-only documents are skipped.

## Statistics

Document lengths are UTF-8 bytes of `text`; "words" is a whitespace split, a rough token
count. Median is the lower median.

| file | docs | min B | median B | max B | total text B | words | file B |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{stats}

SHA-256 of the files as built:

```
{hashes}
```

## Sources

| domain | Debian package | version | architecture |
| --- | --- | --- | --- |
| training | `{linux_pkg}` | `{linux_ver}` | `{linux_arch}` |
| OOD | `{pg_pkg}` | `{pg_ver}` | `{pg_arch}` |

Both come from Debian 12 (bookworm) `main`, fetched with `apt-get download` and unpacked
with `dpkg-deb -x` (never installed).

### Linux kernel documentation (`linux-doc/`)

- Pool: every `.rst` and `.txt` file under `Documentation/` ({linux_pool:,} non-empty
  documents after the licence filter), decompressed where Debian gzipped them.
  `html/_sources/` is ignored (copies of the same `.rst` files), as are other file types
  (YAML bindings, ABI entries without a suffix, images, scripts).
- Licence filter: {linux_gfdl} documents whose SPDX line offers only the GFDL
  (`GFDL-1.1-no-invariants-or-later`, the media uAPI books) are left out, so that every
  shipped document can be used under GPL-2.0 or a permissive licence.
- Split: a document is validation when the first 8 bytes of
  `sha256("{seed}:split:" + id)`, read big-endian, are `< {val_per}` modulo 10000
  ({val_pct}); otherwise it is training. The split depends on the id alone, so no
  document changes side when the subset or the budget changes.
- Validation keeps every validation document of the pool. Training keeps every training
  document of at least {always:,} bytes ({n_always} of them, so the long tail is always
  present), then the remaining training documents in a seeded shuffle (ordered by
  `sha256("{seed}:linux:" + id)`) up to the first one that would take the text over
  {train_budget:,} bytes. That is {train_share} of the training pool's text; a larger
  budget selects a superset.

### PostgreSQL manual (`postgres-doc/`)

- Pool: every `html/*.html` page except `html/bookindex.html` (the back-of-book index),
  converted to text with the standard library's `html.parser`: `<head>`, scripts, styles
  and the repeated Prev/Up/Next navigation bars are dropped, block elements become blank
  lines, list items and table rows become line breaks, `<pre>` blocks are kept verbatim and
  whitespace elsewhere is collapsed. {pg_pool:,} non-empty pages.
- Subset: pages in a seeded shuffle (ordered by `sha256("{seed}:postgres:" + id)`) up to
  the first one that would take the text over {ood_budget:,} bytes.

## Licences

**Linux kernel documentation** — GPL-2.0. Debian's copyright file for `{linux_pkg}`
(`/usr/share/doc/{linux_name}/copyright`) states:

```
{linux_copyright}
```

`Documentation/process/license-rules.rst` (shipped in this corpus when selected): "The
Linux Kernel is provided under the terms of the GNU General Public License version 2 only
(GPL-2.0) [...] individual source files can have a different license which is required to
be compatible with the GPL-2.0 [...] individual files can be provided under a dual
license". A document without an SPDX line falls under the kernel-wide GPL-2.0. SPDX lines
(first {spdx_lines} lines) of the shipped documents, train + validation:

| SPDX-License-Identifier | docs |
| --- | ---: |
{spdx_table}

**PostgreSQL documentation** — the PostgreSQL Licence. Debian's copyright file for
`{pg_pkg}` (`/usr/share/doc/{pg_name}/copyright`) states:

```
{pg_copyright}
```

Licence texts shipped beside the data in `LICENSES/`: `GPL-2.0.txt` (Debian's
`/usr/share/common-licenses/GPL-2`) and both packages' complete Debian copyright files
(`linux-doc-*.copyright`, `postgresql-doc-*.copyright`, the latter with the PostgreSQL Licence).

## Rebuild

```
python3 scripts/build_corpus.py --out corpus --workdir /tmp/lengthwise-corpus
```

Needs Debian/Ubuntu with `apt-get` and `dpkg-deb`, Python 3.11+, network access to the
Debian archive, and root if the package lists must be refreshed (the script runs
`apt-get update` once only when the download fails). The package versions above are pinned
in the script (`--linux-doc`, `--postgres-doc` override them); with the same versions the
outputs are byte-identical.
"""


def copyright_summary(path: Path) -> str:
    """The header, ``Files: *`` and ``License: GPL-2``: the parts covering Documentation/."""
    paras = path.read_text(encoding="utf-8").split("\n\n")
    heads = ("Format:", "Files: *", "License: GPL-2\n")
    return "\n\n".join(p for p in paras if p.startswith(heads)).strip()


def postgres_licence(path: Path) -> str:
    """Debian's ``Files: *`` stanza plus the full ``License: PostgreSQL`` paragraph."""
    paras = path.read_text(encoding="utf-8").split("\n\n")
    keep = [p for p in paras if p.startswith("Files: *") or p.startswith("License: PostgreSQL")]
    return "\n\n".join(keep).strip()


# --------------------------------------------------------------------------- main


def write_licences(dest: Path, linux_dir: Path, pg_dir: Path) -> None:
    """Ship the licence texts with the data: redistribution of GPL-2.0 text requires it."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile("/usr/share/common-licenses/GPL-2", dest / "GPL-2.0.txt")
    for tree in (linux_dir, pg_dir):
        shutil.copyfile(tree / "copyright", dest / f"{tree.name}.copyright")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("corpus"), help="output directory")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/lengthwise-corpus"),
        help="scratch directory for .deb files and unpacked trees",
    )
    ap.add_argument("--linux-doc", default=LINUX_DOC_PACKAGE, help="apt spec name[=version]")
    ap.add_argument("--postgres-doc", default=POSTGRES_DOC_PACKAGE, help="apt spec")
    args = ap.parse_args(argv)
    workdir = args.workdir.resolve()
    out = args.out
    workdir.mkdir(parents=True, exist_ok=True)

    linux_deb = fetch_deb(args.linux_doc, workdir)
    pg_deb = fetch_deb(args.postgres_doc, workdir)
    linux_dir = extract(linux_deb, workdir)
    pg_dir = extract(pg_deb, workdir)

    pool, spdx, n_gfdl = linux_docs(linux_dir)
    val = [d for d in pool if is_val(d.id)]
    train_pool = [d for d in pool if not is_val(d.id)]
    always = [d for d in train_pool if d.nbytes >= ALWAYS_KEEP_BYTES]
    rest = shuffled([d for d in train_pool if d.nbytes < ALWAYS_KEEP_BYTES], "linux")
    train = take_budget(rest, TRAIN_TEXT_BYTES, always)

    pg_pool = postgres_docs(pg_dir)
    ood = take_budget(shuffled(pg_pool, "postgres"), OOD_TEXT_BYTES)

    files = {
        "linux-doc/train.jsonl.gz": train,
        "linux-doc/val.jsonl.gz": val,
        "postgres-doc/ood.jsonl.gz": ood,
    }
    for name, docs in files.items():
        write_jsonl_gz(out / name, docs)
    write_licences(out / "LICENSES", linux_dir, pg_dir)

    spdx_counts = Counter(spdx[d.id] or "(none: GPL-2.0 by default)" for d in train + val)
    train_pool_bytes = sum(d.nbytes for d in train_pool)
    readme = README.format(
        stats="\n".join(stats_row(n, out / n, docs) for n, docs in files.items()),
        hashes="\n".join(f"{sha256_file(out / n)}  {n}" for n in files),
        linux_pkg=deb_field(linux_deb, "Package"),
        linux_ver=deb_field(linux_deb, "Version"),
        linux_arch=deb_field(linux_deb, "Architecture"),
        linux_name=linux_dir.name,
        pg_pkg=deb_field(pg_deb, "Package"),
        pg_ver=deb_field(pg_deb, "Version"),
        pg_arch=deb_field(pg_deb, "Architecture"),
        pg_name=pg_dir.name,
        linux_pool=len(pool),
        linux_gfdl=n_gfdl,
        seed=SEED,
        val_per=VAL_PER_10000,
        val_pct=f"{VAL_PER_10000 / 100:g}% of the pool",
        always=ALWAYS_KEEP_BYTES,
        n_always=len(always),
        train_budget=TRAIN_TEXT_BYTES,
        train_share=f"{sum(d.nbytes for d in train) / train_pool_bytes:.0%}",
        pg_pool=len(pg_pool),
        ood_budget=OOD_TEXT_BYTES,
        linux_copyright=copyright_summary(linux_dir / "copyright"),
        pg_copyright=postgres_licence(pg_dir / "copyright"),
        spdx_lines=SPDX_LINES,
        spdx_table="\n".join(
            f"| `{expr}` | {n:,} |"
            for expr, n in sorted(spdx_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ),
    )
    (out / "README.md").write_text(readme, encoding="utf-8")

    for name, docs in files.items():
        print(f"{name}: {len(docs)} docs, {(out / name).stat().st_size:,} bytes")
    print(f"{linux_deb.name} {pg_deb.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
