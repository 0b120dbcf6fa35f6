"""Fuzzing the readers: mutated bytes of an exported ONNX file, a reference.npz and a
history.json (fixed seed) never make the validator print a traceback, die from a signal or
hang: every run ends with exit 0, 1 or 2 and at most one line on stderr.

The validator runs in this process (its `main`), so that each run costs a fork of its
contained child, not a fresh interpreter; stderr is captured at the file-descriptor level.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from validate.__main__ import main

RUNS = {"lenet5.onnx": 120, "reference.npz": 90, "history.json": 90}


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One of: flip bits, overwrite a run with random bytes, truncate, insert, delete."""
    b = bytearray(data)
    kind = rng.integers(5)
    at = int(rng.integers(len(b)))
    if kind == 0:
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(len(b)))
            b[i] ^= 1 << int(rng.integers(8))
    elif kind == 1:
        n = int(rng.integers(1, 64))
        b[at:at + n] = rng.integers(0, 256, min(n, len(b) - at), dtype=np.uint8).tobytes()
    elif kind == 2:
        del b[at:]
    elif kind == 3:
        b[at:at] = rng.integers(0, 256, int(rng.integers(1, 32)), dtype=np.uint8).tobytes()
    else:
        del b[at:at + int(rng.integers(1, 64))]
    return bytes(b)


@pytest.mark.parametrize("name", list(RUNS))
def test_mutated_files_end_in_one_line(quick_artifacts, tmp_path, capfd, name):
    artifacts = tmp_path / "artifacts"
    (artifacts / "tf").mkdir(parents=True)
    for f in ("lenet5.onnx", "reference.npz", "history.json"):
        shutil.copy(quick_artifacts / "tf" / f, artifacts / "tf" / f)
    shutil.copytree(quick_artifacts / "tf" / "test_data_set_0", artifacts / "tf" / "test_data_set_0")
    target = artifacts / "tf" / name
    original = target.read_bytes()
    rng = np.random.default_rng(sum(map(ord, name)))
    statuses = []
    argv = [str(artifacts), "--frameworks", "tf", "--runtimes", "cpu", "--no-latency",
            "--timeout", "120", "--max-memory", "2048"]
    capfd.readouterr()
    for i in range(RUNS[name]):
        target.write_bytes(mutate(original, rng))
        status = main(argv)
        err = capfd.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert status in (0, 1, 2), (i, status, err[-3000:])
        assert "Traceback" not in err and len(lines) <= 1, (i, err[-3000:])
        assert (status == 0) == (not lines), (i, status, err)
        statuses.append(status)
    # The mutations reached both the readers' checks (2) and, past them, the validation (0/1).
    assert 2 in statuses, statuses
