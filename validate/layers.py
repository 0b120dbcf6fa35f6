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

import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from convert.errors import ArtifactError, ToolkitError
from convert.onnx_utils import LAYER_MAP_KEY, OUTPUT_NAME, set_metadata
from validate.runners import runner_class
from validate.report import cell
from validate.runners.base import Runner, RunnerUnavailable

DIAGNOSIS_IMAGES = 64   # the first N test images: native layer outputs are recorded for these
MAP_VERSION = 1

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
VERIFY_SCALE = 100.0  # the export check: a wrong tensor or layout is off by O(1), noise is not


_ORDER = {"NCHW": "CHW", "NHWC": "HWC"}  # a layout's flatten order (Flatten keeps memory order)


class LayerMapError(RuntimeError):
    """The exported graph does not have the structure the layer map expects, or a mapped tensor
    does not hold the native layer's output: a bug of the exporter, never a user error."""


# -- export side: find the layers in the graph -----------------------------------------------

def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Every tensor's inferred shape (None for an unknown dimension)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    shapes = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None
                              for d in t.shape.dim]
    return shapes


def _layout(shape: list[int | None] | None, channels: int, tensor: str) -> str:
    """NCHW or NHWC for a 4-D activation with `channels` channels, from its inferred shape."""
    if not shape or len(shape) != 4:
        raise LayerMapError(f"{tensor}: expected a 4-D activation, inferred shape {shape}")
    nchw, nhwc = shape[1] == channels, shape[3] == channels
    if nchw == nhwc:
        raise LayerMapError(f"{tensor}: cannot tell NCHW from NHWC for shape {shape} "
                            f"with {channels} channels")
    return "NCHW" if nchw else "NHWC"


def _flatten_order(graph: onnx.GraphProto, flat: str, pool: str, pool_layout: str) -> str:
    """CHW or HWC: the order in which the graph's flatten tensor `flat` lists the last pool's
    values (a Reshape/Flatten of the pool tensor, or of a Transpose of it)."""
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get(flat)
    if node is None or node.op_type not in ("Reshape", "Flatten"):
        raise LayerMapError(f"flatten {flat}: not made by a Reshape or Flatten")
    layout, source = pool_layout, node.input[0]
    if source != pool:
        t = producer.get(source)
        if t is None or t.op_type != "Transpose" or t.input[0] != pool:
            raise LayerMapError(f"flatten {flat}: its input is neither {pool} nor a Transpose "
                                "of it")
        perm = next(list(a.ints) for a in t.attribute if a.name == "perm")
        layout = "".join(pool_layout[i] for i in perm)
    if layout[0] != "N" or layout[1:] not in _ORDER.values():
        raise LayerMapError(f"flatten {flat}: flattens {layout}, expected N first")
    return layout[1:]


def find_layers(model: onnx.ModelProto, native_layout: str) -> list[dict]:
    """The layer map of an exported LeNet-5: one entry per layer, in graph order.

    Walks the graph: every Conv, and every Gemm or MatMul with a weight initializer, is a
    weighted layer, in node order; a bias Add, then a Relu, that follow it alone are part of
    it; the pooling node after a conv is its pool; the tensor the first dense layer reads is
    the flatten; the last dense layer's output (no Relu) is the logits (fc3 in LeNet-5); the
    graph output is the probabilities. `native_layout` is the framework's own layout of its
    conv activations (NCHW for PyTorch, NHWC for Keras).
    """
    graph = model.graph
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only(tensor: str, ops: tuple[str, ...]) -> onnx.NodeProto | None:
        users = consumers.get(tensor, [])
        return users[0] if len(users) == 1 and users[0].op_type in ops else None

    shapes = _shapes(model)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    dense = [n for n in graph.node if n.op_type == "Gemm"
             or (n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in weights)]
    if not convs or not dense:
        raise LayerMapError(f"expected Conv and Gemm/MatMul layers, found {len(convs)} Conv "
                            f"and {len(dense)} dense nodes")
    layers = []
    for i, conv in enumerate(convs, 1):
        channels = weights.get(conv.input[1], (None,))[0]
        if channels is None:
            raise LayerMapError(f"Conv {conv.name}: weight {conv.input[1]} is not an initializer")
        out = conv.output[0]
        relu = only(out, ("Relu",))
        if relu is None:
            raise LayerMapError(f"Conv {conv.name}: no Relu follows it")
        out = relu.output[0]
        pool = only(out, ("AveragePool", "MaxPool"))
        if pool is None:
            raise LayerMapError(f"Conv {conv.name}: no pooling follows its Relu")
        for name, tensor in ((f"conv{i}", out), (f"pool{i}", pool.output[0])):
            layers.append({"layer": name, "tensor": tensor,
                           "layout": _layout(shapes.get(tensor), channels, tensor),
                           "native_layout": native_layout})
    pool = layers[-1]
    layers.append({"layer": "flatten", "tensor": dense[0].input[0], "layout": "flat",
                   "native_layout": "flat", "native_order": _ORDER[native_layout],
                   "order": _flatten_order(graph, dense[0].input[0], pool["tensor"],
                                           pool["layout"])})
    for j, node in enumerate(dense, 1):
        out = node.output[0]
        if node.op_type == "MatMul":
            add = only(out, ("Add",))
            if add is None or not any(x in weights for x in add.input):
                raise LayerMapError(f"MatMul {node.name}: no bias Add follows it")
            out = add.output[0]
        relu = only(out, ("Relu",))
        last = j == len(dense)
        if (relu is None) != last:
            raise LayerMapError(f"dense layer {j} of {len(dense)} ({node.name}): expected a Relu "
                                "after every dense layer but the last")
        if relu is not None:
            out = relu.output[0]
        layers.append({"layer": f"fc{j}", "tensor": out, "layout": "flat",
                       "native_layout": "flat"})
    logits = layers[-1]["tensor"]
    softmax = only(logits, ("Softmax",))
    if softmax is None or softmax.output[0] != OUTPUT_NAME:
        raise LayerMapError(f"the logits {logits} do not feed the Softmax that gives "
                            f"{OUTPUT_NAME!r}")
    layers.append({"layer": "probabilities", "tensor": OUTPUT_NAME, "layout": "flat",
                   "native_layout": "flat"})
    return layers


