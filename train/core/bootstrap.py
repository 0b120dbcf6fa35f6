"""First-run set-up for a clone: create `.venv`, install the toolkit into it, re-run there;
then install the JavaScript runtimes (validate/js) with `npm ci` where Node.js is present.

Standard library only: it runs before any dependency is known to be importable. Skipped when
the toolkit is not run from a clone, when the current interpreter already has every
dependency (an environment of the user's own), or when LENET5_NO_BOOTSTRAP is set.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"
STAMP = VENV / ".lenet5-installed"  # sha256 of the pyproject.toml last installed
JS_DIR = ROOT / "validate" / "js"
JS_STAMP = JS_DIR / "node_modules" / ".lenet5-installed"  # sha256 of package-lock.json installed
ONNX2TF = "onnx2tf==1.29.24"  # installed with --no-deps (see _install)
NEEDS_GB = 9  # .venv after the install: 7.9 GB (torch's CUDA build); pip unpacks beside it
MODULES = ("numpy", "onnx", "onnxruntime", "onnxscript", "torch", "torchvision", "tensorflow",
           "tf2onnx", "pytest", "xdist", "psutil", "playwright", "onnxconverter_common",
           "onnx2torch", "matplotlib", "yaml", "openvino", "tract")


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def _wanted() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + ONNX2TF.encode()).hexdigest()


def _installed() -> bool:
    return STAMP.is_file() and STAMP.read_text().strip() == _wanted()


def _has_pip(python: Path) -> bool:
    return subprocess.run([str(python), "-c", "import pip"], capture_output=True).returncode == 0


def _venv_to_create() -> bool:
    """No .venv yet, or one that a first run stopped while making (its interpreter, no pip):
    the latter is made again, whole."""
    return not _venv_python().is_file() or not (_installed() or _has_pip(_venv_python()))


def _free_gb() -> float:
    return shutil.disk_usage(VENV if VENV.exists() else ROOT).free / 1e9


def _install(python: Path) -> None:
    print(f"bootstrap: installing the toolkit and its dependencies into {VENV} "
          f"(first run only; about {NEEDS_GB} GB)", file=sys.stderr, flush=True)
    if _free_gb() < NEEDS_GB:
        print(f"bootstrap: warning: {_free_gb():.1f} GB free on the disk of {VENV}; the install "
              f"needs about {NEEDS_GB} GB", file=sys.stderr, flush=True)
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check",
           "--no-cache-dir", "--progress-bar", "off", "-e", f"{ROOT}[test]"]
    if subprocess.run(cmd).returncode:
        why = "pip's output above says why"
        if _free_gb() < 1:
            why = (f"the disk is full: {_free_gb():.1f} GB free, the install needs about "
                   f"{NEEDS_GB} GB")
        print(f"error: {ROOT / 'pyproject.toml'}: installing the dependencies failed ({why})",
              file=sys.stderr)
        sys.exit(2)
    # onnx2tf's own pins would downgrade tensorflow (2.21 -> 2.19): installed without them;
    # what it imports is in pyproject.toml. Without it, the onnx2tf rows say "unavailable".
    if subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check",
                       "--progress-bar", "off", "--no-deps", ONNX2TF]).returncode:
        print(f"bootstrap: {ONNX2TF} did not install; the onnx2tf round trips will be reported "
              "unavailable", file=sys.stderr)
    if _wants_gpu_runtime():
        _use_onnxruntime_gpu(python)
    STAMP.write_text(_wanted() + "\n")


def _wants_gpu_runtime() -> bool:
    """LENET5_ONNXRUNTIME=gpu|cpu decides; otherwise an NVIDIA GPU that nvidia-smi lists."""
    choice = os.environ.get("LENET5_ONNXRUNTIME", "").lower()
    if choice in ("gpu", "cpu"):
        return choice == "gpu"
    nvidia_smi = shutil.which("nvidia-smi")
    if not nvidia_smi:
        return False
    try:
        out = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def _use_onnxruntime_gpu(python: Path) -> None:
    """Swap the CPU build of onnxruntime for the CUDA build of the same version (the two wheels
    install the same module, so one replaces the other)."""
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    version = subprocess.run([*pip, "show", "onnxruntime"], capture_output=True,
                             text=True).stdout
    version = next((l.split(":", 1)[1].strip() for l in version.splitlines()
                    if l.startswith("Version:")), "")
    print(f"bootstrap: NVIDIA GPU found: onnxruntime-gpu{'==' + version if version else ''} in "
          "place of onnxruntime (the CUDA execution provider)", file=sys.stderr, flush=True)
    subprocess.run([*pip, "uninstall", "-y", "-q", "onnxruntime"])
    spec = f"onnxruntime-gpu=={version}" if version else "onnxruntime-gpu"
    if subprocess.run([*pip, "install", "--progress-bar", "off", spec]).returncode:
        print(f"bootstrap: {spec} did not install; back to the CPU build (CUDA will be reported "
              "unavailable)", file=sys.stderr, flush=True)
        subprocess.run([*pip, "install", "--progress-bar", "off",
                        f"onnxruntime=={version}" if version else "onnxruntime"])


def _js_wanted() -> str:
    return hashlib.sha256((JS_DIR / "package-lock.json").read_bytes()).hexdigest()


def _npm_reason(output: str) -> str:
    """The line of npm's error output that says why (not its code/errno/log-file lines)."""
    lines = [l.strip() for l in output.splitlines() if l.strip()]
    errors = [l for l in lines if l.lower().startswith(("npm err", "npm error"))]
    for line in errors:
        words = line.split(None, 3)
        if len(words) > 2 and words[2] not in ("code", "errno", "syscall", "A", "Log"):
            return line
    return (errors or lines or [""])[0]


