"""`python -m convert all`: the quick pipeline end to end, and reruns."""

from __future__ import annotations

import json

from convert.pipeline import already_trained
from tests.conftest import error_lines, run
from train.recipe import Recipe


def test_quick_pipeline_writes_everything(quick_artifacts):
    for fw, ckpt in (("torch", "model.pt"), ("tf", "model.keras")):
        names = {p.name for p in (quick_artifacts / fw).iterdir()}
        assert {ckpt, "history.json", "lenet5.onnx", "reference.npz", "test_data_set_0"} <= names
        assert not [n for n in names if n.startswith(".")]  # no temporary files left
    assert (quick_artifacts / "report.json").is_file() and (quick_artifacts / "report.md").is_file()


def test_rerun_skips_training_for_the_same_recipe(quick_artifacts, artifacts_copy):
    quick = Recipe(epochs=1, limit=6000)
    assert already_trained(quick_artifacts / "torch", "torch", quick)
    assert not already_trained(quick_artifacts / "torch", "torch", Recipe(epochs=2, limit=6000))
    before = (artifacts_copy / "torch" / "model.pt").read_bytes()
    proc = run("convert", "all", "--quick", "--frameworks", "torch",
               "--artifacts", str(artifacts_copy))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train torch: skipped" in proc.stdout
    assert (artifacts_copy / "torch" / "model.pt").read_bytes() == before
    report = json.loads((artifacts_copy / "report.json").read_text())
    assert set(report["models"]) == {"torch"} and report["passed"]


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
