"""Layer-by-layer diagnosis: which layer's ONNX tensor first departs from the native layer.

At export, a *layer map* is recorded in the model's metadata_props (key "layer_map", JSON):
for each layer of LeNet-5 (conv1, pool1, conv2, pool2, flatten, fc1, fc2, fc3 = logits,
probabilities), the ONNX tensor that holds its output and that tensor's layout, found by a
structural walk of the exported graph; and reference.npz carries the native framework's
outputs of the same layers for the first DIAGNOSIS_IMAGES test images (`layer_<name>` in
the native layout, `layer_layout` that layout, `layer_input` the images, `layer_images` their
indices). The layers are defined alike in both frameworks: conv and hidden fc layers after
their ReLU (as Keras' Conv2D/Dense(activation='relu') output them), pools after pooling,
flatten the vector the first dense layer reads, fc3 the logits before softmax.

`diagnose` runs a copy of the graph with the mapped tensors added as graph outputs through a
runner that can return intermediates (onnxruntime CPU, the float64 reference), brings both
sides to one layout (NHWC -> NCHW; flatten compared as flat vectors, reordered CHW <-> HWC
where a graph and a reference from different frameworks flatten differently, as a twin and
its source do) and compares layer by layer. The first layer whose relative error exceeds the
tolerance is the *first divergence*. numpy, onnx and onnxruntime only: no framework.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from train.core.errors import ArtifactError, ToolkitError
from train.core.layermap import DIAGNOSIS_IMAGES, read_layer_map, with_native_layout
from validate.runners import runner_class
from validate.report.text import cell
from validate.runners.base import Runner, RunnerUnavailable


# One relative tolerance for every layer: max |diff| / max |native value| over the diagnosis
# images. Healthy exports measure 1e-7 .. 9e-7 at every layer, on onnxruntime CPU and on the
# float64 reference, for 1-epoch and 3-epoch models of both frameworks (float32 rounding: conv
# algorithms and summation orders differ), so 1e-5 leaves a factor of 10 or more. It equals
# the parity gate on probabilities (1e-5 absolute, and max |p| is close to 1). One limit for
# all layers matters: an error grows a little from layer to layer (softmax amplifies it most),
# so a looser limit on hidden layers than on the probabilities would name "probabilities" for
# a small fault in fc1. Layers before a faulty one are computed from unchanged tensors, so they
# stay at noise level, so the first layer over the limit is the faulty one for a perturbation
# of a whole weight tensor from about 3e-5 relative up. Not for every small fault: a shift of
# a bias by 1e-4 of its size moves conv1's output by ~5e-6 of its largest value (under the
# limit) and the first layer over it is fc3. So once some layer is over the limit, the first
# divergence named is the earliest layer above healthy noise: more than NOISE_CEILING, 1.7
# times the largest error a healthy export showed (9e-7). Measured on the quick models of both
# frameworks, each conv bias shifted by 1e-4, 3e-4, 1e-3, 1e-2 of its largest value: the conv
# itself named in all 16 cases; the first layer over 1e-5 was up to 5 layers later in 6.
TOLERANCE = 1e-5
NOISE_CEILING = 1.5e-6  # relative, scaled like TOLERANCE for runners with looser gates
BASE_RUNNER_TOLERANCE = 1e-5  # runners with looser parity gates (CUDA, 1e-4) scale the limit






# -- running and comparing ---------------------------------------------------------------------

def with_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs also include `tensors` (typed by shape inference)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    present = {o.name for o in graph.output}
    inferred = onnx.shape_inference.infer_shapes(copy).graph
    infos = {v.name: v for v in list(inferred.value_info) + list(inferred.output)}
    for name in tensors:
        if name in present:
            continue
        if name in infos:
            graph.output.append(infos[name])
        else:  # unknown shape: a float32 output of any shape
            graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        present.add(name)
    return copy


def _canonical(values: np.ndarray, layout: str) -> np.ndarray:
    """One layout for both sides: 4-D activations as NCHW, everything else flat per image."""
    values = np.asarray(values, dtype=np.float64)
    if layout == "NHWC":
        return values.transpose(0, 3, 1, 2)
    if layout == "flat":
        return values.reshape(len(values), -1)
    if layout == "NCHW":
        return values
    raise ArtifactError(f"unknown layout {layout!r} in the layer map")


def tolerance(runner_tolerance: float = BASE_RUNNER_TOLERANCE) -> float:
    """Relative tolerance of every layer for a runner whose parity gate is `runner_tolerance`."""
    return TOLERANCE * max(1.0, runner_tolerance / BASE_RUNNER_TOLERANCE)


def _reorder(flat: np.ndarray, chw: tuple | None, src: str, dst: str, layer: str) -> np.ndarray:
    """Flat per-image vectors listed in `src` order (CHW/HWC) -> listed in `dst` order."""
    if chw is None or int(np.prod(chw)) != flat.shape[1]:
        raise ArtifactError(f"layer {layer}: cannot reorder {flat.shape[1]} values from {src} "
                            f"to {dst} (the layer before it has shape {chw})")
    dims = dict(zip("CHW", chw))
    cube = flat.reshape(len(flat), *(dims[k] for k in src))
    return cube.transpose(0, *(1 + src.index(k) for k in dst)).reshape(len(flat), -1)


def _label(layout: str, order: str | None) -> str:
    return f"{layout} ({order})" if order else layout


def compare(layers: list[dict], onnx_values: Mapping[str, np.ndarray],
            native: Mapping[str, np.ndarray], runner_tolerance: float = BASE_RUNNER_TOLERANCE
            ) -> list[dict]:
    """Per-layer rows: max |diff|, relative error, fraction of elements over tolerance, verdict.

    `onnx_values` is keyed by tensor name, `native` by layer name. 4-D activations are compared
    as NCHW; a flatten whose order differs between the sides (CHW vs HWC) is reordered to the
    native order first. Relative error is max |diff| / max |native value| of the layer (max
    |diff| itself where the native layer is all zeros); `frac_over` is the fraction of elements
    whose |diff| exceeds tolerance x max |native value|.
    """
    rows, chw, tol = [], None, tolerance(runner_tolerance)
    for spec in layers:
        name = spec["layer"]
        ours = _canonical(onnx_values[spec["tensor"]], spec["layout"])
        theirs = _canonical(native[name], spec["native_layout"])
        order, native_order = spec.get("order"), spec.get("native_order")
        if order and native_order and order != native_order:
            ours = _reorder(ours, chw, order, native_order, name)
        if ours.ndim == 4:
            chw = ours.shape[1:]
        if ours.shape != theirs.shape:
            raise ArtifactError(f"layer {name}: ONNX tensor {spec['tensor']} has shape "
                                f"{ours.shape[1:]} ({spec['layout']}), the native output "
                                f"{theirs.shape[1:]} ({spec['native_layout']}): the reference "
                                "does not belong to this model")
        diff = np.abs(ours - theirs)
        scale = float(np.abs(theirs).max()) if theirs.size else 0.0
        max_diff = float(diff.max()) if diff.size else 0.0
        rel = max_diff / scale if scale > 0 else max_diff  # an all-zero layer: absolute
        limit = tol * scale
        rows.append({
            "layer": name, "tensor": spec["tensor"], "layout": _label(spec["layout"], order),
            "native_layout": _label(spec["native_layout"], native_order),
            "max_abs_diff": max_diff, "max_abs_native": scale, "rel_error": rel,
            "frac_over": float((diff > limit).mean()) if diff.size else 0.0,
            "tolerance": tol, "passed": bool(rel <= tol),
        })
    return rows


def _load(model: Path | bytes) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model)), "model"
    path = Path(model)
    try:
        return onnx.load(str(path)), str(path)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except Exception as exc:
        raise ArtifactError(f"{path}: not a readable ONNX model ({exc})") from None


def native_layers(reference: Mapping[str, np.ndarray], layers: list[dict]
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The diagnosis images and the native layer outputs stored in a reference."""
    keys = set(reference.keys()) if hasattr(reference, "keys") else set(reference)
    missing = [f"layer_{s['layer']}" for s in layers if f"layer_{s['layer']}" not in keys]
    if "layer_input" not in keys or missing:
        raise ArtifactError("reference.npz has no native layer outputs "
                            f"({', '.join(missing) or 'layer_input'} missing; export again)")
    return (np.asarray(reference["layer_input"]),
            {s["layer"]: np.asarray(reference[f"layer_{s['layer']}"]) for s in layers})


