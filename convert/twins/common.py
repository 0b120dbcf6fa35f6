"""Framework-free steps both twin sides share: a twin built from weights.npz and saved, and the
loop over the trained models that have a twin on this side.

Imports no framework: each side passes in its own builder, predictor and exporter.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from train.core import weights as cw
from train.core.fileio import sha256_file
from train.core.history import read_history
from validate.compare.conversion import CONVERSION, TWIN_NATIVE, TWIN_ONNX, save_twin


def make_twin(artifacts: Path, source: str, images: np.ndarray, *,
              build: Callable[[cw.Weights], Any],
              predict: Callable[[Any, np.ndarray], np.ndarray],
              describe: Callable[[dict, str, cw.Architecture, Any], dict],
              to_onnx: Callable[[Any, dict], Any], runs_in: str, made_by: str) -> float:
    """ARTIFACTS/SOURCE/weights.npz -> twin (`build`) -> twin.onnx (`to_onnx`) and
    twin_native.npz (`predict` on IMAGES); returns the seconds it took."""
    start = time.perf_counter()
    folder = artifacts / source
    path = folder / cw.FILE
    weights = cw.load(path)
    weights_sha = sha256_file(path)
    model = build(weights)
    probabilities = predict(model, images)
    history = describe(read_history(folder), weights_sha, weights.architecture, model)
    save_twin(folder, to_onnx(model, history), probabilities, weights_sha, runs_in, made_by,
              time.perf_counter() - start)
    return time.perf_counter() - start


def make_twins(artifacts: Path, present: list[str], framework: str, images: np.ndarray,
               make: Callable[[Path, str, np.ndarray], float], twin: str, exporter: str,
               log: Callable[[str], None]) -> dict[str, float]:
    """The twin (`make`) of every model in PRESENT trained in the other framework than
    FRAMEWORK; returns seconds per twin, keyed '<source> -> <twin> + <exporter>'."""
    times: dict[str, float] = {}
    for source in present:
        if source == framework:
            continue
        log(f"{source}-trained weights -> {twin} -> {exporter}")
        times[f"{source} -> {twin} + {exporter}"] = seconds = make(artifacts, source, images)
        log(f"wrote {artifacts / source / CONVERSION / TWIN_ONNX} and {TWIN_NATIVE} "
            f"({seconds:.1f} s)")
    return times
