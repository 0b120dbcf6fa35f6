"""The Keras side of a model export: checkpoint (.keras in safe mode, .weights.h5), the
model's own input signature, native outputs in batches, per-layer outputs, tf2onnx export
from a tf.function (from_keras is broken under Keras 3), the layer names tf2onnx keeps in node
names, and the weights file. Imports tensorflow/keras/tf2onnx only; one framework per process.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from typing import Callable
from pathlib import Path

import numpy as np
import onnx

from train.quiet import import_tensorflow

tf = import_tensorflow()
import keras  # noqa: E402
import tf2onnx  # noqa: E402

from convert.byom.factory import fit_report  # noqa: E402
from train.core import contract  # noqa: E402
from train.core.errors import ToolkitError  # noqa: E402
from train.core.spec import BATCH, InputSpec, ModelSpec  # noqa: E402

WEIGHTS_FILE = "weights.weights.h5"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _copy_weights(model, saved, path: Path, name: str) -> None:
    """`saved`'s weights into `model`, matched by path; one line naming what does not fit."""
    own = {w.path: w for w in model.weights}
    theirs = {w.path: w for w in saved.weights}
    problem = fit_report({k: tuple(w.shape) for k, w in own.items()},
                         {k: tuple(w.shape) for k, w in theirs.items()})
    if problem:
        raise ToolkitError(f"{path}: does not fit {name}: {problem}")
    for key, variable in own.items():
        variable.assign(theirs[key].numpy())


def load_checkpoint(model, path: Path, name: str) -> None:
    """A .keras archive (safe mode: no deserialised Python code) or a .weights.h5 file into
    `model`; one line if it is not one or does not fit."""
    if not path.is_file():
        raise ToolkitError(f"{path}: no such checkpoint")
    if path.name.endswith(".weights.h5"):
        try:
            model.load_weights(path)
        except Exception as exc:  # the file does not fit the model, or is not HDF5
            raise ToolkitError(f"{path}: does not fit {name}: {_first_line(exc)}") from None
        return
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise ToolkitError(f"{path}: a Keras checkpoint is a .keras archive or a .weights.h5 "
                           "file")
    try:
        saved = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # refused in safe mode, corrupt: the file's fault
        raise ToolkitError(f"{path}: cannot load in safe mode ({_first_line(exc)})") from None
    _copy_weights(model, saved, path, name)


def _input_layer_name(tensor) -> str:
    history = getattr(tensor, "_keras_history", None)
    return getattr(getattr(history, "operation", None), "name", None) or tensor.name