def reference_layout(reference: Mapping[str, np.ndarray], layers: list[dict]) -> list[dict]:
    """The layer map with the native layout the reference declares (`layer_layout`), if any."""
    keys = set(reference.keys()) if hasattr(reference, "keys") else set(reference)
    if "layer_layout" not in keys:
        return layers
    return with_native_layout(layers, str(np.asarray(reference["layer_layout"])))


def run_layers(model: onnx.ModelProto, layers: list[dict],
               images: np.ndarray | dict[str, np.ndarray], runner_key: str = "cpu"
               ) -> tuple[Runner, dict[str, np.ndarray]]:
    """Run the graph with every mapped tensor as an output; return the runner and the values.
    `images` feeds the graph's one input, or is the named inputs of a model with several."""
    cls = runner_class(runner_key)
    if not cls.intermediates:
        raise ToolkitError(f"runner {runner_key!r} ({cls.name}) cannot return intermediate "
                           "tensors; layer diagnosis needs one that can (cpu, reference)")
    reason = cls.availability()
    if reason:
        raise RunnerUnavailable(reason)
    tensors = [s["tensor"] for s in layers]
    augmented = with_outputs(model, tensors).SerializeToString()
    with cls(augmented) as runner:
        feeds = images if isinstance(images, dict) else {runner.input_names[0]: images}
        values = runner.run(feeds, outputs=tensors)
    return runner, values


