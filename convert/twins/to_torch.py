"""PyTorch side of the conversion check: Keras-trained weights in a PyTorch twin, exported with
torch.onnx; and every lenet5.onnx brought back into PyTorch with onnx2torch.

Imports torch only (never tensorflow); runs in a process of its own. Weights arrive as the
framework-free canonical file (train.core.weights), never from a Keras object.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from train.core import weights as cw
from convert.export.from_torch import TORCH_KEYS, to_onnx
from train.core.fileio import sha256_file
from train.core.history import read_history
from train import data
from train.torch_lenet import predict
from validate.compare.conversion import (CONVERSION, ONNX2TORCH_FILE, TWIN_NATIVE, TWIN_ONNX,
                                 frameworks_present, save_twin, write_probabilities, write_status)

FRAMEWORK = "torch"


def _log(msg: str) -> None:
    print(f"[torch] {msg}", flush=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


class TwinLeNet5(nn.Module):
    """LeNet-5 with the paddings and flatten width of the given architecture; returns logits.

    Same module names as train.torch_lenet.LeNet5, so the exporters treat both alike.
    """

    def __init__(self, arch: cw.Architecture) -> None:
        super().__init__()
        p1, p2 = arch.conv_padding
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5, padding=p1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5, padding=p2), nn.ReLU(), nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(arch.features, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_twin(weights: cw.Weights) -> TwinLeNet5:
    """The PyTorch twin of canonical weights: every layout difference converted here."""
    arch = weights.architecture
    state = {}
    for name, key in TORCH_KEYS.items():
        kernel = weights[f"{name}.kernel"]  # conv OIHW and dense (out, in): PyTorch's layout
        if name == "dense1":
            # nn.Flatten on NCHW gives CHW order; a Keras source flattened NHWC (HWC).
            kernel = cw.reorder_flatten(kernel, arch.feature_shape, arch.flatten_order, "CHW")
        state[f"{key}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        state[f"{key}.bias"] = torch.from_numpy(weights[f"{name}.bias"])
    model = TwinLeNet5(arch)
    model.load_state_dict(state)
    return model.eval()


def twin_history(history: dict, weights_sha: str, arch: cw.Architecture) -> dict:
    """The trained model's history, re-described for its PyTorch twin (ONNX metadata)."""
    p1, p2 = arch.conv_padding
    return {**history, "architecture": (
        f"PyTorch twin of the {arch.source} LeNet-5: Conv(1->6, k5, pad {p1}) ReLU AvgPool2, "
        f"Conv(6->16, k5, pad {p2}) ReLU AvgPool2, Linear {arch.features}->120 ReLU, 120->84 "
        f"ReLU, 84->10, softmax; weights.npz sha256 {weights_sha}")}


def make_twin(artifacts: Path, source: str, images: np.ndarray) -> float:
    """ARTIFACTS/SOURCE/weights.npz -> PyTorch twin -> twin.onnx (torch.onnx), twin_native.npz."""
    start = time.perf_counter()
    folder = artifacts / source
    path = folder / cw.FILE
    weights = cw.load(path)
    weights_sha = sha256_file(path)
    model = build_twin(weights)
    probabilities = predict(model, images)
    history = twin_history(read_history(folder), weights_sha, weights.architecture)
    save_twin(folder, to_onnx(model, history), probabilities, weights_sha,
              f"torch {torch.__version__}", "PyTorch twin (weights.npz)",
              time.perf_counter() - start)
    return time.perf_counter() - start


def relax_allowzero(model: onnx.ModelProto) -> list[str]:
    """Clear Reshape's allowzero where the shape is a constant without 0; return what changed.

    torch.onnx (onnxscript's torchlib) sets allowzero=1 on every Reshape; onnx2torch 1.5.15
    refuses the attribute. With no 0 in the target shape the attribute has no effect (ONNX
    Reshape spec), so clearing it there leaves the function unchanged; any other case is left
    for onnx2torch to refuse.
    """
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    changed = []
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        for attr in node.attribute:
            shape = consts.get(node.input[1])
            if attr.name == "allowzero" and attr.i == 1 and shape is not None \
                    and not (shape == 0).any():
                attr.i = 0
                changed.append(f"{node.name or node.output[0]} (shape {shape.tolist()})")
    return changed


def onnx2torch_roundtrip(artifacts: Path, framework: str, images: np.ndarray) -> float:
    """ARTIFACTS/FRAMEWORK/lenet5.onnx -> PyTorch (onnx2torch) -> probabilities on IMAGES."""
    start = time.perf_counter()
    path = artifacts / framework / "lenet5.onnx"
    out = artifacts / framework / CONVERSION / ONNX2TORCH_FILE
    onnx_sha = sha256_file(path)
    try:
        from importlib.metadata import version

        from onnx2torch import convert
        o2t_version = version("onnx2torch")
    except ImportError as exc:
        write_status(out, f"unavailable: onnx2torch is not installed ({exc}); "
                          "pip install onnx2torch==1.5.15", source_sha256=onnx_sha)
        return time.perf_counter() - start
    note = ""
    try:
        proto = onnx.load(str(path))  # a damaged file is this row's failure too
        changed = relax_allowzero(proto)
        note = (f"Reshape allowzero=1 -> 0 where the shape has no 0 (same function; onnx2torch "
                f"refuses allowzero=1): {', '.join(changed)}") if changed else ""
        module = convert(proto).eval()
        outs = []
        with torch.inference_mode(), warnings.catch_warnings():
            # onnx2torch 1.5.15's Slice indexes with a list (deprecated in torch; same result).
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence",
                                    category=UserWarning)
            for i in range(0, len(images), 1000):
                outs.append(module(torch.from_numpy(images[i:i + 1000])).numpy())
        probabilities = np.concatenate(outs)
    except Exception as exc:  # the converter's failure is this row's result, not a crash
        write_status(out, f"failed: onnx2torch {o2t_version}: {_first_line(exc)}",
                     source_sha256=onnx_sha, note=note)
        return time.perf_counter() - start
    write_probabilities(out, probabilities, runs_in=f"torch {torch.__version__}",
                        made_by=f"onnx2torch {o2t_version}", source_sha256=onnx_sha,
                        seconds=time.perf_counter() - start, note=note)
    return time.perf_counter() - start


def run(artifacts: Path, data_dir: str | None = None, quick: bool = False) -> dict[str, float]:
    """Everything that needs torch: the PyTorch twin of each Keras-trained model, and the
    onnx2torch round trip of every lenet5.onnx. Returns seconds per stage.

    `quick` changes nothing: every conversion runs on all 10,000 test images, in seconds.
    """
    present = frameworks_present(artifacts)
    images = data.to_float(data.load_test(data_dir)[0])
    times: dict[str, float] = {}
    for source in present:
        if source == FRAMEWORK:
            continue
        _log(f"{source}-trained weights -> PyTorch twin -> torch.onnx")
        times[f"{source} -> PyTorch twin + torch.onnx"] = seconds = make_twin(
            artifacts, source, images)
        _log(f"wrote {artifacts / source / CONVERSION / TWIN_ONNX} and {TWIN_NATIVE} "
             f"({seconds:.1f} s)")
    for framework in present:
        _log(f"onnx2torch: {framework}/lenet5.onnx -> PyTorch")
        times[f"{framework} onnx2torch"] = seconds = onnx2torch_roundtrip(
            artifacts, framework, images)
        _log(f"wrote {artifacts / framework / CONVERSION / ONNX2TORCH_FILE} ({seconds:.1f} s)")
    return times