def ensure_js_packages() -> None:
    """`npm ci --ignore-scripts` in validate/js when node_modules is missing or stale.

    --ignore-scripts: onnxruntime-node's install script fetches CUDA binaries from outside the
    npm registry; its CPU binary is in the package. Without node/npm, or when npm fails, the
    JavaScript runners report themselves unavailable (with the reason); nothing stops here.
    """
    lock = JS_DIR / "package-lock.json"
    npm = shutil.which("npm")
    if not lock.is_file() or not shutil.which("node") or not npm:
        return
    if JS_STAMP.is_file() and JS_STAMP.read_text().strip() == _js_wanted():
        return
    print(f"bootstrap: installing the JavaScript runtimes into {JS_DIR / 'node_modules'} "
          "(npm ci --ignore-scripts)", file=sys.stderr, flush=True)
    env = {**os.environ, "npm_config_audit": "false", "npm_config_fund": "false",
           "npm_config_update_notifier": "false"}
    try:
        proc = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                              cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=900)
        failed = proc.returncode != 0
        why = _npm_reason(proc.stderr + proc.stdout) or f"exit status {proc.returncode}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        failed, why = True, type(exc).__name__
    if failed:
        print(f"bootstrap: `npm ci --ignore-scripts` in {JS_DIR} failed ({why[:200]}); the "
              "JavaScript runners will be reported unavailable", file=sys.stderr, flush=True)
        return
    JS_STAMP.write_text(_js_wanted() + "\n")


def ensure_environment(argv: list[str], module: str = "convert") -> None:
    """Make sure this process (`python -m MODULE ARGV`) runs with every dependency installed;
    may re-exec itself in .venv."""
    if (os.environ.get("LENET5_NO_BOOTSTRAP", "") not in ("", "0")
            or not (ROOT / "pyproject.toml").is_file()):
        return
    if Path(sys.prefix).resolve() == VENV.resolve():
        if not _installed():
            _install(Path(sys.executable))
        ensure_js_packages()
        return
    if all(importlib.util.find_spec(m) for m in MODULES):
        ensure_js_packages()
        return
    if _venv_to_create():
        print(f"bootstrap: creating {VENV}", file=sys.stderr, flush=True)
        venv.create(VENV, with_pip=True, clear=VENV.exists())
    if not _installed():
        _install(_venv_python())
    python = str(_venv_python())
    os.execv(python, [python, "-m", module, *argv])
