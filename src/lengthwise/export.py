"""`lengthwise export RUN_DIR [--checkpoint last|best|PATH] [--out DIR] [--overwrite]`: a run's
checkpoint as an export folder (the format lives in lengthwise.eval.exported, next to its
reader), with a Hugging Face Llama folder where the architecture allows it.

An existing `--out` is replaced only when it is an earlier export (or empty); any other folder
needs `--overwrite`, and a file is never replaced: export never deletes what it did not write.
"""

from __future__ import annotations

from pathlib import Path

from lengthwise.errors import UserError
from lengthwise.eval.exported import is_export, write_export
from lengthwise.io import check_replaceable, remove_leftovers
from lengthwise.model.build import make_model
from lengthwise.rundir import RunDir
from lengthwise.train import checkpoint


def checkpoint_path(run: RunDir, which: str) -> Path:
    """`last`, `best`, or a checkpoint folder."""
    if which == "last":
        found = checkpoint.latest(run.checkpoints)
        if found is None:
            raise UserError(f"{run.path}: no checkpoint to export (train first)")
        return found
    if which == "best":
        if not (run.checkpoints / "best").is_dir():
            raise UserError(f"{run.path}: no best checkpoint (set train.best_metric and evaluate)")
        return run.checkpoints / "best"
    return Path(which)


def export_run(
    run_dir: Path, which: str = "last", out: Path | None = None, overwrite: bool = False
) -> tuple[Path, str | None]:
    """Export a run's checkpoint; returns (export folder, why hf/ was not written or None)."""
    run = RunDir(Path(run_dir)).require()
    out = Path(out) if out is not None else run.export_dir
    check_replaceable(out, is_export, "an earlier lengthwise export", overwrite)
    remove_leftovers(out.parent, names=lambda name: name == out.name)  # of a killed export
    cfg = run.config()
    path = checkpoint_path(run, which)
    model = make_model(cfg.model, pretrained=False)
    manifest = checkpoint.load_weights(path, model)
    source = {"run_dir": str(run.path), "checkpoint": path.name, "step": manifest["step"]}
    source.update({k: v for k, v in manifest.get("meta", {}).items() if k == "tokens"})
    if cfg.model.kind == "hf" and cfg.model.hf.path is not None:  # type: ignore[union-attr]
        source["pretrained"] = str(cfg.model.hf.path)  # type: ignore[union-attr]
    return out, write_export(model, run.tokenizer_path, out, source)
