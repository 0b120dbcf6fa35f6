"""Reading what validation is given: ONNX files (checked before any runtime sees them),
reference.npz, test_data_set_* folders, training histories. numpy + onnx only."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from train.core.errors import ArtifactError
from train.core.fileio import SUMS_NAME, read_npz, read_sha256sums, sha256_file
from train.core.contract import (INPUT_NAME, INPUT_SHAPE, OUTPUT_NAME, OUTPUT_SHAPE,
                                REQUIRED_METADATA)
from train import data


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """External tensor data must stay inside the model's folder: no absolute path, no `..`,
    no symlink leading out. Checked before any runtime reads the files."""
    folder = path.resolve().parent
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        tensors = list(g.initializer) + [a.t for n in g.node for a in n.attribute
                                         if a.type == onnx.AttributeProto.TENSOR]
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    graphs.append(a.g)
                graphs.extend(a.graphs)
        for t in tensors:
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = {e.key: e.value for e in t.external_data}.get("location", "")
            bad = (not location or os.path.isabs(location)
                   or ".." in Path(location).parts)
            target = (folder / location).resolve()
            if bad or not target.is_relative_to(folder):
                raise ArtifactError(f"{path}: tensor {t.name!r} keeps its data at {location!r}, "
                                    "outside the model's folder; refused")
            if not target.is_file():
                raise ArtifactError(f"{path}: tensor {t.name!r}: external data file "
                                    f"{location!r} is missing")


def load_model(path: Path) -> onnx.ModelProto:
    """Read and check any ONNX file (external data confined to its folder)."""
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; run `python -m convert export "
                            f"{path.parent.name}` first" if path.name == "lenet5.onnx"
                            else f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors: the file is at fault
        raise ArtifactError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from None
    check_external_data(model, path)
    try:
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            onnx.load_external_data_for_model(model, str(path.parent))
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # checker errors: the file is at fault
        raise ArtifactError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from None
    return model


def signature(value: onnx.ValueInfoProto) -> tuple[int, tuple]:
    """(element type, shape with symbolic dims as their names) of a graph input or output."""
    t = value.type.tensor_type
    return t.elem_type, tuple(d.dim_param or d.dim_value for d in t.shape.dim)


def describe(sigs: dict) -> str:
    """`name dtype [shape]` for each entry, for error messages."""
    return ", ".join(f"{name} {onnx.helper.tensor_dtype_to_np_dtype(et) if et else '?'} "
                     f"{list(shape)}" for name, (et, shape) in sigs.items())


def graph_inputs(model: onnx.ModelProto) -> dict[str, tuple]:
    """Real inputs (not initializers) and their signatures."""
    inits = {t.name for t in model.graph.initializer}
    return {i.name: signature(i) for i in model.graph.input if i.name not in inits}


def follows_contract(model: onnx.ModelProto) -> bool:
    """Does the model look like one of ours (input `image`, output `probabilities`)?"""
    outputs = {o.name for o in model.graph.output}
    return set(graph_inputs(model)) == {INPUT_NAME} and OUTPUT_NAME in outputs


def check_contract(model: onnx.ModelProto, path: Path) -> None:
    """The I/O contract: image float32 [batch,1,28,28] -> probabilities float32 [batch,10]."""
    inputs = graph_inputs(model)
    outputs = {o.name: signature(o) for o in model.graph.output}
    want_in = (onnx.TensorProto.FLOAT, INPUT_SHAPE)
    want_out = (onnx.TensorProto.FLOAT, OUTPUT_SHAPE)
    if inputs != {INPUT_NAME: want_in} or outputs.get(OUTPUT_NAME) != want_out:
        raise ArtifactError(
            f"{path}: breaks the I/O contract (inputs {describe(inputs)}, outputs "
            f"{describe(outputs)}; expected input {INPUT_NAME} float32 {list(INPUT_SHAPE)} and "
            f"output {OUTPUT_NAME} float32 {list(OUTPUT_SHAPE)})")


def load_onnx(path: Path) -> onnx.ModelProto:
    """Read, check, and hold an ONNX file to the I/O contract."""
    model = load_model(path)
    check_contract(model, path)
    return model


def model_facts(path: Path, model: onnx.ModelProto) -> dict:
    """File size, parameters, opset, digest, producer, metadata."""
    opset = next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), None)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer
                 if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                    onnx.TensorProto.DOUBLE))
    meta = {p.key: p.value for p in model.metadata_props}
    return {"file": str(path), "path": str(path.resolve()), "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
            "opset": opset, "parameters": params,
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "metadata": meta,
            "missing_metadata": [k for k in REQUIRED_METADATA if k not in meta]}


def load_reference(path: Path) -> dict:
    """Read reference.npz, checking what validation relies on."""
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; run `python -m convert export "
                            f"{path.parent.name}` first")
    ref = read_npz(path)
    for key in ("probabilities", "labels", "test_images_sha256"):
        if key not in ref:
            raise ArtifactError(f"{path}: no '{key}' array; export again")
    probs, labels = ref["probabilities"], ref["labels"]
    if probs.shape != (10000, 10) or labels.shape != (10000,):
        raise ArtifactError(f"{path}: probabilities {probs.shape} / labels {labels.shape}, "
                            "expected (10000, 10) / (10000,)")
    if probs.dtype.kind != "f" or labels.dtype.kind not in "iu":
        raise ArtifactError(f"{path}: probabilities {probs.dtype} / labels {labels.dtype}, "
                            "expected float / integer")
    if not np.array_equal(labels, labels.astype(np.int64).clip(0, 9)):
        raise ArtifactError(f"{path}: labels outside 0-9")
    if str(ref["test_images_sha256"]) != data.FILES["t10k-images-idx3-ubyte.gz"]:
        raise ArtifactError(f"{path}: made from a different test set (sha256 "
                            f"{str(ref['test_images_sha256'])[:16]}…)")
    return ref


@dataclass(frozen=True)
class TestDataSet:
    """One ONNX backend-test folder: named inputs and expected named outputs."""

    folder: Path
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def _read_tensors(folder: Path, prefix: str, names: list[str]) -> dict[str, np.ndarray]:
    files = sorted(folder.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.split("_")[1])
                   if p.stem.split("_")[1].isdigit() else 1 << 30)
    out = {}
    for i, f in enumerate(files):
        tensor = onnx.TensorProto()
        try:
            tensor.ParseFromString(f.read_bytes())
            array = numpy_helper.to_array(tensor)
        except Exception as exc:
            raise ArtifactError(f"{f}: not a TensorProto ({_first_line(exc)})") from None
        name = tensor.name or (names[i] if i < len(names) else f"{prefix}_{i}")
        out[name] = array
    return out


def test_data_sets(model_path: Path, model: onnx.ModelProto) -> list[TestDataSet]:
    """Every `test_data_set_*` folder beside the model, in the ONNX backend-test format."""
    inputs = list(graph_inputs(model))
    outputs = [o.name for o in model.graph.output]
    sets = []
    for folder in sorted(model_path.parent.glob("test_data_set_*")):
        if not folder.is_dir():
            continue
        ins = _read_tensors(folder, "input", inputs)
        outs = _read_tensors(folder, "output", outputs)
        if set(ins) != set(inputs):
            raise ArtifactError(f"{folder}: inputs {sorted(ins)} do not match the model's "
                                f"{inputs}")
        unknown = set(outs) - set(outputs)
        if not outs or unknown:
            raise ArtifactError(f"{folder}: outputs {sorted(outs)} do not match the model's "
                                f"{outputs}")
        sets.append(TestDataSet(folder, ins, outs))
    return sets



def check_sha256sums(folder: Path) -> dict | None:
    """Check FOLDER/SHA256SUMS when present: every listed file must exist and match."""
    path = folder / SUMS_NAME
    if not path.is_file():
        return None
    try:
        sums = read_sha256sums(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a SHA256SUMS file ({_first_line(exc)})") from None
    mismatched, missing = [], []
    for name, digest in sums.items():
        target = (folder / name).resolve()
        if os.path.isabs(name) or ".." in Path(name).parts or not target.is_relative_to(
                folder.resolve()):
            raise ArtifactError(f"{path}: lists {name!r}, outside its folder")
        if not target.is_file():
            missing.append(name)
        elif sha256_file(target) != digest:
            mismatched.append(name)
    return {"file": str(path), "checked": len(sums), "mismatched": mismatched,
            "missing": missing, "passed": not mismatched and not missing}
