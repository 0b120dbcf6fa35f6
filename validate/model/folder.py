"""A model export folder (docs/byom.md, "What an export writes") read back and checked before
any runtime sees it: spec.json, model.onnx, inputs.npz, reference.npz, labels.npy, layers.npz,
test_data_set_*. Every problem is one line naming the file (ArtifactError, exit 2).
numpy + onnx only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from train.core.errors import ArtifactError
from train.core.fileio import read_npz
from train.core.spec import SPEC_FILE, read_spec_json
from validate import artifacts as art
from validate.sandbox import Limits

MODEL = "model.onnx"
INPUTS, REFERENCE, LABELS, LAYERS = "inputs.npz", "reference.npz", "labels.npy", "layers.npz"


def is_spec_folder(folder: Path) -> bool:
    """Does FOLDER hold a model export (spec.json beside model.onnx)?"""
    return (folder / SPEC_FILE).is_file() and (folder / MODEL).is_file()


def spec_folders(parent: Path) -> list[Path]:
    """The model exports directly under PARENT, by name."""
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.is_dir() and is_spec_folder(p))


@dataclass
class SpecFolder:
    """One export, loaded: the spec, the checked graph, the real inputs, the native outputs."""

    folder: Path
    doc: dict                          # spec.json
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]       # inputs.npz, keyed by ONNX input name
    reference: dict[str, np.ndarray]   # reference.npz, keyed by ONNX output name
    labels: np.ndarray | None
    sets: list[art.TestDataSet]

    @property
    def path(self) -> Path:
        return self.folder / MODEL

    @property
    def count(self) -> int:
        return len(next(iter(self.feeds.values())))

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.model.graph.output]

    def first(self, n: int) -> dict[str, np.ndarray]:
        """The first N inputs, contiguous (what a runner is fed)."""
        return {k: np.ascontiguousarray(v[:n]) for k, v in self.feeds.items()}


def _npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; export the model again (python -m convert "
                            "export MODEL_SPEC --out DIR)")
    return read_npz(path)


def _check_inputs(folder: Path, model: onnx.ModelProto, feeds: dict) -> int:
    """inputs.npz holds every graph input, with its element type and one batch length."""
    graph = art.graph_inputs(model)
    if set(feeds) != set(graph):
        raise ArtifactError(f"{folder / INPUTS}: arrays {sorted(feeds)}, but the graph's inputs "
                            f"are {sorted(graph)}")
    counts = {len(v) if v.ndim else 0 for v in feeds.values()}
    if len(counts) != 1 or 0 in counts:
        raise ArtifactError(f"{folder / INPUTS}: the inputs do not have one batch length "
                            f"({', '.join(f'{k} {list(v.shape)}' for k, v in feeds.items())})")
    for name, (elem, shape) in graph.items():
        want = onnx.helper.tensor_dtype_to_np_dtype(elem) if elem else None
        got = feeds[name]
        if want is not None and got.dtype != want:
            raise ArtifactError(f"{folder / INPUTS}: {name} is {got.dtype}, the graph takes "
                                f"{want}")
        fixed = [(i, d) for i, d in enumerate(shape) if isinstance(d, int) and d > 0 and i > 0]
        if len(shape) != got.ndim or any(got.shape[i] != d for i, d in fixed):
            raise ArtifactError(f"{folder / INPUTS}: {name} has shape {list(got.shape)}, the "
                                f"graph takes {list(shape)}")
    return counts.pop()


def _check_reference(folder: Path, names: list[str], reference: dict, count: int) -> None:
    missing = [n for n in names if n not in reference]
    if missing:
        raise ArtifactError(f"{folder / REFERENCE}: no array for output "
                            f"{', '.join(missing)} (it has {sorted(reference)})")
    short = [n for n in names if reference[n].ndim == 0 or len(reference[n]) != count]
    if short:
        raise ArtifactError(f"{folder / REFERENCE}: {', '.join(short)} does not hold one row "
                            f"per input ({count} inputs)")


def _labels(folder: Path, count: int) -> np.ndarray | None:
    path = folder / LABELS
    if not path.is_file():
        return None
    try:
        labels = np.load(path, allow_pickle=False)
    except Exception as exc:  # a damaged file is the file's fault
        raise ArtifactError(f"{path}: not a readable .npy file ({art._first_line(exc)})"
                            ) from None
    if labels.shape != (count,) or labels.dtype.kind not in "iu":
        raise ArtifactError(f"{path}: {labels.dtype} {list(labels.shape)}, expected integer "
                            f"class ids [{count}]")
    return labels.astype(np.int64)


def load(folder: Path) -> SpecFolder:
    """The export in FOLDER, every file checked against spec.json and the graph."""
    doc = read_spec_json(folder)
    model = art.load_model(folder / MODEL)
    feeds = _npz(folder / INPUTS)
    count = _check_inputs(folder, model, feeds)
    outputs = [o.name for o in model.graph.output]
    reference = _npz(folder / REFERENCE)
    _check_reference(folder, outputs, reference, count)
    return SpecFolder(folder, doc, model, feeds, {n: reference[n] for n in outputs},
                      _labels(folder, count), art.test_data_sets(folder / MODEL, model))


def native_layers(folder: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """layers.npz: the indices of the diagnosis inputs and each mapped layer's native output."""
    arrays = _npz(folder / LAYERS)
    if "index" not in arrays:
        raise ArtifactError(f"{folder / LAYERS}: no 'index' array; export again")
    return (arrays["index"].astype(np.int64),
            {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("layer/")})


# Containment grows with the model: runtimes each hold a copy of the weights (the float64
# reference twice their size, the browser and Node.js their own), so the memory default gets
# MEMORY_PER_MIB MiB per MiB of model.onnx above the LeNet default, and time TIME_PER_MIB
# seconds per MiB. LeNet-5 (0.2 MiB) keeps the defaults; resnet18 (45 MiB) gets 5.4 GiB and
# 45 min; a 100 MiB model 7 GiB and 1 h.
MEMORY_PER_MIB, TIME_PER_MIB = 30, 20.0


def scaled_limits(limits: Limits, model_bytes: int) -> Limits:
    """The limits for one model: a limit left at its default grows with the model file's
    size; a limit the user set (any other value) is kept."""
    base, mib = Limits(), model_bytes / (1 << 20)
    memory = (limits.memory_mb if limits.memory_mb != base.memory_mb
              else base.memory_mb + int(MEMORY_PER_MIB * mib))
    timeout = (limits.timeout_s if limits.timeout_s != base.timeout_s
               else base.timeout_s + round(TIME_PER_MIB * mib))
    return Limits(memory_mb=memory, timeout_s=float(timeout))
