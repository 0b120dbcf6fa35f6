"""Framework-free steps both twin sides share: which conversions a run has to make (`pending`:
not those already made from the same files), a twin built from weights.npz and saved, and the
loop over the trained models that have a twin on this side.

Imports no framework: each side passes in its own builder, predictor and exporter.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from train.core import weights as cw
from train.core.fileio import sha256_file
from train.core.history import read_history
from train.core.errors import ArtifactError
from validate.compare.conversion import (CONVERSION, ONNX2TF_FILE, ONNX2TORCH_FILE, TFLITE_FILE,
                                         TWIN_NATIVE, TWIN_ONNX, frameworks_present,
                                         made_with, read_output, save_twin)

# Each side's round-trip files, written from ARTIFACTS/<fw>/lenet5.onnx.
ROUNDTRIP_FILES = {"torch": (ONNX2TORCH_FILE,), "tf": (ONNX2TF_FILE, TFLITE_FILE)}


def _sha(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def _made(path: Path, source_sha: str | None) -> bool:
    """Whether PATH is a conversion made ("ok") from the source file of digest SOURCE_SHA (None:
    no source) by this toolkit and these converters (conversion.made_with)."""
    try:
        out = read_output(path)
    except (ArtifactError, OSError):
        return False
    return (out.status == "ok" and out.made_with == made_with() and source_sha is not None
            and out.source_sha256 == source_sha)


def _twin_made(folder: Path) -> bool:
    """Whether FOLDER's twin (twin_native.npz and twin.onnx) is made from its weights.npz."""
    weights_sha = _sha(folder / cw.FILE)
    if not _made(folder / CONVERSION / TWIN_NATIVE, weights_sha):
        return False
    try:
        meta = {p.key: p.value for p in onnx.load(str(folder / CONVERSION / TWIN_ONNX),
                                                  load_external_data=False).metadata_props}
    except Exception:  # missing or unreadable: made again
        return False
    return meta.get("twin_weights_sha256") == weights_sha


def pending(artifacts: Path, side: str) -> tuple[list[str], list[str]]:
    """What SIDE's process (torch or tf) has to make: (the models whose twin it builds, the
    models whose lenet5.onnx it brings back). A conversion already made from today's files by
    today's code and converters is not made again."""
    present = frameworks_present(artifacts)
    twins = [fw for fw in present if fw != side and not _twin_made(artifacts / fw)]
    trips = []
    for fw in present:
        onnx_sha = _sha(artifacts / fw / "lenet5.onnx")
        if not all(_made(artifacts / fw / CONVERSION / name, onnx_sha)
                   for name in ROUNDTRIP_FILES[side]):
            trips.append(fw)
    return twins, trips


def check_inputs(artifacts: Path, side: str) -> None:
    """What SIDE's process reads, checked before its framework is imported (the one-line error
    in a fraction of a second): an exported model, and the weights.npz of every model whose
    twin it is to build."""
    twins, _ = pending(artifacts, side)
    for fw in twins:
        cw.load(artifacts / fw / cw.FILE)


def up_to_date_line(artifacts: Path, side: str, twins: list[str], trips: list[str]) -> str:
    """The line that says which of SIDE's conversions are kept as they are ("" if none)."""
    present = frameworks_present(artifacts)
    kept = [f"{fw} twin" for fw in present if fw != side and fw not in twins] + [
        f"{fw} round trip" for fw in present if fw not in trips]
    return (f"up to date, not made again: {', '.join(kept)} (made from these files by this "
            "code and these converters)") if kept else ""


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
