"""`lengthwise report`: read the runs, build the sections, render the page, write the files.

The page ``P.html`` and its PNG copies in ``P_files/`` are written so that nothing lengthwise did
not write is ever deleted or replaced without ``overwrite``:
- an existing ``P.html`` is replaced only when it is a lengthwise report (:func:`render.is_report`);
- ``P_files/`` keeps a manifest of the figures the report wrote there; a later report removes only
  the stale names listed in it (plus, for a page from before the manifest, the PNGs named as the
  report names them), and refuses to replace any other file of the same name as a new figure.
All figures are drawn into a temporary folder first, so a refusal or a failure leaves the old
page and figures as they were.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path

from lengthwise import __version__
from lengthwise.errors import UserError
from lengthwise.io import atomic_write_text, remove_leftovers, temp_dir_beside
from lengthwise.report import render
from lengthwise.report.runs import load_runs
from lengthwise.report.sections import FigureFiles, build_sections

MANIFEST = "lengthwise-report.json"
# how FigureFiles names figures (01_train_loss.png); a manifest entry must look like one
FIGURE_NAME = re.compile(r"\d{2,}_[A-Za-z0-9_.-]+\.png")


def build_report(
    run_dirs: list[Path],
    out: Path,
    title: str = "lengthwise report",
    command: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``out`` (a self-contained HTML page: PNG figures embedded as data URIs, inline CSS,
    no network references) comparing ``run_dirs``, plus the PNGs in ``<out stem>_files/``; each
    file is replaced atomically. Returns ``out``. ``command`` is the command line shown at the
    top (default: the equivalent `lengthwise report` call). A path that is not a run directory,
    or an existing ``out`` that is not a lengthwise report (unless ``overwrite``), is a
    :class:`UserError` raised before anything is written; a run that lacks some files gets fewer
    sections and a note."""
    if not run_dirs:
        raise UserError("report: give at least one run directory")
    out = Path(out)
    files_dir = out.with_name(f"{out.stem}_files")
    _check_targets(out, files_dir, overwrite)
    runs = load_runs(run_dirs)
    if command is None:
        command = shlex.join(
            ["lengthwise", "report", *map(str, run_dirs), "-o", str(out)]
            + (["--title", title] if title != "lengthwise report" else [])
        )
    remove_leftovers(out.parent, lambda name: name in (out.name, files_dir.name))
    remove_leftovers(files_dir, lambda name: name == MANIFEST)
    tmp = temp_dir_beside(files_dir)
    try:
        figures = FigureFiles(tmp)
        sections = build_sections(runs, figures)
        page = render.page(title, runs, sections, command, files_dir)
        _install_figures(figures.written, files_dir, _earlier_figures(out, files_dir), overwrite)
        atomic_write_text(out, page)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_targets(out: Path, files_dir: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise UserError(f"{out}: is a directory; -o needs an .html file path")
    if out.exists() and not overwrite and not render.is_report(out):
        raise UserError(
            f"{out}: exists and is not a lengthwise report; choose another path or pass --overwrite"
        )
    if files_dir.exists() and (not files_dir.is_dir() or files_dir.is_symlink()):
        raise UserError(
            f"{files_dir}: exists and is not a folder; the report writes its PNGs there"
        )


def _earlier_figures(out: Path, files_dir: Path) -> set[str]:
    """Names of the files in `files_dir` that an earlier report wrote: its manifest's entries,
    or, for a page written before the manifest existed, the PNGs named the way figures are."""
    try:
        listed = json.loads((files_dir / MANIFEST).read_text(encoding="utf-8"))["figures"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        listed = None
    if isinstance(listed, list):
        return {n for n in listed if isinstance(n, str) and FIGURE_NAME.fullmatch(n)}
    if files_dir.is_dir() and render.is_report(out):
        return {p.name for p in files_dir.iterdir() if FIGURE_NAME.fullmatch(p.name)}
    return set()


def _write_manifest(files_dir: Path, names: set[str]) -> None:
    manifest = {"written_by": f"{render.GENERATOR} {__version__}", "figures": sorted(names)}
    atomic_write_text(files_dir / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def _install_figures(
    drawn: list[Path], files_dir: Path, earlier: set[str], overwrite: bool
) -> None:
    """Move the drawn PNGs into `files_dir` and remove the earlier report's stale ones. The
    manifest lists every file of ours while this runs, so a kill midway leaves nothing a later
    report would not recognize."""
    names = {p.name for p in drawn}
    foreign = sorted(n for n in names - earlier if (files_dir / n).exists())
    if foreign and not overwrite:
        raise UserError(
            f"{files_dir / foreign[0]}: exists and was not written by an earlier report; "
            "move it or pass --overwrite"
        )
    files_dir.mkdir(parents=True, exist_ok=True)
    _write_manifest(files_dir, earlier | names)
    for p in drawn:
        os.replace(p, files_dir / p.name)
    for name in earlier - names:
        stale = files_dir / name
        if stale.is_file() or stale.is_symlink():
            stale.unlink()
    _write_manifest(files_dir, names)
