"""INT8 and FP16 variants of a user's model.onnx (framework-free), made as convert.quantize
makes LeNet-5's: onnxruntime static QDQ INT8 calibrated on the export's own inputs, FP16 with
float32 I/O by onnxconverter-common. Nodes that give a graph output stay float32 in INT8 (an
8-bit output would round every value to a 1/256 step). A variant that cannot be made is a
reason recorded in spec.json, never a failed export."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx

from convert.quantize import finish_variant, quiet_quantizer

CALIBRATION_INPUTS = 128   # the first N of the export's inputs
CALIBRATION_BATCH = 16


def _reader(arrays: dict[str, np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    count = min(CALIBRATION_INPUTS, len(next(iter(arrays.values()))))
    feeds = [{k: v[s:s + CALIBRATION_BATCH] for k, v in arrays.items()}
             for s in range(0, count, CALIBRATION_BATCH)]

    class Reader(CalibrationDataReader):
        """The export's first inputs, in fixed batches."""

        def __init__(self) -> None:
            self.position = 0

        def get_next(self) -> dict | None:
            if self.position == len(feeds):
                return None
            self.position += 1
            return feeds[self.position - 1]

        def rewind(self) -> None:
            self.position = 0

    return Reader(), count


def _output_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that give a graph output (named where they had none)."""
    outputs = {o.name for o in model.graph.output}
    names = []
    for k, node in enumerate(model.graph.node):
        if outputs & set(node.output):
            node.name = node.name or f"{node.op_type}_{k}"
            names.append(node.name)
    return names


def int8(source: Path, dest: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Static INT8 (QDQ, per-channel int8 weights, uint8 activations, MinMax) of `source`."""
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    original = onnx.load(str(source))
    reader, count = _reader(arrays)
    with tempfile.TemporaryDirectory(prefix="byom-quantize.") as tmp, quiet_quantizer():
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        quantize_static(model, out, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=False, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=_output_nodes(model))
        quantized = onnx.load(str(out))
    converter = (f"onnxruntime.quantization {ort.__version__}: quantize_static, QDQ, "
                 "per-channel int8 weights, uint8 activations, MinMax calibration on the "
                 f"first {count} inputs; the nodes giving graph outputs in float32")
    return finish_variant(quantized, original, source,
                          {"precision": "int8", "precision_converter": converter}, dest)


def fp16(source: Path, dest: Path) -> Path:
    """Float16 weights and activations, float32 inputs and outputs."""
    import onnxconverter_common
    from onnxconverter_common import float16

    original = onnx.load(str(source))
    with warnings.catch_warnings():  # one warning per weight below float16's range: noise
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    converter = (f"onnxconverter-common {onnxconverter_common.__version__}: "
                 "convert_float_to_float16(keep_io_types=True)")
    return finish_variant(half, original, source,
                          {"precision": "fp16", "precision_converter": converter}, dest)
