"""Framework-free glue for the exporters: histories, weights, references, the latency images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from train.core import contract as onnx_utils
from train.core import weights as cw
from train.core.fileio import atomic_open, refresh_sha256sums
from train.core.history import read_history
from train.core.layermap import DIAGNOSIS_IMAGES, native_layout, read_layer_map
from train import data
from validate.timing.latency import BATCH_SIZES


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
    (validate.diagnose.layers), which must match the mapped ONNX tensors before anything is written.
    """
    # Imported here: onnxruntime is needed only to verify an export, not in latency children.
    from convert.export.layermap import verify_export

    folder = artifacts / framework
    images, labels = data.load_test(data_dir)
    test_images = data.to_float(images)
    layer_input = layers = None
    if layer_outputs is not None:
        layer_input = test_images[:DIAGNOSIS_IMAGES]
        layers = layer_outputs(layer_input)
        verify_export(onnx_model, layers, layer_input)  # a wrong map fails here
    layout = native_layout(read_layer_map(onnx_model)) if layers else None
    probabilities = predict(test_images)
    onnx_utils.write_test_data_set(folder / "test_data_set_0", test_images[:8], probabilities[:8])
    write_reference(folder, framework, probabilities, labels, layers, layer_input, layout)
    path = folder / "lenet5.onnx"
    onnx_utils.save(onnx_model, path)
    refresh_sha256sums(folder)
    return path


def write_weights(folder: Path, weights: cw.Weights) -> Path:
    """Write FOLDER/weights.npz for the other framework's twin builder."""
    path = folder / cw.FILE
    cw.save(path, weights)
    return path


def export_checkpoint(artifacts: Path, framework: str, checkpoint: str, data_dir: str | None, *,
                      load_model: Callable[[Path], Any],
                      canonical_weights: Callable[[Any], cw.Weights],
                      to_onnx: Callable[[Any, dict], Any],
                      predict: Callable[[Any, np.ndarray], np.ndarray],
                      layer_outputs: Callable[[Any, np.ndarray], dict]) -> Path:
    """ARTIFACTS/FRAMEWORK/CHECKPOINT -> weights.npz, then lenet5.onnx with its references
    (write_export); the framework's own steps come in as functions of the loaded model."""
    folder = artifacts / framework
    model = load_model(folder / checkpoint)
    write_weights(folder, canonical_weights(model))
    onnx_model = to_onnx(model, read_history(folder))
    return write_export(artifacts, framework, onnx_model, lambda x: predict(model, x),
                        data_dir, lambda x: layer_outputs(model, x))
