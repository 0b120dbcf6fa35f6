"""INT8 and FP16 variants of each exported FP32 ONNX model (framework-free).

- INT8: onnxruntime's static quantization in QDQ format, per-channel int8 weights, uint8
  activations, MinMax ranges calibrated on a fixed sample of *training* images (never test
  images), after onnxruntime's quantization pre-processing (shape inference and basic graph
  optimisation, which folds the Keras graph's MatMul + Add into Gemm).
- FP16: onnxconverter-common's `convert_float_to_float16(keep_io_types=True)`: weights and
  activations in float16, the input and output stay float32 (Cast nodes at the edges).
  onnxruntime's own `onnxruntime.transformers.float16` was tried too: on these opset-18 graphs
  it appends the input Cast at the end of the node list, which `onnx.checker` rejects (nodes
  not topologically sorted); onnxconverter-common sorts the graph and passes.

Both keep the I/O contract and the FP32 model's metadata_props, plus `precision`,
`precision_converter`, `source_sha256` (the FP32 file they were made from) and, for INT8,
`calibration`. The quantizer writes intermediate files by name; they go to a private
temporary folder outside the artifacts, and each result is written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnxruntime as ort

from train.core.errors import ArtifactError
from train.core.fileio import refresh_sha256sums, sha256_file
from train.core.contract import INPUT_NAME, save
from train import data

PRECISIONS = ("int8", "fp16")
CALIBRATION_IMAGES = 300   # a few hundred: MinMax ranges stop moving well before that
CALIBRATION_SEED = 0
CALIBRATION_BATCH = 100    # images per calibration call (ranges do not depend on it)


def variant_path(folder: Path, precision: str) -> Path:
    """Where a precision variant of `folder`/lenet5.onnx lives."""
    return folder / f"lenet5.{precision}.onnx"


@dataclass(frozen=True)
class Calibration:
    """The images the INT8 ranges are calibrated on, and how they were chosen."""

    images: np.ndarray   # float32 [N, 1, 28, 28], the ONNX input contract
    description: dict    # JSON-able: split, count, selection rule, sha256 of the uint8 pixels


def calibration_set(data_dir: str | None = None, count: int = CALIBRATION_IMAGES,
                    seed: int = CALIBRATION_SEED) -> Calibration:
    """A seeded sample of `count` training images (sorted indices; same seed, same images)."""
    images, _ = data.load_split(data.ensure_files(data_dir), "train")
    index = np.sort(np.random.default_rng(seed).choice(len(images), count, replace=False))
    chosen = images[index]
    return Calibration(data.to_float(chosen), {
        "split": "train",
        "images": int(count),
        "selection": f"numpy.random.default_rng({seed}).choice({len(images)}, {count}, "
                     "replace=False), sorted",
        "pixels_sha256": hashlib.sha256(np.ascontiguousarray(chosen).tobytes()).hexdigest(),
    })


def _reader(images: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds the calibration images in fixed batches."""

        def __init__(self) -> None:
            self.batches = [images[i:i + CALIBRATION_BATCH]
                            for i in range(0, len(images), CALIBRATION_BATCH)]
            self.position = 0

        def get_next(self) -> dict | None:
            if self.position == len(self.batches):
                return None
            self.position += 1
            return {INPUT_NAME: self.batches[self.position - 1]}

        def rewind(self) -> None:
            self.position = 0

    return Reader()


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    """The quantizer logs advice through the root logger; our choices are documented here."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _signature(values) -> list[tuple]:
    return [(v.name, v.type.tensor_type.elem_type,
             tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim))
            for v in values]


def finish_variant(model: onnx.ModelProto, source: onnx.ModelProto, source_path: Path,
                   extra: dict[str, str], dest: Path) -> Path:
    """Carry the FP32 metadata over, add the precision keys, check, write atomically."""
    meta = {p.key: p.value for p in source.metadata_props}
    meta["source_sha256"] = sha256_file(source_path)
    meta.update(extra)
    del model.metadata_props[:]
    for key in sorted(meta):
        model.metadata_props.add(key=key, value=meta[key])
    model.doc_string = source.doc_string
    for part in ("input", "output"):
        got, want = (_signature(getattr(m.graph, part)) for m in (model, source))
        if got != want:  # a bug in a converter, not the user's doing
            raise RuntimeError(f"{dest.name}: graph {part}s {got} differ from the FP32 "
                               f"model's {want}")
    onnx.checker.check_model(model, full_check=True)
    save(model, dest)
    return dest


def _load_source(source: Path) -> onnx.ModelProto:
    if not source.is_file():
        raise ArtifactError(f"{source}: missing; run `python -m convert export "
                            f"{source.parent.name}` first")
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # protobuf decode errors: the file is at fault
        raise ArtifactError(f"{source}: not a readable ONNX file ({exc})") from None
    from validate.artifacts import check_contract  # numpy + onnx only

    check_contract(model, source)  # calibration feeds `image`, the gate reads `probabilities`
    return model


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes INT8 leaves in float32 (named where they had no name), chosen by measured
    time: onnxruntime's quantized kernels lose to float32 on LeNet-5's layers but the hidden
    dense ones. Per layer, 1 thread, batch 256, on an AVX2 CPU without VNNI (Zen 3): conv1
    (1 input channel) 13.1 ms int8 vs 2.8 ms float32, the pools 2.5 and 1.3 ms vs 0.5 and 0.1,
    conv2 1.9 vs 2.0 (a tie that the layout changes and Q/DQ around it turn into a loss), fc1
    0.17 vs 0.30, fc2 0.05 vs 0.07, fc3 (10 outputs) 0.018 vs 0.014. The logits and the
    softmax stay float anyway: an 8-bit output would round every probability to a multiple of
    1/256 and could tie the top two classes."""
    nodes = model.graph.node
    dense = [k for k, n in enumerate(nodes) if n.op_type in ("Gemm", "MatMul")]
    keep_float = [k for k, n in enumerate(nodes)
                  if n.op_type in ("Conv", "AveragePool", "MaxPool", "Softmax")
                  or k in dense[-1:]]  # the last dense layer: the logits
    for k in keep_float:
        nodes[k].name = nodes[k].name or f"{nodes[k].op_type}_{k}"
    return [nodes[k].name for k in keep_float]


