"""The layer map of a user's model (format version 2, docs/byom.md): for each native module or
layer, the ONNX tensor that holds its output, found among the candidates the framework's side
names (the nodes the exporter put in the module's scope) and kept only if onnxruntime's value
of it, brought to the native layout, matches the native output on the diagnosis inputs.

Framework-free (numpy, onnx, onnxruntime): the native outputs come in as arrays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from train.core.contract import LAYER_MAP_KEY, set_metadata
from validate.diagnose.layers import with_outputs

MAP_VERSION = 2
MATCH = 1e-3          # relative error below which a tensor is the layer's output
MAX_CANDIDATES = 6    # tensors tried per layer, last first (the module's output is last)
_TO_NCHW, _TO_NHWC = (0, 3, 1, 2), (0, 2, 3, 1)


@dataclass(frozen=True)
class LayerMap:
    """The mapped layers (map entries), the unmapped ones with their reasons, and the ONNX
    graph outputs on the diagnosis inputs (a free parity check)."""

    layers: list[dict]
    unmapped: dict[str, str]
    outputs: dict[str, np.ndarray]


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |diff| / max |native| (max |diff| itself where the native values are all zero)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape:
        return float("inf")
    if not theirs.size:
        return 0.0
    diff = float(np.abs(ours - theirs).max())
    scale = float(np.abs(theirs).max())
    return diff / scale if scale > 0 else diff


def _as_native(value: np.ndarray, layout: str, native_layout: str) -> np.ndarray:
    """An ONNX value in `layout` brought to the native layout (flat: one row per input)."""
    if native_layout == "flat":
        return value.reshape(len(value), -1)
    if layout == native_layout:
        return value
    return value.transpose(_TO_NHWC if native_layout == "NHWC" else _TO_NCHW)


def _match(value: np.ndarray, native: np.ndarray, native_layout: str
           ) -> tuple[str | None, float]:
    """The ONNX layout under which `value` equals `native` (None if none), and the best error."""
    if value.dtype.kind not in "fiub" or len(value) != len(native):
        return None, float("inf")
    if native_layout == "flat":
        if value.size != native.size:
            return None, float("inf")
        err = relative_error(value.reshape(len(value), -1), native.reshape(len(native), -1))
        return ("flat" if err < MATCH else None), err
    best = float("inf")
    other = "NHWC" if native_layout == "NCHW" else "NCHW"
    for layout in (native_layout, other):
        if value.ndim != 4:
            break
        err = relative_error(_as_native(value, layout, native_layout), native)
        if err < MATCH:
            return layout, err
        best = min(best, err)
    return None, best


def _run(model: onnx.ModelProto, tensors: list[str], feeds: dict[str, np.ndarray]
         ) -> dict[str, np.ndarray]:
    """Every graph output and `tensors`, on onnxruntime CPU."""
    import onnxruntime as ort

    probe = with_outputs(model, tensors)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def native_layout_of(array: np.ndarray, framework_layout: str) -> str:
    """The layout a native output is recorded in: the framework's for 4-D, else flat."""
    return framework_layout if array.ndim == 4 else "flat"


def find(model: onnx.ModelProto, feeds: dict[str, np.ndarray], layers: list[str],
         native: dict[str, np.ndarray], reasons: dict[str, str],
         candidates: Callable[[onnx.ModelProto, str], list[str]], framework_layout: str
         ) -> LayerMap:
    """Map each of `layers` (in order) to the first candidate tensor that holds its native
    output; the others go to `unmapped` with the reason."""
    picks = {name: candidates(model, name)[:MAX_CANDIDATES] for name in layers
             if name in native}
    wanted = sorted({t for tensors in picks.values() for t in tensors})
    values = _run(model, wanted, feeds)
    entries, unmapped = [], dict(reasons)
    for name in layers:
        if name not in native:
            unmapped.setdefault(name, "no native output")
            continue
        layout_native = native_layout_of(native[name], framework_layout)
        best = (None, float("inf"))
        for tensor in picks[name]:
            layout, err = _match(values[tensor], native[name], layout_native)
            if layout is not None:
                entries.append({"layer": name, "tensor": tensor, "layout": layout,
                                "native_layout": layout_native})
                break
            best = min(best, (tensor, err), key=lambda pair: pair[1])
        else:
            unmapped[name] = (
                "no tensor of its own in the graph (fused into a neighbour by the exporter)"
                if not picks[name] else
                f"no tensor in its scope holds its output (closest {best[0]}: relative "
                f"error {best[1]:.3g})")
    outputs = {o.name: values[o.name] for o in model.graph.output}
    return LayerMap(entries, {k: unmapped[k] for k in layers if k in unmapped}, outputs)


def store(model: onnx.ModelProto, layers: list[dict], images: int) -> None:
    """Record the map (version 2) in the model's metadata_props."""
    doc = {"version": MAP_VERSION, "images": images, "layers": layers}
    set_metadata(model, LAYER_MAP_KEY, json.dumps(doc, sort_keys=True, separators=(",", ":")))
