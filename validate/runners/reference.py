"""The ONNX reference implementation on a float64 copy of the graph: the graph's "exact"
answer, against which every runtime's (and the native model's) rounding noise is measured.

Every float32 initializer, input, output, value_info, Constant and Cast target is made
float64, so the whole graph computes in double precision. onnx.reference's own AveragePool
loops in Python over every output element (about 18 ms per image for LeNet-5); it is replaced
by a vectorised numpy version for the plain case (2-D, no padding, no dilation, floor mode) and
kept for every other case. Conv is computed by one tensordot over strided windows in the plain
case (2-D, one group, no dilation), half the time of the reference's gathered columns; the same
sums of float64 products, in another order. Every other operator is the reference
implementation's own.
"""

from __future__ import annotations

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops.op_average_pool import AveragePool_11, AveragePool_19
from onnx.reference.ops.op_conv import Conv

from validate.runners.base import Runner, RunnerFailed
from validate.runners.ort import one_line

_F32, _F64 = TensorProto.FLOAT, TensorProto.DOUBLE


def _to_double_tensor(t: onnx.TensorProto) -> None:
    if t.data_type == _F32:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))


def _to_double_graph(graph: onnx.GraphProto) -> None:
    for t in graph.initializer:
        _to_double_tensor(t)
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        if v.type.tensor_type.elem_type == _F32:
            v.type.tensor_type.elem_type = _F64
    for node in graph.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == _F32:
                a.i = _F64
            elif a.type == onnx.AttributeProto.TENSOR:
                _to_double_tensor(a.t)
            elif a.type == onnx.AttributeProto.GRAPH:
                _to_double_graph(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    _to_double_graph(g)


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` that computes in float64 wherever the original used float32."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    _to_double_graph(copy.graph)
    return copy


def _plain_average_pool(x: np.ndarray, kernel: list[int], strides: list[int]) -> np.ndarray:
    kh, kw = kernel
    if list(strides) == [kh, kw]:  # windows side by side (LeNet's): a reshape, no copy
        n, c, h, w = x.shape
        x = x[:, :, :h - h % kh, :w - w % kw]
        return x.reshape(n, c, h // kh, kh, w // kw, kw).mean(axis=(3, 5)).astype(x.dtype)
    windows = sliding_window_view(x, tuple(kernel), axis=(2, 3))[:, :, ::strides[0], ::strides[1]]
    return windows.mean(axis=(-2, -1)).astype(x.dtype)


def _plain_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pads: list[int],
                strides: list[int]) -> np.ndarray:
    """2-D convolution, one group, no dilation, explicit pads [top, left, bottom, right]: every
    window against every kernel in one tensordot (onnx.reference gathers im2col columns by
    fancy indexing, about twice the time)."""
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    windows = sliding_window_view(xp, w.shape[2:], axis=(2, 3))[:, :, ::strides[0], ::strides[1]]
    out = np.tensordot(windows, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
    if b is not None:
        out = out + b.reshape(1, -1, 1, 1)
    return np.ascontiguousarray(out, dtype=x.dtype)


def _fast_pool(base):
    class AveragePool(base):
        def _run(self, x, auto_pad=None, ceil_mode=None, kernel_shape=None, pads=None,
                 strides=None, count_include_pad=None, **kw):
            kernel = list(kernel_shape or self.kernel_shape)
            strides_ = list(strides or self.strides or [1] * len(kernel))
            pads_ = list(pads or self.pads or [0] * (2 * len(kernel)))
            dil = kw.get("dilations") or getattr(self, "dilations", None) or [1] * len(kernel)
            plain = (x.ndim == 4 and len(kernel) == 2 and not any(pads_)
                     and (auto_pad or self.auto_pad or "NOTSET") in ("NOTSET", "VALID")
                     and not (ceil_mode or self.ceil_mode) and list(dil) == [1, 1])
            if plain:
                return (_plain_average_pool(x, kernel, strides_),)
            args = dict(auto_pad=auto_pad, ceil_mode=ceil_mode, kernel_shape=kernel_shape,
                        pads=pads, strides=strides, count_include_pad=count_include_pad, **kw)
            return base._run(self, x, **args)

    AveragePool.op_domain = ""
    return AveragePool


class _FastConv(Conv):
    def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None,
             kernel_shape=None, pads=None, strides=None):
        pads_ = list(pads or self.pads or [0, 0, 0, 0])
        strides_ = list(strides or self.strides or [1, 1])
        dil = list(dilations or self.dilations or [1, 1])
        plain = (X.ndim == 4 and W.ndim == 4 and (group or self.group or 1) == 1
                 and X.shape[1] == W.shape[1] and dil == [1, 1] and len(pads_) == 4
                 and (auto_pad or self.auto_pad or "NOTSET") in ("NOTSET", "VALID")
                 and list(kernel_shape or self.kernel_shape or W.shape[2:]) == list(W.shape[2:]))
        if plain:
            if (auto_pad or self.auto_pad) == "VALID":
                pads_ = [0, 0, 0, 0]
            return (_plain_conv(X, W, B, pads_, strides_),)
        return super()._run(X, W, B, auto_pad=auto_pad, dilations=dilations, group=group,
                            kernel_shape=kernel_shape, pads=pads, strides=strides)


_FastConv.__name__ = "Conv"
_FastConv.op_domain = ""


def evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    """A ReferenceEvaluator with the vectorised AveragePool and Conv for the graph's opset."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    pool = _fast_pool(AveragePool_19 if opset >= 19 else AveragePool_11)
    return ReferenceEvaluator(model, new_ops=[pool, _FastConv])


class ReferenceRunner(Runner):
    """onnx.reference.ReferenceEvaluator on the float64 copy; outputs cast back to float32
    only where the caller compares them with float32 (the arrays returned stay float64)."""

    key = "reference"
    name = "onnx-reference"
    tolerance = 1e-5
    description = ("ONNX reference implementation (onnx.reference), graph in float64: the "
                   "exact answer and the noise floor")
    exact = True
    intermediates = True
    provider = "float64"
    latency_threads = ()  # the exact answer, not a deployment runtime: not timed
    batch1_images = 32  # about 80 ms per single-image call
    default_batch = 200  # images per call: the evaluator's intermediate arrays are float64

    def load(self) -> None:
        try:
            model = (onnx.load_from_string(self.model) if isinstance(self.model, bytes)
                     else onnx.load(str(self.model)))
            self.model64 = to_float64(model)
            self.session = evaluator(self.model64)
        except Exception as exc:
            raise RunnerFailed(f"the reference implementation cannot load it "
                               f"({one_line(exc)})", str(exc)) from None
        self.input_names = [i.name for i in self.model64.graph.input
                            if i.name not in {t.name for t in self.model64.graph.initializer}]
        self.output_names = [o.name for o in self.model64.graph.output]
        self._wanted = {i.name: i.type.tensor_type.elem_type for i in self.model64.graph.input}

    def close(self) -> None:
        self.session = None

    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None
             ) -> dict[str, np.ndarray]:
        feeds = {k: (v.astype(np.float64) if v.dtype == np.float32 else v)
                 for k, v in feeds.items()}
        names = outputs or self.output_names
        try:
            values = self.session.run(names, feeds)
        except Exception as exc:
            raise RunnerFailed(f"the reference implementation failed to run it "
                               f"({one_line(exc)})", str(exc)) from None
        return dict(zip(names, values))
