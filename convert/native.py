"""Framework-free glue for the exporters: histories, references, native latency children."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from convert.errors import ArtifactError
from convert import onnx_utils
from convert.fileio import atomic_open
from train import data
from validate.latency import BATCH_SIZES, thread_counts


def read_history(folder: Path) -> dict:
    """Load a training run's history.json, naming the file on failure."""
    path = folder / "history.json"
    try:
        history = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; train this framework first") from None
    except ValueError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    missing = [k for k in ("recipe", "test_accuracy", "architecture", "parameters")
               if not isinstance(history, dict) or k not in history]
    if missing:
        raise ArtifactError(f"{path}: not a training history (no {', '.join(missing)})")
    return history


def latency_images(data_dir: str | None) -> np.ndarray:
    """The first 256 test images as float32 NCHW: the latency input for every runtime."""
    images = data.load_test(data_dir)[0][:max(BATCH_SIZES)]
    return data.to_float(images)


def measure_native_latency(framework: str, artifacts: Path, data_dir: str | None,
                           quick: bool) -> list[dict]:
    """Time the native model in fresh processes, one per thread count (TF fixes its thread
    pools at start-up, so a count cannot change inside one process)."""
    results = []
    for threads in thread_counts():
        cmd = [sys.executable, "-m", "convert", "export", framework, "--artifacts",
               str(artifacts), "--native-latency-threads", str(threads)]
        if data_dir:
            cmd += ["--data-dir", str(data_dir)]
        if quick:
            cmd.append("--quick")
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"native latency ({framework}, {threads} threads) failed:\n"
                               f"{out.stderr[-3000:]}")
        results.extend(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def write_reference(folder: Path, framework: str, probabilities: np.ndarray,
                    labels: np.ndarray, native_latency: list[dict]) -> None:
    """Write reference.npz: native probabilities on the full test set, labels, digests."""
    with atomic_open(folder / "reference.npz") as handle:
        np.savez(handle,
                 probabilities=probabilities.astype(np.float32),
                 labels=labels.astype(np.uint8),
                 test_images_sha256=np.array(data.FILES["t10k-images-idx3-ubyte.gz"]),
                 test_labels_sha256=np.array(data.FILES["t10k-labels-idx1-ubyte.gz"]),
                 dataset_sha256=np.array(data.DATASET_SHA256),
                 framework=np.array(framework),
                 native_latency=np.array(json.dumps(native_latency)))


def write_export(artifacts: Path, framework: str, onnx_model, predict: Callable,
                 data_dir: str | None, quick: bool) -> Path:
    """Write reference.npz, test_data_set_0/ and, last, lenet5.onnx under ARTIFACTS/FRAMEWORK.

    `predict` maps float32 NCHW test images to the native model's probabilities.
    """
    folder = artifacts / framework
    images, labels = data.load_test(data_dir)
    test_images = data.to_float(images)
    probabilities = predict(test_images)
    latency = measure_native_latency(framework, artifacts, data_dir, quick)
    onnx_utils.write_test_data_set(folder / "test_data_set_0", test_images[:8], probabilities[:8])
    write_reference(folder, framework, probabilities, labels, latency)
    path = folder / "lenet5.onnx"
    onnx_utils.save(onnx_model, path)
    return path
