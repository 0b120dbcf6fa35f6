"""Export side of the layer map: find each LeNet-5 layer's tensor in the exported graph by a
structural walk, record the map (train.core.layermap), and check it against the native
model's own layer outputs before anything is written."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx

from train.core.contract import OUTPUT_NAME
from train.core.errors import ArtifactError
from train.core.layermap import ORDER, read_layer_map, store
from validate.diagnose.layers import BASE_RUNNER_TOLERANCE, compare, run_layers, short


VERIFY_SCALE = 100.0  # the export check: a wrong tensor or layout is off by O(1), noise is not


class LayerMapError(RuntimeError):
    """The exported graph does not have the structure the layer map expects, or a mapped tensor
    does not hold the native layer's output: a bug of the exporter, never a user error."""


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
    if layout[0] != "N" or layout[1:] not in ORDER.values():
        raise LayerMapError(f"flatten {flat}: flattens {layout}, expected N first")
    return layout[1:]


class _Graph:
    """What the layer map walk reads of a graph: its weight shapes and who reads each tensor."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.weights = {t.name: tuple(t.dims) for t in graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def only(self, tensor: str, ops: tuple[str, ...]) -> onnx.NodeProto | None:
        """The single node reading `tensor`, if it is one of `ops`."""
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and users[0].op_type in ops else None


def find_layers(model: onnx.ModelProto, native_layout: str) -> list[dict]:
    """The layer map of an exported LeNet-5: one entry per layer, in graph order.

    Walks the graph: every Conv, and every Gemm or MatMul with a weight initializer, is a
    weighted layer, in node order; a bias Add, then a Relu, that follow it alone are part of
    it; the pooling node after a conv is its pool; the tensor the first dense layer reads is
    the flatten; the last dense layer's output (no Relu) is the logits (fc3 in LeNet-5); the
    graph output is the probabilities. `native_layout` is the framework's own layout of its
    conv activations (NCHW for PyTorch, NHWC for Keras).
    """
    g = _Graph(model.graph)
    shapes = _shapes(model)
    convs = [n for n in g.graph.node if n.op_type == "Conv"]
    dense = [n for n in g.graph.node if n.op_type == "Gemm"
             or (n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in g.weights)]
    if not convs or not dense:
        raise LayerMapError(f"expected Conv and Gemm/MatMul layers, found {len(convs)} Conv "
                            f"and {len(dense)} dense nodes")
    layers = _conv_layers(g, convs, shapes, native_layout)
    pool = layers[-1]
    layers.append({"layer": "flatten", "tensor": dense[0].input[0], "layout": "flat",
                   "native_layout": "flat", "native_order": ORDER[native_layout],
                   "order": _flatten_order(g.graph, dense[0].input[0], pool["tensor"],
                                           pool["layout"])})
    layers += _dense_layers(g, dense)
    logits = layers[-1]["tensor"]
    softmax = g.only(logits, ("Softmax",))
    if softmax is None or softmax.output[0] != OUTPUT_NAME:
        raise LayerMapError(f"the logits {logits} do not feed the Softmax that gives "
                            f"{OUTPUT_NAME!r}")
    layers.append({"layer": "probabilities", "tensor": OUTPUT_NAME, "layout": "flat",
                   "native_layout": "flat"})
    return layers


def _conv_layers(g: _Graph, convs: list[onnx.NodeProto], shapes: dict[str, list[int | None]],
                 native_layout: str) -> list[dict]:
    """conv<i> (the Relu's output) and pool<i> for each Conv, with their ONNX layouts."""
    layers = []
    for i, conv in enumerate(convs, 1):
        channels = g.weights.get(conv.input[1], (None,))[0]
        if channels is None:
            raise LayerMapError(f"Conv {conv.name}: weight {conv.input[1]} is not an initializer")
        out = conv.output[0]
        relu = g.only(out, ("Relu",))
        if relu is None:
            raise LayerMapError(f"Conv {conv.name}: no Relu follows it")
        out = relu.output[0]
        pool = g.only(out, ("AveragePool", "MaxPool"))
        if pool is None:
            raise LayerMapError(f"Conv {conv.name}: no pooling follows its Relu")
        for name, tensor in ((f"conv{i}", out), (f"pool{i}", pool.output[0])):
            layers.append({"layer": name, "tensor": tensor,
                           "layout": _layout(shapes.get(tensor), channels, tensor),
                           "native_layout": native_layout})
    return layers


def _dense_layers(g: _Graph, dense: list[onnx.NodeProto]) -> list[dict]:
    """fc<j> for each dense node: after its bias Add and Relu (the last one, logits, has none)."""
    layers = []
    for j, node in enumerate(dense, 1):
        out = node.output[0]
        if node.op_type == "MatMul":
            add = g.only(out, ("Add",))
            if add is None or not any(x in g.weights for x in add.input):
                raise LayerMapError(f"MatMul {node.name}: no bias Add follows it")
            out = add.output[0]
        relu = g.only(out, ("Relu",))
        last = j == len(dense)
        if (relu is None) != last:
            raise LayerMapError(f"dense layer {j} of {len(dense)} ({node.name}): expected a Relu "
                                "after every dense layer but the last")
        if relu is not None:
            out = relu.output[0]
        layers.append({"layer": f"fc{j}", "tensor": out, "layout": "flat",
                       "native_layout": "flat"})
    return layers


def attach_layer_map(model: onnx.ModelProto, native_layout: str) -> list[dict]:
    """Find the layer map and store it in the model's metadata_props (JSON); return it."""
    layers = find_layers(model, native_layout)
    store(model, layers)
    return layers


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
            f"> {short(r['tolerance'])}" for r in bad))
    return rows