def attach_layer_map(model: onnx.ModelProto, native_layout: str) -> list[dict]:
    """Find the layer map and store it in the model's metadata_props (JSON); return it."""
    layers = find_layers(model, native_layout)
    doc = {"version": MAP_VERSION, "images": DIAGNOSIS_IMAGES, "layers": layers}
    set_metadata(model, LAYER_MAP_KEY, json.dumps(doc, sort_keys=True, separators=(",", ":")))
    return layers


def native_layout(layers: list[dict]) -> str:
    """The layout of the native framework's 4-D activations, as the layer map records it."""
    return next((s["native_layout"] for s in layers if s["native_layout"] in _ORDER), "NCHW")


def with_native_layout(layers: list[dict], layout: str) -> list[dict]:
    """The layer map with another native layout (a reference recorded by the other framework,
    e.g. for a twin exported by the other exporter): 4-D layers and the flatten order follow."""
    if layout not in _ORDER:
        raise ArtifactError(f"reference.npz: unknown layer_layout {layout!r}")
    out = []
    for spec in layers:
        spec = dict(spec)
        if spec["native_layout"] in _ORDER:
            spec["native_layout"] = layout
        if "native_order" in spec:
            spec["native_order"] = _ORDER[layout]
        out.append(spec)
    return out


def read_layer_map(model: onnx.ModelProto, source: str = "model") -> list[dict]:
    """The layer map stored in `model`'s metadata_props."""
    meta = {p.key: p.value for p in model.metadata_props}
    if LAYER_MAP_KEY not in meta:
        raise ArtifactError(f"{source}: no {LAYER_MAP_KEY!r} in metadata_props (exported before "
                            "layer maps were recorded; export it again)")
    try:
        layers = json.loads(meta[LAYER_MAP_KEY])["layers"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{source}: metadata {LAYER_MAP_KEY!r} is not a layer map "
                            f"({exc!r})") from None
    keys = {"layer", "tensor", "layout", "native_layout"}
    if not isinstance(layers, list) or not layers or not all(
            isinstance(r, dict) and keys <= r.keys() for r in layers):
        raise ArtifactError(f"{source}: metadata {LAYER_MAP_KEY!r} is not a layer map "
                            f"(a list of layers, each with {', '.join(sorted(keys))})")
    return layers


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


def run_layers(model: onnx.ModelProto, layers: list[dict], images: np.ndarray,
               runner_key: str = "cpu") -> tuple[Runner, dict[str, np.ndarray]]:
    """Run the graph with every mapped tensor as an output; return the runner and the values."""
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
        values = runner.run({runner.input_names[0]: images}, outputs=tensors)
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


def diagnose(model: Path | bytes, reference: Mapping[str, np.ndarray], runner_key: str = "cpu"
             ) -> dict:
    """Compare every mapped layer of `model` (run by `runner_key`) with the native outputs in
    `reference` (reference.npz's arrays). JSON-able: runner, images, rows, first_divergence
    (the first layer over its tolerance, or None) and message."""
    proto, source = _load(model)
    layers = reference_layout(reference, read_layer_map(proto, source))
    images, native = native_layers(reference, layers)
    runner, values = run_layers(proto, layers, images, runner_key)
    rows = compare(layers, values, native, runner.tolerance)
    return {"runner": runner.name, "runner_key": runner_key, "images": int(len(images)),
            **summary(rows)}


def verify_export(model: onnx.ModelProto, native: Mapping[str, np.ndarray], images: np.ndarray
                  ) -> list[dict]:
    """At export: the mapped tensors, run on onnxruntime CPU, must match the native layers,
    layer for layer, within VERIFY_SCALE x the tolerance (a wrong tensor, e.g. before a ReLU, or
    a wrong layout is off by O(1); the gate on rounding noise is parity's, not the export's);
    raise LayerMapError naming every mismatch."""
    layers = read_layer_map(model)
    mapped, recorded = [s["layer"] for s in layers], list(native)
    if mapped != recorded:
        raise LayerMapError(f"the graph's layers {mapped} are not the native layers {recorded}")
    try:
        _, values = run_layers(model, layers, images, "cpu")
        rows = compare(layers, values, native, BASE_RUNNER_TOLERANCE * VERIFY_SCALE)
    except ArtifactError as exc:
        raise LayerMapError(str(exc)) from None
    bad = [r for r in rows if not r["passed"]]
    if bad:
        raise LayerMapError("layer map does not match the native model: " + "; ".join(
            f"{r['layer']} ({r['tensor']}, {r['layout']}): relative error {r['rel_error']:.3g} "
            f"> {_short(r['tolerance'])}" for r in bad))
    return rows


# -- reporting ----------------------------------------------------------------------------------

def _short(x: float) -> str:
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
                f"{row['rel_error']:.2g} > {_short(_noise_limit(row))}, above a healthy "
                f"export's noise; the first layer over {_short(row['tolerance'])} is "
                f"{result.get('first_over_limit')}")
    else:
        head = (f"first divergence at {first} (max |diff| {row['max_abs_diff']:.2g}, relative "
                f"{row['rel_error']:.2g} > {_short(row['tolerance'])}")
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
                     f"| {_short(r['tolerance'])} | {mark} |")
    return lines
