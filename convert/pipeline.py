"""`python -m convert all`: data, then train and export per framework in its own process,
then validation (framework-free, in this process)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from convert.fileio import sha256_file
from train import data
from train.recipe import Recipe
from validate.parity import Tolerances

CHECKPOINTS = {"torch": "model.pt", "tf": "model.keras"}


def already_trained(folder: Path, framework: str, recipe: Recipe) -> bool:
    """Is a model for this exact recipe and dataset already there?"""
    try:
        history = json.loads((folder / "history.json").read_text())
    except (OSError, ValueError):
        return False
    checkpoint = folder / CHECKPOINTS[framework]
    return (checkpoint.is_file()
            and history.get("recipe") == asdict(recipe)
            and history.get("dataset_sha256") == data.DATASET_SHA256
            and history.get("checkpoint_sha256") == sha256_file(checkpoint))


def _stage(label: str, args: list[str]) -> None:
    """Run `python -m convert ...` in a fresh process, streaming its output."""
    print(f"\n== {label}", flush=True)
    start = time.perf_counter()
    rc = subprocess.run([sys.executable, "-m", "convert", *args]).returncode
    if rc == 2:  # bad input: the stage has printed its one line; add nothing to it
        sys.exit(2)
    if rc:
        print(f"error: stage '{label}' crashed (exit status {rc}); see its output above",
              file=sys.stderr)
        sys.exit(3)
    print(f"== {label}: done in {time.perf_counter() - start:.1f} s", flush=True)


def run_all(frameworks: tuple[str, ...], recipe: Recipe, data_dir: str | None,
            artifacts: Path, force: bool, quick: bool, tolerances: Tolerances) -> int:
    """The whole job; returns the exit status (0 parity passed, 1 failed, 2 bad input)."""
    from validate.__main__ import validate_and_report

    start = time.perf_counter()
    print("== data: checking the four Fashion-MNIST files", flush=True)
    folder = data.ensure_files(data_dir)
    print(f"== data: verified (sha256) in {folder}", flush=True)
    common = ["--artifacts", str(artifacts), "--data-dir", str(folder)]
    recipe_args = ["--epochs", str(recipe.epochs), "--batch-size", str(recipe.batch_size),
                   "--seed", str(recipe.seed)]
    if recipe.limit:
        recipe_args += ["--limit", str(recipe.limit)]
    for fw in frameworks:
        if not force and already_trained(artifacts / fw, fw, recipe):
            print(f"\n== train {fw}: skipped, {artifacts / fw} holds a model trained with this "
                  "recipe (--force trains again)", flush=True)
        else:
            _stage(f"train {fw}", ["train", fw, *recipe_args, *common])
        _stage(f"export {fw}", ["export", fw, *common, *(["--quick"] if quick else [])])
    print("\n== validate: onnxruntime only", flush=True)
    status, _ = validate_and_report(artifacts, frameworks, tolerances, quick, str(folder))
    print(f"\nall stages done in {time.perf_counter() - start:.0f} s; parity "
          f"{'PASSED' if status == 0 else 'FAILED'}")
    return status
