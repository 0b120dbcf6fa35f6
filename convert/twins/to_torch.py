"""PyTorch side of the conversion check: Keras-trained weights in a PyTorch twin, exported with
torch.onnx; and every lenet5.onnx brought back into PyTorch with onnx2torch.

Imports torch only (never tensorflow); runs in a process of its own. Weights arrive as the
framework-free canonical file (train.core.weights), never from a Keras object. The steps both
sides share are in convert.twins.common.
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
from convert.twins import common
from train.core.errors import first_line as _first_line
from train.core.fileio import sha256_file
from train import data
from train.torch_lenet import predict
from validate.compare.conversion import (CONVERSION, ONNX2TORCH_FILE, write_probabilities,
                                         write_status)

FRAMEWORK = "torch"


def _log(msg: str) -> None:
    print(f"[torch] {msg}", flush=True)


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
    return common.make_twin(artifacts, source, images, build=build_twin, predict=predict,
                            describe=lambda history, sha, arch, _model: twin_history(
                                history, sha, arch),
                            to_onnx=to_onnx, runs_in=f"torch {torch.__version__}",
                            made_by="PyTorch twin (weights.npz)")


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
    try:
        # The shipped file as it is: no patch here (the exporters write what consumers load).
        module = convert(onnx.load(str(path))).eval()
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
                     source_sha256=onnx_sha)
        return time.perf_counter() - start
    write_probabilities(out, probabilities, runs_in=f"torch {torch.__version__}",
                        made_by=f"onnx2torch {o2t_version}", source_sha256=onnx_sha,
                        seconds=time.perf_counter() - start)
    return time.perf_counter() - start


def run(artifacts: Path, data_dir: str | None = None, quick: bool = False) -> dict[str, float]:
    """Everything that needs torch: the PyTorch twin of each Keras-trained model, and the
    onnx2torch round trip of every lenet5.onnx, those not made already from the same files
    (common.pending). Returns seconds per stage.

    `quick` changes nothing: every conversion runs on all 10,000 test images, in seconds.
    """
    twins, trips = common.pending(artifacts, FRAMEWORK)
    if kept := common.up_to_date_line(artifacts, FRAMEWORK, twins, trips):
        _log(kept)
    images = data.to_float(data.load_test(data_dir)[0])
    times = common.make_twins(artifacts, twins, FRAMEWORK, images, make_twin, "PyTorch twin",
                              "torch.onnx", _log)
    for framework in trips:
        _log(f"onnx2torch: {framework}/lenet5.onnx -> PyTorch")
        times[f"{framework} onnx2torch"] = seconds = onnx2torch_roundtrip(
            artifacts, framework, images)
        _log(f"wrote {artifacts / framework / CONVERSION / ONNX2TORCH_FILE} ({seconds:.1f} s)")
    return times
