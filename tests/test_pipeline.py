"""`python -m convert all`: the quick pipeline end to end, and reruns."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import numpy as np
import pytest

from convert.pipeline import already_trained
from tests.conftest import error_lines, run
from train.recipe import Recipe


def test_quick_pipeline_writes_everything(quick_artifacts):
    for fw, ckpt in (("torch", "model.pt"), ("tf", "model.keras")):
        names = {p.name for p in (quick_artifacts / fw).iterdir()}
        assert {ckpt, "history.json", "lenet5.onnx", "reference.npz", "test_data_set_0",
                "weights.npz", "lenet5.int8.onnx", "lenet5.fp16.onnx", "conversion",
                "SHA256SUMS"} <= names
        assert not [n for n in names if n.startswith(".")]  # no temporary files left
        sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=quick_artifacts / fw,
                              capture_output=True, text=True)
        assert sums.returncode == 0 and "lenet5.int8.onnx: OK" in sums.stdout, sums.stdout
    assert (quick_artifacts / "web" / "index.html").is_file()
    assert (quick_artifacts / "report.json").is_file() and (quick_artifacts / "report.md").is_file()


def test_side_by_side_lanes_give_the_results_of_one_after_the_other(quick_artifacts, tmp_path):
    """The fixture ran the lanes at once (one per core, here); --jobs 1 with the same thread
    count must give bit-identical weights, ONNX files and references."""
    threads = json.loads((quick_artifacts / "torch" / "history.json").read_text())["threads"]
    seq = tmp_path / "seq"
    proc = run("convert", "all", "--quick", "--jobs", "1", "--threads", str(threads),
               "--artifacts", str(seq), "--runtimes", "cpu", "--no-latency")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"1 at once, {threads} intra-op thread" in proc.stdout
    for fw in ("torch", "tf"):
        a = json.loads((quick_artifacts / fw / "history.json").read_text())
        b = json.loads((seq / fw / "history.json").read_text())
        assert a["threads"] == b["threads"] == threads
        assert a["weights_sha256"] == b["weights_sha256"]
        for name in ("lenet5.onnx", "lenet5.int8.onnx", "lenet5.fp16.onnx", "weights.npz",
                     "conversion/twin.onnx"):
            assert (quick_artifacts / fw / name).read_bytes() == (seq / fw / name).read_bytes()
        with np.load(quick_artifacts / fw / "reference.npz") as x, \
                np.load(seq / fw / "reference.npz") as y:
            assert np.array_equal(x["probabilities"], y["probabilities"])


def test_a_failing_stage_stops_the_other_lane(tmp_path, quick_artifacts):
    """A bad checkpoint in one lane: exit 2 with its one line; the other lane is stopped or
    finishes, and nothing runs after the lanes."""
    art = tmp_path / "artifacts"
    shutil.copytree(quick_artifacts, art)
    ckpt = art / "tf" / "model.keras"
    ckpt.write_bytes(b"PK\x03\x04 not really a keras archive")
    history = json.loads((art / "tf" / "history.json").read_text())
    history["checkpoint_sha256"] = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    (art / "tf" / "history.json").write_text(json.dumps(history))
    proc = run("convert", "all", "--quick", "--artifacts", str(art), "--runtimes", "cpu",
               "--no-latency")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(f"[tf] error: {ckpt}: "), lines
    assert "== validate" not in proc.stdout and "== twins" not in proc.stdout


def test_rerun_skips_training_for_the_same_recipe(quick_artifacts):
    """A model trained with the same recipe is not trained again (the rerun itself, with its
    "skipped" line: tests/test_outputs.py, two runs on one folder)."""
    quick = Recipe(epochs=1, limit=6000)
    assert already_trained(quick_artifacts / "torch", "torch", quick)
    assert not already_trained(quick_artifacts / "torch", "torch", Recipe(epochs=2, limit=6000))
    assert not already_trained(quick_artifacts / "torch", "torch", Recipe(epochs=1, limit=6000,
                                                                          seed=7))


def test_a_replaced_checkpoint_is_trained_again(artifacts_copy):
    quick = Recipe(epochs=1, limit=6000)
    assert already_trained(artifacts_copy / "tf", "tf", quick)
    ckpt = artifacts_copy / "tf" / "model.keras"
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")  # no longer the checkpoint the history describes
    assert not already_trained(artifacts_copy / "tf", "tf", quick)


def test_bad_flags_are_exit_2(tmp_path):
    proc = run("convert", "all", "--frameworks", "torch,jax", "--artifacts", str(tmp_path))
    assert proc.returncode == 2 and "torch,jax" in proc.stderr
    proc = run("convert", "all", "--limit", "0", "--artifacts", str(tmp_path))
    assert proc.returncode == 2
    assert error_lines(proc) == ["error: --limit must be at least 1, got 0"]


def test_one_framework_trained_again_gets_fresh_conversions(artifacts_copy):
    """PyTorch alone, another seed, beside the Keras model of an earlier run: the twins and
    round trips are made again from the new weights (they were judged stale and failed)."""
    before = (artifacts_copy / "torch" / "conversion" / "twin_native.npz").read_bytes()
    proc = run("convert", "all", "--quick", "--frameworks", "torch", "--seed", "7",
               "--threads", "1", "--artifacts", str(artifacts_copy), "--runtimes", "cpu",
               "--no-latency")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "== twins torch: done" in proc.stdout and "== twins tf: done" in proc.stdout
    # What the new weights do not change is kept: the Keras model's twin and round trips.
    assert "[torch] up to date, not made again: tf twin, tf round trip " in proc.stdout
    assert "[tf] up to date, not made again: tf round trip " in proc.stdout
    assert (artifacts_copy / "torch" / "conversion" / "twin_native.npz").read_bytes() != before
    report = json.loads((artifacts_copy / "report.json").read_text())
    assert report["models"]["torch"]["conversion"]["passed"]


@pytest.mark.slow  # starts a pipeline
def test_sigterm_stops_convert_all_and_every_stage_with_one_line(tmp_path):
    import os
    import signal
    import sys
    import time

    import psutil

    from tests.conftest import DATA_DIR, ROOT

    env = {**os.environ, "FASHION_MNIST_DIR": str(DATA_DIR), "LENET5_NO_BOOTSTRAP": "1"}
    art = tmp_path / "a"
    proc = subprocess.Popen([sys.executable, "-m", "convert", "all", "--quick", "--artifacts",
                             str(art)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    kids: list[psutil.Process] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(kids) < 2:  # both training stages running
        kids = psutil.Process(proc.pid).children(recursive=True)
        time.sleep(0.2)
    assert len(kids) >= 2
    time.sleep(2)
    kids = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert [line for line in err.splitlines() if line.strip()] == ["terminated (SIGTERM)"]
    _, alive = psutil.wait_procs(kids, timeout=15)
    assert not alive
    assert not [p for p in art.rglob(".*") if p.name != ".lock"]  # no temporary file left
    assert (art / ".lock").read_text() == ""  # and the lock is free
