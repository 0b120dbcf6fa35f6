"""PyTorch exporter: model.pt -> lenet5.onnx (torch.onnx, dynamo) plus native references.

Imports torch only; runs in a process of its own.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
from torch import nn

from convert.export import reference
from train.core import contract as onnx_utils
from train.core import weights as cw
from train.torch_lenet import load_model, predict
from convert.export.layermap import attach_layer_map

# (canonical layer, index in LeNet5.features / .classifier): the state_dict keys.
TORCH_KEYS = {"conv1": "features.0", "conv2": "features.3", "dense1": "classifier.1",
              "dense2": "classifier.3", "dense3": "classifier.5"}


class WithSoftmax(nn.Module):
    """LeNet-5 logits -> probabilities: the graph's single output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(image), dim=1)


def to_onnx(model: nn.Module, history: dict):
    """Export with the dynamo exporter; apply the I/O contract and metadata."""
    example = torch.zeros(2, 1, 28, 28)
    # The exporter prints progress lines of its own; keep them out of the CLI's output.
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            WithSoftmax(model).eval(), (example,), dynamo=True, opset_version=onnx_utils.OPSET,
            input_names=[onnx_utils.INPUT_NAME], output_names=[onnx_utils.OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim(onnx_utils.BATCH_DIM)},), verbose=False)
    meta = onnx_utils.metadata(history, "torch", torch.__version__, "torch.onnx (dynamo)",
                               torch.__version__)
    proto = onnx_utils.apply_contract(program.model_proto, meta)
    attach_layer_map(proto, native_layout="NCHW")
    return proto


def layer_outputs(model: nn.Module, images) -> dict:
    """Native output of every layer of the layer map (validate.diagnose.layers), NCHW, for NCHW images.

    Names follow the leaf modules in order: Conv2d -> conv<i> (after its ReLU), pooling ->
    pool<i>, Flatten -> flatten, Linear -> fc<j> (after its ReLU; the last one, logits, has
    none); then probabilities = softmax(logits), as WithSoftmax computes them.
    """
    outputs: dict[str, torch.Tensor] = {}
    hooks, conv, fc, current = [], 0, 0, None
    for module in model.modules():
        if list(module.children()):
            continue
        if isinstance(module, nn.Conv2d):
            conv += 1
            current = f"conv{conv}"
        elif isinstance(module, nn.Linear):
            fc += 1
            current = f"fc{fc}"
        elif isinstance(module, (nn.AvgPool2d, nn.MaxPool2d)):
            current = f"pool{conv}"
        elif isinstance(module, nn.Flatten):
            current = "flatten"
        elif not isinstance(module, nn.ReLU):  # a ReLU's output replaces its layer's
            raise TypeError(f"layer_outputs: unexpected module {module!r}")

        def keep(_module, _inputs, output, name=current):
            outputs[name] = output.detach().clone()

        hooks.append(module.register_forward_hook(keep))
    try:
        with torch.inference_mode():
            logits = model.eval()(torch.from_numpy(images))
    finally:
        for hook in hooks:
            hook.remove()
    outputs[f"fc{fc}"] = logits
    outputs["probabilities"] = torch.softmax(logits, dim=1)
    return {name: value.numpy() for name, value in outputs.items()}


def native_model(path: Path, threads: int):
    """The native model (logits + softmax) for the latency server (convert.native_server):
    ("torch", version, prepare), where prepare(images) returns a no-argument call."""
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    torch.set_grad_enabled(False)  # this process only ever runs inference
    wrapped = WithSoftmax(load_model(path)).eval()

    def prepare(images):
        x = torch.from_numpy(images)
        return lambda: wrapped(x).numpy()

    return "torch", torch.__version__, prepare


def canonical_weights(model: nn.Module) -> cw.Weights:
    """A trained train.torch_lenet.LeNet5's weights in the canonical layout (PyTorch's own)."""
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    arrays = {}
    for name, key in TORCH_KEYS.items():
        arrays[f"{name}.kernel"] = state[f"{key}.weight"]  # OIHW / (out, in) already
        arrays[f"{name}.bias"] = state[f"{key}.bias"]
    pads = tuple(int(model.features[i].padding[0]) for i in (0, 3))
    return cw.Weights(arrays, cw.Architecture(source="torch", flatten_order="CHW",
                                              conv_padding=pads, output="logits"))


def export(artifacts: Path, data_dir: str | None = None) -> Path:
    """Write lenet5.onnx, reference.npz and test_data_set_0/ under ARTIFACTS/torch."""
    return reference.export_checkpoint(artifacts, "torch", "model.pt", data_dir,
                                       load_model=load_model, canonical_weights=canonical_weights,
                                       to_onnx=to_onnx, predict=predict,
                                       layer_outputs=layer_outputs)
