"""Keras exporter: model.keras -> lenet5.onnx (tf2onnx from a tf.function) plus references.

Imports tensorflow/keras/tf2onnx only; runs in a process of its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from train.quiet import tensorflow_environment

tensorflow_environment()  # before TF is imported: oneDNN kernels on, C++ logging at errors

import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402

from convert.export import reference  # noqa: E402
from train.core import contract as onnx_utils
from train.core import weights as cw
from train.keras_lenet import load_model, nhwc, predict  # noqa: E402
from convert.export.layermap import attach_layer_map  # noqa: E402

INPUT_SIGNATURE = [tf.TensorSpec([None, 1, 28, 28], tf.float32, name=onnx_utils.INPUT_NAME)]


def serving_function(model) -> tf.types.experimental.GenericFunction:
    """NCHW image -> probabilities: the contract's interface around the NHWC Keras model."""

    @tf.function(input_signature=INPUT_SIGNATURE)
    def serve(image):
        return {onnx_utils.OUTPUT_NAME: model(tf.transpose(image, [0, 2, 3, 1]), training=False)}

    return serve


def to_onnx(model, history: dict):
    """Convert with tf2onnx.from_function (from_keras is broken under Keras 3)."""
    import keras

    proto, _ = tf2onnx.convert.from_function(serving_function(model),
                                             input_signature=INPUT_SIGNATURE,
                                             opset=onnx_utils.OPSET)
    meta = onnx_utils.metadata(history, "tensorflow", f"{tf.__version__} (keras {keras.__version__})",
                               "tf2onnx", tf2onnx.__version__)
    proto = onnx_utils.apply_contract(proto, meta)
    attach_layer_map(proto, native_layout="NHWC")
    return proto


def layer_outputs(model, images) -> dict:
    """Native output of every layer of the layer map (validate.diagnose.layers), NHWC, for NCHW images.

    The Sequential model's layers are called in turn: Conv2D -> conv<i> (its ReLU included),
    pooling -> pool<i>, Flatten -> flatten, Dense -> fc<j>. Where the last Dense applies softmax
    itself (the seed's model), its logits are computed with TF ops from its input, kernel and
    bias; the model's output is the probabilities.
    """
    import keras

    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    fused = dense[-1].activation is keras.activations.softmax
    outputs, conv, fc = {}, 0, 0
    x = tf.constant(nhwc(images))
    for layer in model.layers:
        if isinstance(layer, keras.layers.Softmax):  # a separate softmax (the twins' models)
            x = layer(x)
            continue
        if isinstance(layer, keras.layers.Conv2D):
            conv += 1
            name = f"conv{conv}"
        elif isinstance(layer, (keras.layers.AveragePooling2D, keras.layers.MaxPooling2D)):
            name = f"pool{conv}"
        elif isinstance(layer, keras.layers.Flatten):
            name = "flatten"
        elif isinstance(layer, keras.layers.Dense):
            fc += 1
            name = f"fc{fc}"
        else:
            raise TypeError(f"layer_outputs: unexpected layer {layer.name} ({type(layer)})")
        if layer is dense[-1] and fused:
            outputs[name] = tf.matmul(x, layer.kernel) + layer.bias  # logits, before softmax
        x = layer(x)
        if not (layer is dense[-1] and fused):
            outputs[name] = x
    outputs["probabilities"] = x
    return {name: value.numpy() for name, value in outputs.items()}


def native_model(path: Path, threads: int):
    """The serving tf.function for the latency server (convert.native_server):
    ("tensorflow", version, prepare), where prepare(images) returns a no-argument call."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    serve = serving_function(load_model(path))

    def prepare(images):
        x = tf.constant(images)
        return lambda: serve(x)[onnx_utils.OUTPUT_NAME].numpy()

    return "tensorflow", tf.__version__, prepare


def canonical_weights(model) -> cw.Weights:
    """A trained train.keras_lenet model's weights in the canonical layout (OIHW, (out, in))."""
    import keras

    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    denses = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    arrays = {}
    for name, layer in zip(("conv1", "conv2"), convs):
        kernel, bias = layer.get_weights()
        arrays[f"{name}.kernel"] = cw.hwio_to_oihw(kernel)
        arrays[f"{name}.bias"] = bias
    for name, layer in zip(("dense1", "dense2", "dense3"), denses):
        kernel, bias = layer.get_weights()
        arrays[f"{name}.kernel"] = np.ascontiguousarray(kernel.T)  # (in, out) -> (out, in)
        arrays[f"{name}.bias"] = bias
    # 'same' with a 5x5 kernel and stride 1 pads 2 on every side, as PyTorch's padding=2.
    pads = tuple((l.kernel_size[0] - 1) // 2 if l.padding == "same" else 0 for l in convs)
    softmax = getattr(denses[-1].activation, "__name__", "") == "softmax"
    return cw.Weights(arrays, cw.Architecture(source="tf", flatten_order="HWC",
                                              conv_padding=pads,
                                              output="probabilities" if softmax else "logits"))


def export(artifacts: Path, data_dir: str | None = None) -> Path:
    """Write lenet5.onnx, reference.npz and test_data_set_0/ under ARTIFACTS/tf."""
    return reference.export_checkpoint(artifacts, "tf", "model.keras", data_dir,
                                       load_model=load_model, canonical_weights=canonical_weights,
                                       to_onnx=to_onnx, predict=predict,
                                       layer_outputs=layer_outputs)
