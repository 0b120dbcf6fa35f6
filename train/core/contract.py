"""Framework-free ONNX helpers: the I/O contract, metadata, checks, deterministic saving."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from train.core.fileio import write_bytes
from train.core.dataset import CLASS_NAMES, DATASET_SHA256

FRAMEWORKS = ("torch", "tf")  # ARTIFACTS/<framework>/: one folder per source framework
OPSET = 18  # one opset for both graphs; tf2onnx 1.17 and torch.onnx both emit it
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
BATCH_DIM = "batch"
INPUT_SHAPE = (BATCH_DIM, 1, 28, 28)
OUTPUT_SHAPE = (BATCH_DIM, 10)
PREPROCESSING = "float32 pixel / 255 in [0, 1], grayscale 28x28, no mean/std normalisation"
LAYOUT = "NCHW"
LAYER_MAP_KEY = "layer_map"  # metadata_props: JSON layer map (validate.diagnose.layers) for diagnosis
REQUIRED_METADATA = (
    "class_names", "preprocessing", "layout", "source_framework", "source_framework_version",
    "exporter", "exporter_version", "recipe", "test_accuracy", "dataset_sha256",
)


def metadata(history: dict, framework: str, framework_version: str, exporter: str,
             exporter_version: str) -> dict[str, str]:
    """The metadata_props every exported graph carries (DESIGN.md's list)."""
    return {
        "class_names": json.dumps(list(CLASS_NAMES)),
        "preprocessing": PREPROCESSING,
        "layout": LAYOUT,
        "source_framework": framework,
        "source_framework_version": framework_version,
        "exporter": exporter,
        "exporter_version": exporter_version,
        "recipe": json.dumps(history["recipe"], sort_keys=True),
        "test_accuracy": f"{history['test_accuracy']:.6f}",
        "dataset_sha256": DATASET_SHA256,
        "architecture": history["architecture"],
        "parameters": str(history["parameters"]),
    }


def _set_shape(value: onnx.ValueInfoProto, shape: tuple) -> None:
    dims = value.type.tensor_type.shape.dim
    del dims[:]
    for d in shape:
        dim = dims.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        if v.name == old:
            v.name = new


_GENERATED = re.compile(r"__\d+(:\d+)?$")  # tf2onnx's counter suffixes: "Transpose__34:0"


def canonical_names(model: onnx.ModelProto) -> None:
    """Renumber generated names by first use and order initializers the same way.

    tf2onnx numbers the nodes and constants it creates from counters whose values, and the
    choice between equal constants it merges, vary from run to run; without this, exporting
    the same weights twice gives different bytes.
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    order: dict[str, int] = {}
    for node in graph.node:
        for name in list(node.input) + list(node.output):
            order.setdefault(name, len(order))
    mapping = {name: (f"const__{k}" if name in initializers else f"value__{k}")
               for name, k in order.items() if _GENERATED.search(name)}
    for node in graph.node:
        if _GENERATED.search(node.name):
            node.name = f"{node.op_type}__{order[node.output[0]]}"
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
    for v in list(graph.value_info) + list(graph.initializer):
        v.name = mapping.get(v.name, v.name)
    first_use = {mapping.get(name, name): k for name, k in order.items()}
    ordered = sorted(graph.initializer, key=lambda t: (first_use.get(t.name, len(order)), t.name))
    copies = [onnx.TensorProto.FromString(t.SerializeToString()) for t in ordered]
    del graph.initializer[:]
    graph.initializer.extend(copies)


# Node metadata that records the exporting machine: torch.onnx's stack traces name the source
# files (absolute paths) and lines of every `forward`, so the bytes would change with the
# clone's folder or an edit elsewhere in the file. Module names and scopes are kept.
BUILD_METADATA = ("pkg.torch.onnx.stack_trace",)


def strip_build_paths(model: onnx.ModelProto) -> None:
    """Drop node metadata that records where the exporting code stood (BUILD_METADATA)."""
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key not in BUILD_METADATA]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)


def relax_allowzero(model: onnx.ModelProto) -> list[str]:
    """Clear Reshape's allowzero where the shape is a constant without 0; return what changed.

    torch.onnx (onnxscript's torchlib) sets allowzero=1 on every Reshape, and some consumers
    refuse the attribute (onnx2torch 1.5.15: '"allowzero=1" is not implemented'). With no 0 in
    the target shape the attribute has no effect (ONNX Reshape spec), so clearing it there
    leaves the function unchanged, and the file every consumer loads is the file shipped.
    """
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    changed = []
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        for attr in node.attribute:
            shape = consts.get(node.input[1])
            if attr.name == "allowzero" and attr.i == 1 and shape is not None \
                    and not (shape == 0).any():
                attr.i = 0
                changed.append(f"{node.name or node.output[0]} (shape {shape.tolist()})")
    return changed


def apply_contract(model: onnx.ModelProto, meta: dict[str, str]) -> onnx.ModelProto:
    """Name and shape the I/O per the contract, drop unused opset domains, set metadata, check."""
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ValueError(f"expected one input and one output, got {len(graph.input)} and "
                         f"{len(graph.output)}")
    canonical_names(model)
    relax_allowzero(model)
    strip_build_paths(model)
    _rename_value(graph, graph.input[0].name, INPUT_NAME)
    _rename_value(graph, graph.output[0].name, OUTPUT_NAME)
    _set_shape(graph.input[0], INPUT_SHAPE)
    _set_shape(graph.output[0], OUTPUT_SHAPE)
    used = {node.domain for node in graph.node}
    kept = [op for op in model.opset_import if op.domain in used or op.domain == ""]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    del model.metadata_props[:]
    for key in sorted(meta):
        model.metadata_props.add(key=key, value=meta[key])
    model.doc_string = "LeNet-5 on Fashion-MNIST; see metadata_props for the I/O contract."
    onnx.checker.check_model(model, full_check=True)
    return model


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    """Set one metadata_props entry, keeping the entries sorted by key (deterministic bytes)."""
    props = {p.key: p.value for p in model.metadata_props}
    props[key] = value
    del model.metadata_props[:]
    for k in sorted(props):
        model.metadata_props.add(key=k, value=props[k])


def save(model: onnx.ModelProto, path: Path) -> None:
    """Serialise deterministically and write atomically."""
    write_bytes(path, model.SerializeToString(deterministic=True))


def write_test_data_set(folder: Path, images: np.ndarray, probabilities: np.ndarray) -> None:
    """Write `input_0.pb` / `output_0.pb` in the ONNX backend-test format."""
    write_bytes(folder / "input_0.pb",
                numpy_helper.from_array(images, INPUT_NAME).SerializeToString())
    write_bytes(folder / "output_0.pb",
                numpy_helper.from_array(probabilities, OUTPUT_NAME).SerializeToString())


def read_tensor(path: Path) -> np.ndarray:
    """Read one TensorProto file back as an array."""
    tensor = onnx.TensorProto()
    tensor.ParseFromString(Path(path).read_bytes())
    return numpy_helper.to_array(tensor)