class KerasSide:
    """One Keras model, everything the export asks of it."""

    framework = "tf"
    exporter = "tf2onnx (from_function)"
    weights_file = WEIGHTS_FILE
    native_layout = "NHWC"

    def __init__(self, model, spec: ModelSpec) -> None:
        self.model = model
        self.spec = spec
        self.output_names = list(getattr(model, "output_names", None) or
                                 [f"output_{k}" for k in range(len(model.outputs))])

    def load_checkpoint(self, path: Path) -> None:
        load_checkpoint(self.model, path, self.spec.name)

    def versions(self) -> dict[str, str]:
        return {"tensorflow": tf.__version__, "keras": keras.__version__,
                "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__}

    def signature(self, declared: tuple[InputSpec, ...], from_data: tuple | None
                  ) -> tuple[InputSpec, ...]:
        """The model's own inputs (names of its input layers); a declared [[inputs]] list
        renames them and fills unknown dimensions, in order."""
        tensors = getattr(self.model, "inputs", None) or []
        if not tensors:
            raise ToolkitError(f"{self.spec.name}: a Keras model without known inputs (a "
                               "subclassed model never called); build it with keras.Input")
        if declared and len(declared) != len(tensors):
            raise ToolkitError(f"{self.spec.origin}: declares {len(declared)} inputs; "
                               f"{self.spec.name} has {len(tensors)}")
        out = []
        for k, t in enumerate(tensors):
            dims = list(t.shape[1:])
            if declared:
                want = declared[k]
                if len(want.shape) != len(t.shape) or any(
                        d is not None and d != w for d, w in zip(dims, want.shape[1:])):
                    raise ToolkitError(f"{self.spec.origin}: input {want.name!r} shape "
                                       f"{list(want.shape)} does not fit the model's "
                                       f"{['batch', *dims]}")
                out.append(want)
                continue
            if any(d is None for d in dims):
                raise ToolkitError(f"{self.spec.name}: input {_input_layer_name(t)!r} has "
                                   f"unknown dimensions {['batch', *dims]}; declare its shape "
                                   "in [[inputs]]")
            out.append(InputSpec(_input_layer_name(t), str(t.dtype), (BATCH, *dims),
                                 "NHWC" if len(dims) == 3 else "none", "pixel / 255"
                                 if len(dims) == 3 else ""))
        return tuple(out)

    def _call(self, feeds: dict[str, np.ndarray]):
        args = [tf.constant(a) for a in feeds.values()]
        return self.model(args if len(args) > 1 else args[0], training=False)

    def _named(self, result) -> dict[str, np.ndarray]:
        if isinstance(result, dict):
            values = [result[k] for k in self.output_names]
        else:
            values = list(result) if isinstance(result, (list, tuple)) else [result]
        return {k: np.asarray(v) for k, v in zip(self.output_names, values)}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named outputs of the native model on named inputs."""
        return self._named(self._call(feeds))

    def serving(self) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """The model as a deployed Keras model runs: one traced tf.function with a dynamic
        batch axis (as the LeNet-5 latency server's). Calling the model eagerly, layer by
        layer in Python, costs more than the kernels for a model of many small layers
        (MobileNetV2 at batch 1: 137 ms eager), which would time Python, not the model."""
        specs = [tf.TensorSpec([None, *t.shape[1:]], t.dtype) for t in self.model.inputs]
        model = self.model

        @tf.function(input_signature=specs)
        def serve(*args):
            return model(list(args) if len(args) > 1 else args[0], training=False)

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return self._named(serve(*[tf.constant(a) for a in feeds.values()]))

        return run

    def default_layers(self) -> list[str]:
        """Every layer but the inputs, in the model's order."""
        return [layer.name for layer in self.model.layers
                if not isinstance(layer, keras.layers.InputLayer)]

    def layer_outputs(self, feeds: dict[str, np.ndarray], layers: list[str]
                      ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Native outputs of `layers` (a model from the inputs to each layer's output), and
        why others have none."""
        known = {layer.name: layer for layer in self.model.layers}
        tensors, reasons = {}, {}
        for name in layers:
            if name not in known:
                raise ToolkitError(f"{self.spec.origin}: {self.spec.name} has no layer "
                                   f"{name!r} (layers)")
            try:
                output = known[name].output
            except Exception as exc:  # a layer used twice, a subclassed model
                reasons[name] = f"no single output tensor ({_first_line(exc)})"
                continue
            if isinstance(output, (list, tuple, dict)):
                reasons[name] = "several output tensors"
            else:
                tensors[name] = output
        if not tensors:
            return {}, reasons
        probe = keras.Model(self.model.inputs, list(tensors.values()))
        args = [tf.constant(a) for a in feeds.values()]
        values = probe(args if len(args) > 1 else args[0], training=False)
        values = values if isinstance(values, (list, tuple)) else [values]
        return {k: np.asarray(v) for k, v in zip(tensors, values)}, reasons

    def to_onnx(self, signature: tuple[InputSpec, ...], example: dict[str, np.ndarray]
                ) -> onnx.ModelProto:
        """tf2onnx.convert.from_function on a tf.function with the input signature (a
        dynamic batch axis), outputs named as the model's."""
        specs = [tf.TensorSpec([None, *s.sample_shape()], tf.as_dtype(s.dtype), name=s.name)
                 for s in signature]
        model, names = self.model, self.output_names

        @tf.function(input_signature=specs)
        def serve(*args):
            result = model(list(args) if len(args) > 1 else args[0], training=False)
            values = [result[k] for k in names] if isinstance(result, dict) else (
                list(result) if isinstance(result, (list, tuple)) else [result])
            return dict(zip(names, values))

        proto, _ = tf2onnx.convert.from_function(serve, input_signature=specs,
                                                 opset=contract.OPSET)
        contract.canonical_names(proto)
        for value, want in zip(proto.graph.input, [s.name for s in signature]):
            contract._rename_value(proto.graph, value.name, want)
        for value in list(proto.graph.input) + list(proto.graph.output):
            dims = value.type.tensor_type.shape.dim
            if len(dims):
                dims[0].dim_param = BATCH
        return proto

    def candidates(self, model: onnx.ModelProto, layer: str) -> list[str]:
        """Outputs of the nodes whose name has the layer's scope (`name` or `name_<k>`, as
        Keras 3 numbers its scopes), last first."""
        scope = re.compile(rf"(^|/){re.escape(layer)}(_\d+)?/")
        found = [o for node in model.graph.node if scope.search(node.name) for o in node.output]
        return found[::-1]

    def save_weights(self, path: Path) -> None:
        """The exact weights exported; Keras insists on the .weights.h5 suffix, so they go to
        a private folder beside `path`, then into place with os.replace."""
        with tempfile.TemporaryDirectory(prefix=".weights.", dir=path.parent) as tmp:
            staged = Path(tmp) / WEIGHTS_FILE
            self.model.save_weights(staged)
            os.replace(staged, path)
