"""scripts/gpu_check.sh and scripts/gpu_wheels.sh, checked without a GPU or a registry: the
borrowed GPU machine gives one try per session, so its failure modes are proven here (no CUDA:
exit 2; pydantic missing: installed from the carried wheels into a temporary folder)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, **env}
    cmd = ["bash", str(ROOT / "scripts" / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=full, timeout=60)


def test_no_cuda_exits_2_naming_the_interpreter_and_torch(tmp_path):
    fake = tmp_path / "torch"  # a torch whose CUDA is absent, found first on PYTHONPATH
    fake.mkdir()
    (fake / "__init__.py").write_text(
        '__version__ = "9.9-fake"\n\nclass cuda:\n    is_available = staticmethod(lambda: False)\n'
    )
    proc = _run("gpu_check.sh", PYTHONPATH=str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert f"no CUDA device visible to {sys.executable} (torch 9.9-fake)" in proc.stderr
    assert "==" not in proc.stdout  # no check started


def _fake_pydantic_wheel(folder: Path) -> None:
    """A one-module wheel named pydantic: what pip installs and Python imports is visible."""
    folder.mkdir()
    info = "pydantic-0.0.1.dist-info"
    with zipfile.ZipFile(folder / "pydantic-0.0.1-py3-none-any.whl", "w") as z:
        z.writestr("pydantic/__init__.py", 'VERSION = "0.0.1-fake"\n')
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: pydantic\nVersion: 0.0.1\n")
        wheel = "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        z.writestr(f"{info}/WHEEL", wheel)
        z.writestr(f"{info}/RECORD", "")


def test_wheels_install_into_a_temporary_folder_first_on_the_path(tmp_path):
    _fake_pydantic_wheel(tmp_path / "wheels")
    proc = _run("gpu_check.sh", "--deps-only", GPU_WHEELS=str(tmp_path / "wheels"),
                GPU_CHECK_FORCE_WHEELS="1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.splitlines()[-1]
    assert line.startswith("gpu_check: pydantic 0.0.1-fake, ")  # the wheel's, not the venv's
    installed = Path(line.split(", ", 1)[1])
    assert installed.name == "__init__.py" and installed.parent.name == "pydantic"
    assert not installed.parent.parent.exists()  # the temporary folder is gone on exit


def test_missing_wheels_exit_2_with_the_remedy(tmp_path):
    proc = _run("gpu_check.sh", "--deps-only", GPU_WHEELS=str(tmp_path / "none"),
                GPU_CHECK_FORCE_WHEELS="1")  # fmt: skip
    assert proc.returncode == 2
    assert f"{tmp_path / 'none'} holds no wheels" in proc.stderr
    assert "bash scripts/gpu_wheels.sh" in proc.stderr


def test_gpu_wheels_lists_the_runtime_requirements_the_gpu_machine_lacks():
    """Today only pydantic: a new runtime dependency shows up here, to be checked against the
    GPU machine's package list in scripts/gpu_wheels.sh."""
    proc = _run("gpu_wheels.sh", "--list")
    assert proc.returncode == 0, proc.stderr
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert proc.stdout.splitlines() == [d for d in deps if d.startswith("pydantic")]