def quantize_int8(source: Path, dest: Path, calibration: Calibration) -> Path:
    """Static INT8 quantization (QDQ, per-channel weights) of `source`'s hidden dense layers
    (float_nodes: where onnxruntime's int8 kernels win), written to `dest`."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    original = _load_source(source)
    # Given a path, the quantizer writes "<name>-inferred.onnx" beside it: work on copies in a
    # private folder so that nothing but the final file ever appears in the artifacts.
    with tempfile.TemporaryDirectory(prefix="lenet5-quantize.") as tmp, quiet_quantizer():
        fp32, pre = Path(tmp) / "fp32.onnx", Path(tmp) / "preprocessed.onnx"
        onnx.save(original, str(fp32))  # quant_pre_process mishandles a ModelProto argument
        # Symbolic shape inference (sympy) is for transformer-style dynamic shapes; ONNX's own
        # shape inference covers LeNet-5, and onnxruntime does not depend on sympy.
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            model, out, _reader(calibration.images), quant_format=QuantFormat.QDQ,
            per_channel=True, reduce_range=False,
            # uint8 activations, int8 weights: onnxruntime's advice for x86 CPUs.
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=float_nodes(model))
        quantized = onnx.load(str(out))
    converter = (f"onnxruntime.quantization {ort.__version__}: quantize_static, QDQ, "
                 "per-channel int8 weights, uint8 activations, MinMax calibration; int8 in "
                 "the hidden dense layers (fc1, fc2), float32 elsewhere")
    return finish_variant(quantized, original, source, {
        "precision": "int8", "precision_converter": converter,
        "calibration": json.dumps(calibration.description, sort_keys=True)}, dest)


def convert_fp16(source: Path, dest: Path) -> Path:
    """Float16 weights and activations, float32 input and output, written to `dest`."""
    import onnxconverter_common
    from onnxconverter_common import float16

    original = _load_source(source)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    half = float16.convert_float_to_float16(model, keep_io_types=True)
    converter = (f"onnxconverter-common {onnxconverter_common.__version__}: "
                 "convert_float_to_float16(keep_io_types=True)")
    return finish_variant(half, original, source,
                          {"precision": "fp16", "precision_converter": converter}, dest)


def quantize(artifacts: Path, frameworks: tuple[str, ...], data_dir: str | None = None,
             calibration: Calibration | None = None) -> dict[str, dict[str, Path]]:
    """Write lenet5.int8.onnx and lenet5.fp16.onnx beside each framework's lenet5.onnx."""
    for fw in frameworks:  # check every input before the slow part
        _load_source(artifacts / fw / "lenet5.onnx")
    calibration = calibration or calibration_set(data_dir)
    written = {}
    for fw in frameworks:
        folder = artifacts / fw
        written[fw] = {
            "int8": quantize_int8(folder / "lenet5.onnx", variant_path(folder, "int8"),
                                  calibration),
            "fp16": convert_fp16(folder / "lenet5.onnx", variant_path(folder, "fp16")),
        }
        refresh_sha256sums(folder)
    return written
