"""The PyTorch side of a model export: checkpoint, input signature, native outputs in batches,
per-module outputs (forward hooks), torch.onnx (dynamo) export, the module names the exporter
keeps in node metadata, and the weights file. Imports torch only; one framework per process.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from convert.byom.factory import fit_report
from train.core import contract
from train.core.errors import ToolkitError
from train.core.fileio import atomic_path
from train.core.spec import BATCH, DEFAULT_INPUT, InputSpec, ModelSpec
from train.torch_lenet import _load_reason

NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # node metadata: the module path of the node
DEFAULT_OUTPUT = "output"
WEIGHTS_FILE = "weights.pt"


def load_state(path: Path) -> dict:
    """A state_dict, loaded weights-only (never unpickling code); one line when the file is
    a pickled model or anything else."""
    if not path.is_file():
        raise ToolkitError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickled nn.Module, a corrupt file: the file's fault
        reason = _load_reason(exc)
        if "not a weights-only" in reason:
            raise ToolkitError(f"{path}: a pickled object, not a state_dict (checkpoints are "
                               "loaded weights_only=True; save model.state_dict())") from None
        raise ToolkitError(f"{path}: not a PyTorch checkpoint ({reason})") from None
    if isinstance(state, dict) and len(state) == 1 and next(iter(state)) in (
            "state_dict", "model", "model_state_dict"):
        state = next(iter(state.values()))  # the common {"state_dict": ...} wrapper
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ToolkitError(f"{path}: not a state_dict (a {type(state).__name__} of tensors "
                           "expected, name -> tensor)")
    return state


def load_checkpoint(model: nn.Module, path: Path, name: str) -> None:
    """Load the state_dict at `path` into `model`, strictly; one line if it does not fit."""
    state = load_state(path)
    problem = fit_report({k: tuple(v.shape) for k, v in model.state_dict().items()},
                         {k: tuple(v.shape) for k, v in state.items()})
    if problem:
        raise ToolkitError(f"{path}: does not fit {name}: {problem}")
    model.load_state_dict(state)


class TorchSide:
    """One PyTorch model, everything the export asks of it."""

    framework = "torch"
    exporter = "torch.onnx (dynamo)"
    weights_file = WEIGHTS_FILE
    native_layout = "NCHW"

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        self.model = model.eval()
        self.spec = spec
        self.output_names: list[str] = []

    def load_checkpoint(self, path: Path) -> None:
        load_checkpoint(self.model, path, self.spec.name)

    def versions(self) -> dict[str, str]:
        out = {"torch": torch.__version__, "onnx": onnx.__version__}
        with contextlib.suppress(ImportError):
            import torchvision

            out["torchvision"] = torchvision.__version__
        with contextlib.suppress(ImportError):
            import onnxscript

            out["onnxscript"] = onnxscript.__version__
        return out

    def signature(self, declared: tuple[InputSpec, ...], from_data: tuple | None
                  ) -> tuple[InputSpec, ...]:
        """The spec's inputs, else the data file's, else one image input with the first
        Conv2d's channels at Fashion-MNIST's 28 x 28 (--input-shape says otherwise)."""
        if declared:
            return declared
        if from_data:
            return from_data
        needed = _required_inputs(self.model)
        if len(needed) > 1:
            raise ToolkitError(f"{self.spec.origin}: {self.spec.name} takes {len(needed)} inputs "
                               f"({', '.join(needed)}); declare them ([[inputs]] in a TOML spec, "
                               "docs/byom.md) and give --inputs FILE.npz with one array each")
        conv = next((m for m in self.model.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is None:
            raise ToolkitError(f"{self.spec.origin}: cannot tell {self.spec.name}'s input "
                               "shape (no Conv2d); give --input-shape C,H,W or [[inputs]]")
        return (InputSpec(DEFAULT_INPUT, "float32", (BATCH, conv.in_channels, 28, 28), "NCHW",
                          "pixel / 255"),)

    def _named(self, result) -> dict[str, np.ndarray]:
        if isinstance(result, torch.Tensor):
            pairs = [(DEFAULT_OUTPUT, result)]
        elif isinstance(result, (tuple, list)):
            pairs = [(f"output_{k}", r) for k, r in enumerate(result)]
        elif isinstance(result, dict):
            pairs = list(result.items())
        else:
            raise ToolkitError(f"{self.spec.name} returned a {type(result).__name__}; "
                               "expected a tensor, a tuple of tensors or a dict of them")
        if not all(isinstance(v, torch.Tensor) for _, v in pairs):
            raise ToolkitError(f"{self.spec.name}: every output must be a tensor")
        self.output_names = [str(k) for k, _ in pairs]
        return {str(k): v.detach().cpu().numpy() for k, v in pairs}

    def serving(self):
        """The model as a PyTorch model is served: the module itself, eager, under
        inference_mode (what `run` does)."""
        return self.run

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named outputs of the native model on named inputs."""
        with torch.inference_mode():
            return self._named(self.model(*(torch.from_numpy(np.ascontiguousarray(a))
                                            for a in feeds.values())))

    def default_layers(self) -> list[str]:
        """Every named leaf module, in registration order."""
        return [n for n, m in self.model.named_modules() if n and not list(m.children())]

    def layer_outputs(self, feeds: dict[str, np.ndarray], layers: list[str]
                      ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Native outputs of `layers` (forward hooks; a module called twice keeps its last
        call, as the graph's last node in its scope does), and why others have none."""
        modules = dict(self.model.named_modules())
        outputs, reasons, hooks = {}, {}, []
        for name in layers:
            if name not in modules:
                raise ToolkitError(f"{self.spec.origin}: {self.spec.name} has no module "
                                   f"{name!r} (layers)")

            def keep(_m, _i, output, name=name):
                if isinstance(output, torch.Tensor):
                    outputs[name] = output.detach().clone().numpy()
                    reasons.pop(name, None)
                else:
                    outputs.pop(name, None)
                    reasons[name] = f"its output is a {type(output).__name__}, not one tensor"

            hooks.append(modules[name].register_forward_hook(keep))
        try:
            self.run(feeds)
        finally:
            for hook in hooks:
                hook.remove()
        for name in layers:
            if name not in outputs and name not in reasons:
                reasons[name] = "not called by forward()"
        return outputs, reasons

    def to_onnx(self, signature: tuple[InputSpec, ...], example: dict[str, np.ndarray]
                ) -> onnx.ModelProto:
        """torch.onnx.export (dynamo) with a dynamic batch axis on every input."""
        args = tuple(torch.from_numpy(np.ascontiguousarray(example[s.name][:2]))
                     for s in signature)
        batch = torch.export.Dim(BATCH)
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter's own progress lines
            program = torch.onnx.export(
                self.model, args, dynamo=True, opset_version=contract.OPSET,
                input_names=[s.name for s in signature], output_names=self.output_names,
                dynamic_shapes=tuple({0: batch} for _ in signature), verbose=False)
        proto = program.model_proto
        contract.relax_allowzero(proto)
        contract.strip_build_paths(proto)
        return proto

    def candidates(self, model: onnx.ModelProto, layer: str) -> list[str]:
        """Output tensors of the nodes the exporter put in `layer`'s scope, last first."""
        found = []
        for node in model.graph.node:
            scopes = next((p.value for p in node.metadata_props if p.key == NAME_SCOPES), None)
            if scopes is None:
                continue
            with contextlib.suppress(ValueError, SyntaxError):
                if layer in ast.literal_eval(scopes):
                    found.extend(node.output)
        return found[::-1]

    def save_weights(self, path: Path) -> None:
        """The exact weights exported (state_dict), atomically."""
        with atomic_path(path) as tmp:
            torch.save(self.model.state_dict(), tmp)


def _required_inputs(model: nn.Module) -> list[str]:
    """The positional parameters of model.forward without a default: the inputs it needs."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a forward Python cannot introspect: assume one input
        return []
    return [p.name for p in params if p.default is p.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