def _noise_limit(row: dict) -> float:
    """Healthy noise for a row: NOISE_CEILING, scaled like its tolerance."""
    return NOISE_CEILING * row["tolerance"] / TOLERANCE


def summary(rows: list[dict]) -> dict:
    """first_divergence (or None) and the message for a list of per-layer rows: when a layer is
    over the limit, the earliest layer above healthy noise (see NOISE_CEILING), which is that
    layer itself unless an earlier one already moved."""
    over = next((r for r in rows if not r["passed"]), None)
    first = over
    if over is not None:
        first = next(r for r in rows if r is over or r["rel_error"] > _noise_limit(r))
    result = {"rows": rows, "first_divergence": first["layer"] if first else None,
              "first_over_limit": over["layer"] if over else None}
    result["message"] = failure_clause(result)
    return result


def diagnose(model: Path | bytes, reference: Mapping[str, np.ndarray], runner_key: str = "cpu",
             runner_tolerance: float | None = None) -> dict:
    """Compare every mapped layer of `model` (run by `runner_key`) with the native outputs in
    `reference` (reference.npz's arrays). The layers' limit scales with the parity tolerance
    the runner is judged by (`runner_tolerance`: --atol / --cuda-atol; default the runner's
    own). JSON-able: runner, images, rows, first_divergence (the first layer over its
    tolerance, or None) and message."""
    proto, source = _load(model)
    layers = reference_layout(reference, read_layer_map(proto, source))
    images, native = native_layers(reference, layers)
    runner, values = run_layers(proto, layers, images, runner_key)
    rows = compare(layers, values, native,
                   runner.tolerance if runner_tolerance is None else runner_tolerance)
    return {"runner": runner.name, "runner_key": runner_key, "images": int(len(images)),
            **summary(rows)}


# -- reporting ----------------------------------------------------------------------------------

def short(x: float) -> str:
    """1e-4 rather than 0.0001: tolerances in messages and tables."""
    mantissa, _, exponent = f"{x:.1e}".partition("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _power_of_ten_above(x: float) -> str:
    """1e-6 for 3.1e-7: the bound quoted for the layers before a divergence."""
    if x <= 0:
        return "0"
    return f"1e{math.ceil(math.log10(x)):d}"


def failure_clause(result: dict) -> str:
    """One clause for a failure message, e.g. "first divergence at conv2 (max |diff| 0.42,
    relative 0.11; every layer before it within 1e-6)"."""
    rows, first = result["rows"], result["first_divergence"]
    if first is None:
        worst = max(rows, key=lambda r: r["rel_error"])
        return (f"every layer within tolerance on the {result.get('images', DIAGNOSIS_IMAGES)} "
                f"diagnosis images (largest relative error {worst['rel_error']:.2g}, at "
                f"{worst['layer']})")
    k = next(i for i, r in enumerate(rows) if r["layer"] == first)
    row = rows[k]
    if row["passed"]:  # under the limit but above noise, and a later layer is over it
        head = (f"first divergence at {first} (max |diff| {row['max_abs_diff']:.2g}, relative "
                f"{row['rel_error']:.2g} > {short(_noise_limit(row))}, above a healthy "
                f"export's noise; the first layer over {short(row['tolerance'])} is "
                f"{result.get('first_over_limit')}")
    else:
        head = (f"first divergence at {first} (max |diff| {row['max_abs_diff']:.2g}, relative "
                f"{row['rel_error']:.2g} > {short(row['tolerance'])}")
    if k == 0:
        return head + f"; {first} is the first layer)"
    before = max(r["rel_error"] for r in rows[:k])
    if before == 0:
        return head + "; every layer before it identical)"
    return head + f"; every layer before it within {_power_of_ten_above(before)})"


def markdown(result: dict) -> list[str]:
    """The per-layer table as Markdown lines."""
    lines = [f"Layer by layer, {result.get('runner', '')} vs native, first "
             f"{result.get('images', DIAGNOSIS_IMAGES)} test images: {result['message']}.", "",
             "| layer | ONNX tensor | layout (ONNX / native) | max abs diff | relative error "
             "| over tolerance | tolerance | verdict |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        mark = "ok" if r["passed"] else (
            "**first divergence**" if r["layer"] == result["first_divergence"] else "over")
        lines.append(f"| {r['layer']} | `{cell(str(r['tensor']))}` | "
                     f"{r['layout']} / {r['native_layout']} "
                     f"| {r['max_abs_diff']:.2e} | {r['rel_error']:.2e} | {r['frac_over']:.2%} "
                     f"| {short(r['tolerance'])} | {mark} |")
    return lines
