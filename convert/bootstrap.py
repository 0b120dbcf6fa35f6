"""First-run set-up for a clone: create `.venv`, install the toolkit into it, re-run there.

Standard library only: it runs before any dependency is known to be importable. Skipped when
the toolkit is not run from a clone, when the current interpreter already has every
dependency (an environment of the user's own), or when LENET5_NO_BOOTSTRAP is set.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".lenet5-installed"  # sha256 of the pyproject.toml last installed
MODULES = ("numpy", "onnx", "onnxruntime", "onnxscript", "torch", "torchvision", "tensorflow",
           "tf2onnx", "pytest")


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def _wanted() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def _installed() -> bool:
    return STAMP.is_file() and STAMP.read_text().strip() == _wanted()


def _install(python: Path) -> None:
    print(f"bootstrap: installing the toolkit and its dependencies into {VENV} "
          "(first run only; several GB)", file=sys.stderr, flush=True)
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check",
           "--progress-bar", "off", "-e", f"{ROOT}[test]"]
    if subprocess.run(cmd).returncode:
        print(f"error: {ROOT / 'pyproject.toml'}: installing the dependencies failed "
              "(pip's output above says why)", file=sys.stderr)
        sys.exit(2)
    STAMP.write_text(_wanted() + "\n")


def ensure_environment(argv: list[str]) -> None:
    """Make sure this process runs with every dependency installed; may re-exec itself."""
    if os.environ.get("LENET5_NO_BOOTSTRAP") or not (ROOT / "pyproject.toml").is_file():
        return
    if Path(sys.prefix).resolve() == VENV.resolve():
        if not _installed():
            _install(Path(sys.executable))
        return
    if all(importlib.util.find_spec(m) for m in MODULES):
        return
    if not _venv_python().is_file():
        print(f"bootstrap: creating {VENV}", file=sys.stderr, flush=True)
        venv.create(VENV, with_pip=True, clear=VENV.exists())
    if not _installed():
        _install(_venv_python())
    python = str(_venv_python())
    os.execv(python, [python, "-m", "convert", *argv])
