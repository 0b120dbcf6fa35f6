"""Framework-free glue for the exporters: histories, references, the latency images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from convert.errors import ArtifactError
from convert import onnx_utils
from convert.fileio import atomic_open, refresh_sha256sums
from train import data
from validate.latency import BATCH_SIZES


def read_history(folder: Path) -> dict:
    """Load a training run's history.json, naming the file on failure."""
    path = folder / "history.json"
    try:
        history = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; train this framework first") from None
    except ValueError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot read it ({exc})") from None
    required = ("recipe", "test_accuracy", "architecture", "parameters")
    missing = [k for k in required
               if not isinstance(history, dict) or k not in history]
    if missing:
        raise ArtifactError(f"{path}: not a training history (no {', '.join(missing)})")
    wrong = [k for k, kinds in _HISTORY_TYPES.items()
             if k in history and not _is(history[k], kinds)
             or k in required and history.get(k) is None]
    epochs = history.get("epochs", [])
    if not isinstance(epochs, list) or not all(
            isinstance(e, dict) and all(_is(e.get(f, 0), (int, float)) for f in _EPOCH_FIELDS)
            for e in epochs):
        wrong.append("epochs")
    if wrong:
        raise ArtifactError(f"{path}: not a training history ({', '.join(wrong)} of the wrong "
                            "type)")
    return history


_HISTORY_TYPES = {"recipe": (dict,), "test_accuracy": (int, float), "architecture": (str,),
                  "parameters": (int,), "seconds": (int, float),
                  "images_per_second": (int, float), "versions": (dict,), "threads": (int,)}
_EPOCH_FIELDS = ("epoch", "loss", "accuracy", "seconds", "images_per_second")


def _is(value, kinds: tuple) -> bool:
    """isinstance, where a bool is not a number and null is allowed for optional fields."""
    return value is None or (isinstance(value, kinds) and not isinstance(value, bool))


def latency_images(data_dir: str | None) -> np.ndarray:
    """The first 256 test images as float32 NCHW: the latency input for every runtime
    (the native models' latency server reads them here)."""
    images = data.load_test(data_dir)[0][:max(BATCH_SIZES)]
    return data.to_float(images)


def write_reference(folder: Path, framework: str, probabilities: np.ndarray,
                    labels: np.ndarray, layers: dict[str, np.ndarray] | None = None,
                    layer_input: np.ndarray | None = None, native_layout: str | None = None
                    ) -> None:
    """Write reference.npz: native probabilities on the full test set, labels, digests, and
    the native layer outputs on the first test images (`layer_<name>`, in `native_layout`,
    recorded as `layer_layout`), the images themselves (`layer_input`) and their indices
    (`layer_images`)."""
    extra = {}
    if layers is not None:
        if layer_input is None or native_layout not in ("NCHW", "NHWC"):
            raise ValueError("layer outputs need their input images and their layout")
        extra = {f"layer_{name}": np.asarray(v, dtype=np.float32) for name, v in layers.items()}
        extra["layer_input"] = layer_input.astype(np.float32)
        extra["layer_layout"] = np.array(native_layout)
        extra["layer_images"] = np.arange(len(layer_input), dtype=np.int64)
    with atomic_open(folder / "reference.npz") as handle:
        np.savez(handle, **extra,
                 probabilities=probabilities.astype(np.float32),
                 labels=labels.astype(np.uint8),
                 test_images_sha256=np.array(data.FILES["t10k-images-idx3-ubyte.gz"]),
                 test_labels_sha256=np.array(data.FILES["t10k-labels-idx1-ubyte.gz"]),
                 dataset_sha256=np.array(data.DATASET_SHA256),
                 framework=np.array(framework))


def write_export(artifacts: Path, framework: str, onnx_model, predict: Callable,
                 data_dir: str | None, layer_outputs: Callable | None = None
                 ) -> Path:
    """Write reference.npz, test_data_set_0/ and, last, lenet5.onnx under ARTIFACTS/FRAMEWORK.

    `predict` maps float32 NCHW test images to the native model's probabilities;
    `layer_outputs` maps them to the native outputs of every layer in the graph's layer map
    (validate.layers), which must match the mapped ONNX tensors before anything is written.
    """
    # Imported here: onnxruntime is needed only to verify an export, not in latency children.
    from validate import layers as layer_map

    folder = artifacts / framework
    images, labels = data.load_test(data_dir)
    test_images = data.to_float(images)
    layer_input = layers = None
    if layer_outputs is not None:
        layer_input = test_images[:layer_map.DIAGNOSIS_IMAGES]
        layers = layer_outputs(layer_input)
        layer_map.verify_export(onnx_model, layers, layer_input)  # a wrong map fails here
    layout = layer_map.native_layout(layer_map.read_layer_map(onnx_model)) if layers else None
    probabilities = predict(test_images)
    onnx_utils.write_test_data_set(folder / "test_data_set_0", test_images[:8], probabilities[:8])
    write_reference(folder, framework, probabilities, labels, layers, layer_input, layout)
    path = folder / "lenet5.onnx"
    onnx_utils.save(onnx_model, path)
    refresh_sha256sums(folder)
    return path
