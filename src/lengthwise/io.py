"""Writing files safely: the one place that creates, replaces and cleans up what lengthwise writes.

Three promises, kept here once for every writer (stores, checkpoints, exports, reports, runs):
- **Atomic**: a file or folder is written under a temporary name beside its destination and
  renamed into place, so a reader (or a `kill -9`) never sees half of it.
- **The umask applies**: `mkstemp`/`mkdtemp` create 0600/0700 whatever the umask; on rename the
  mode becomes what `open`/`mkdir` would have given (0644/0755 under umask 022), so another user
  of a shared machine can read a store, a run or an export.
- **Nothing lengthwise did not write is deleted**: a destination is replaced only when it is
  absent, empty, or recognizably ours (the caller says how to recognize it); leftovers of killed
  writers carry a fixed prefix (`.NAME.tmp-`, `.NAME.old-`) so the next start can remove exactly
  those.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lengthwise.errors import UserError

TMP_INFIX = ".tmp-"
OLD_INFIX = ".old-"


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give `path`, and everything in it if it is a folder, the modes a plain `open`/`mkdir`
    would have given (0644/0755 under umask 022): mkstemp, mkdtemp and some writers
    (safetensors: 0600) do not."""
    mask = _umask()
    entries = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    for p in entries:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def _tmp_prefix(dest: Path) -> str:
    return f".{dest.name}{TMP_INFIX}"


def temp_dir_beside(dest: Path) -> Path:
    """A new empty folder next to `dest`, named so that `remove_leftovers` recognizes it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=dest.parent, prefix=_tmp_prefix(dest)))


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        apply_umask(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished folder `tmp` to `dest`, replacing what was there, so `dest` is always
    either the old complete folder or the new complete one. Callers decide beforehand that an
    existing `dest` may be replaced (see `check_replaceable`)."""
    apply_umask(tmp)
    if dest.is_dir() and not dest.is_symlink():
        old = dest.parent / f".{dest.name}{OLD_INFIX}{os.getpid()}-{tmp.name[-8:]}"
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


@contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `dest`; when the block succeeds it becomes `dest`
    (replacing it), when it fails it is removed."""
    dest = Path(dest)
    tmp = temp_dir_beside(dest)
    try:
        yield tmp
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_dir(src: Path, dest: Path) -> None:
    """Atomically replace `dest` with a copy of folder `src`."""
    with atomic_dir(dest) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


def check_replaceable(
    dest: Path,
    is_ours: Callable[[Path], bool],
    what: str,
    overwrite: bool = False,
    remedy: str = "choose another path or pass --overwrite",
) -> None:
    """Refuse (UserError, one line) to replace `dest` unless it is absent, an empty folder,
    recognizably written by lengthwise (`is_ours`), or `overwrite` is set. A plain file is never
    replaced by a folder, whatever `overwrite` says. `remedy` ends the message (a command
    without --overwrite says what to do instead)."""
    dest = Path(dest)
    if not dest.exists() and not dest.is_symlink():
        return
    if not dest.is_dir() or dest.is_symlink():
        raise UserError(f"{dest}: exists and is not a folder; {what} needs a folder path")
    if overwrite or is_ours(dest) or not any(dest.iterdir()):
        return
    raise UserError(f"{dest}: a non-empty folder that is not {what}; {remedy}")


def check_folder_path(path: Path, what: str) -> None:
    """Refuse (UserError, one line) a folder path that is, or lies under, something that is not
    a folder (`--out notes.txt`), before any work: `mkdir` would fail there with a traceback."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.is_dir():
            return
        if p.exists() or p.is_symlink():
            where = "is" if p == path else f"lies under {p}, which is"
            raise UserError(f"{what} {path}: {where} a file, not a folder")


def remove_leftovers(folder: Path, names: Callable[[str], bool] | None = None) -> list[Path]:
    """Remove the temporary files and folders that a killed writer left in `folder` (names with
    the `.NAME.tmp-` / `.NAME.old-` prefixes this module gives, optionally narrowed by `names`
    on NAME). Only the process that owns `folder` should call this, at its start."""
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        name = p.name
        if not name.startswith("."):
            continue
        for infix in (TMP_INFIX, OLD_INFIX):
            base, sep, _ = name[1:].partition(infix)
            if sep and (names is None or names(base)):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
                break
    return removed
