"""Shared fixtures: the real dataset, CLI runners, and what several tests read, made once per
run (the quick pipeline, two small model exports); and the tiers: a test that uses the quick
pipeline's artifacts is marked `pipeline`, one that reads a shared export is marked `slow`
here, one that trains or runs a pipeline of its own is marked `slow` by its module, and every
other test is `fast` (`python -m convert test --fast` runs those: no training, no pipeline).

The test process itself imports neither torch nor tensorflow: every framework runs in a
subprocess, as in the toolkit (importing torchvision after TensorFlow has run segfaults).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import train.core  # noqa: F401  (onnxruntime's telemetry off in this process too, as in the toolkit's)

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "datasets" / "fashion-mnist"


def _data_dir() -> Path:
    """The real files: the shared copy beside the clone, else wherever the toolkit finds them."""
    if os.environ.get("FASHION_MNIST_DIR"):
        return Path(os.environ["FASHION_MNIST_DIR"])
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    from train import data

    return data.ensure_files()


DATA_DIR = _data_dir()


def run(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `python -m ARGS` from the repo root with the real data folder; capture output."""
    full_env = {**os.environ, "FASHION_MNIST_DIR": str(DATA_DIR), "LENET5_NO_BOOTSTRAP": "1",
                **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a snippet in a fresh interpreter (one framework per process)."""
    return run("tests._snippet", code, env=env)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """Every non-empty stderr line, unfiltered: stderr carries only the toolkit's lines."""
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


def made_once(tmp_path_factory, name: str, make) -> Path:
    """ROOT/NAME made by `make(ROOT/NAME)` once per test run, then read (never written) by
    every test that asks. Under pytest-xdist every worker has its own session: the first to
    get here makes it, the others wait on the lock and reuse its folder (the workers' root)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, done = root / name, root / f"{name}.made"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            if folder.exists():  # a worker that failed half-way: start again
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def quick_artifacts(tmp_path_factory) -> Path:
    """`python -m convert all --quick` once, end to end; tests read (never write) its output.

    LENET5_TEST_ARTIFACTS names a folder made by that command to reuse instead (a developer's
    shortcut while iterating on one test; CI always runs the pipeline).
    """
    if os.environ.get("LENET5_TEST_ARTIFACTS"):
        return Path(os.environ["LENET5_TEST_ARTIFACTS"])

    def make(folder: Path) -> None:
        proc = run("convert", "all", "--quick", "--artifacts", str(folder / "artifacts"))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    return made_once(tmp_path_factory, "quick", make) / "artifacts"


@pytest.fixture(scope="session")
def tiny_cnn_export(tmp_path_factory) -> Path:
    """`python -m convert export tests.byom_models:tiny_cnn --count 64` (PyTorch, logits,
    INT8/FP16 variants; docs/byom.md) once: tests of the export and of its validation read it."""
    def make(folder: Path) -> None:
        proc = run("convert", "export", "tests.byom_models:tiny_cnn", "--out",
                   str(folder / "tiny"), "--count", "64")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert "[export tiny_cnn] onnxruntime vs native" in proc.stdout

    return made_once(tmp_path_factory, "byom_tiny", make) / "tiny"


@pytest.fixture(scope="session")
def two_heads_export(tmp_path_factory) -> Path:
    """tests.byom_models:two_heads exported once from a TOML spec (kwargs, two inputs, a data
    file named relative to the spec): an image and int64 token ids in, logits and an
    embedding out, 40 real test images with their labels."""
    def make(folder: Path) -> None:
        from train import data

        images, labels = data.load_test(DATA_DIR)
        tokens = np.random.default_rng(0).integers(0, 50, (40, 6)).astype(np.int64)
        np.savez(folder / "in.npz", image=data.to_float(images[:40]), tokens=tokens,
                 labels=labels[:40].astype(np.int64))
        (folder / "two.toml").write_text(
            'factory = "tests.byom_models:two_heads"\nkwargs = { vocab = 50 }\n'
            '[[inputs]]\nname = "image"\nshape = ["batch", 1, 28, 28]\n'
            '[[inputs]]\nname = "tokens"\ndtype = "int64"\nshape = ["batch", 6]\n'
            'layout = "none"\n[data]\nsource = "in.npz"\n')
        proc = run("convert", "export", str(folder / "two.toml"), "--out", str(folder / "two"))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    return made_once(tmp_path_factory, "byom_two", make) / "two"


@pytest.fixture
def artifacts_copy(quick_artifacts, tmp_path) -> Path:
    """A private copy of the quick artifacts, for tests that damage files."""
    dest = tmp_path / "artifacts"
    shutil.copytree(quick_artifacts, dest)
    return dest


PIPELINE_FIXTURES = {"quick_artifacts", "artifacts_copy"}
EXPORT_FIXTURES = {"tiny_cnn_export", "two_heads_export"}  # each starts a framework: slow


def pytest_collection_modifyitems(config, items):
    """Sort every test into its tier (see the module docstring)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if PIPELINE_FIXTURES & fixtures:
            item.add_marker(pytest.mark.pipeline)
        if EXPORT_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)
        if not (item.get_closest_marker("pipeline") or item.get_closest_marker("slow")):
            item.add_marker(pytest.mark.fast)
