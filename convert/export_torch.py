"""PyTorch exporter: model.pt -> lenet5.onnx (torch.onnx, dynamo) plus native references.

Imports torch only; runs in a process of its own.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from convert import native, onnx_utils
from train.torch_lenet import load_model, predict
from validate.latency import measure


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
    return onnx_utils.apply_contract(program.model_proto, meta)


def native_latency(artifacts: Path, data_dir: str | None, threads: int,
                   quick: bool) -> list[dict]:
    """Time the native model (logits + softmax) at each batch size with `threads` threads."""
    torch.set_num_threads(threads)
    model = load_model(artifacts / "torch" / "model.pt")
    wrapped = WithSoftmax(model).eval()
    images = torch.from_numpy(native.latency_images(data_dir))
    results = []
    with torch.inference_mode():
        for batch in native.BATCH_SIZES:
            x = images[:batch]
            lat = measure(lambda: wrapped(x).numpy(), runtime="torch", provider="cpu",
                          batch_size=batch, threads=threads, quick=quick)
            results.append(asdict(lat))
    return results


def export(artifacts: Path, data_dir: str | None = None, quick: bool = False) -> Path:
    """Write lenet5.onnx, reference.npz and test_data_set_0/ under ARTIFACTS/torch."""
    folder = artifacts / "torch"
    model = load_model(folder / "model.pt")
    onnx_model = to_onnx(model, native.read_history(folder))
    return native.write_export(artifacts, "torch", onnx_model, lambda x: predict(model, x),
                               data_dir, quick)
