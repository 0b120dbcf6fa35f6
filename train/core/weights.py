"""The canonical weights file: one trained LeNet-5's weights, framework-free (numpy only).

Weights cross from one framework's process to the other's only through this file,
`ARTIFACTS/<fw>/weights.npz`, written at export. One layout for both frameworks, so that each
twin builder converts from one known layout and states every conversion it makes:

    key            shape                 layout
    conv1.kernel   [6, 1, 5, 5]          OIHW (out channels, in channels, kernel H, kernel W)
    conv1.bias     [6]
    conv2.kernel   [16, 6, 5, 5]         OIHW
    conv2.bias     [16]
    dense1.kernel  [120, C*H*W]          (out, in); `in` in the source's flatten order
    dense1.bias    [120]
    dense2.kernel  [84, 120]             (out, in)
    dense2.bias    [84]
    dense3.kernel  [10, 84]              (out, in)
    dense3.bias    [10]

and the architecture facts (scalars and small int arrays in the same file):

    layout_version  1
    source          "torch" or "tf": the framework that trained these weights
    flatten_order   "CHW" (PyTorch: NCHW flatten) or "HWC" (Keras: NHWC flatten): the order
                    of dense1's inputs, i.e. of the feature map flattened by the source
    conv_padding    [pad1, pad2]: symmetric zero padding of each 5x5 conv, stride 1
                    (PyTorch LeNet: [2, 0]; Keras LeNet, both 'same': [2, 2])
    feature_shape   [C, H, W] of the map fed to Flatten ([16, 5, 5] -> 400 inputs for the
                    PyTorch LeNet, [16, 7, 7] -> 784 for the Keras one)
    output          "logits" (PyTorch: softmax added at export) or "probabilities" (Keras:
                    softmax in the last layer); either way probabilities = softmax(dense3)

PyTorch's own layout is the canonical one (OIHW, (out, in)); the Keras side transposes HWIO
and (in, out) on the way in and out. Neither side may reorder dense1: only `flatten_order`
says what the columns mean, and the twin builder permutes them for its own flatten.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.core.errors import ArtifactError
from train.core.fileio import atomic_open, read_npz

LAYOUT_VERSION = 1
FILE = "weights.npz"
KERNEL_SIZE = 5
IMAGE_SIZE = 28
FLATTEN_ORDERS = ("CHW", "HWC")
OUTPUTS = ("logits", "probabilities")
# (name, out, in) of each layer; dense1's `in` depends on the architecture (None).
LAYERS = (("conv1", 6, 1), ("conv2", 16, 6), ("dense1", 120, None), ("dense2", 84, 120),
          ("dense3", 10, 84))


@dataclass(frozen=True)
class Architecture:
    """The facts a twin builder needs besides the arrays."""

    source: str                      # framework that trained the weights: "torch" or "tf"
    flatten_order: str               # "CHW" or "HWC": order of dense1's inputs
    conv_padding: tuple[int, int]    # symmetric padding of conv1, conv2 (stride 1, 5x5)
    output: str                      # "logits" or "probabilities"

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the feature map that is flattened into dense1."""
        size = IMAGE_SIZE
        for pad in self.conv_padding:  # conv (stride 1) then AvgPool2
            size = (size + 2 * pad - KERNEL_SIZE + 1) // 2
        return (16, size, size)

    @property
    def features(self) -> int:
        """Inputs of dense1."""
        c, h, w = self.feature_shape
        return c * h * w


@dataclass(frozen=True)
class Weights:
    """Arrays in the canonical layout (module docstring) plus the architecture."""

    arrays: dict[str, np.ndarray]
    architecture: Architecture

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]


def expected_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Every array's canonical shape for this architecture."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, out, inp in LAYERS:
        if name.startswith("conv"):
            shapes[f"{name}.kernel"] = (out, inp, KERNEL_SIZE, KERNEL_SIZE)
        else:
            shapes[f"{name}.kernel"] = (out, arch.features if inp is None else inp)
        shapes[f"{name}.bias"] = (out,)
    return shapes


def check(weights: Weights, where: str) -> Weights:
    """Raise ArtifactError (one line naming `where`) unless shapes and values are sound."""
    arch = weights.architecture
    if arch.flatten_order not in FLATTEN_ORDERS:
        raise ArtifactError(f"{where}: flatten_order {arch.flatten_order!r} is not one of "
                            f"{', '.join(FLATTEN_ORDERS)}")
    if arch.output not in OUTPUTS:
        raise ArtifactError(f"{where}: output {arch.output!r} is not one of {', '.join(OUTPUTS)}")
    # 0 or 2 for a 5x5 kernel: what both frameworks' LeNet-5 layers express ('valid', 'same').
    if len(arch.conv_padding) != 2 or not all(p in (0, 2) for p in arch.conv_padding):
        raise ArtifactError(f"{where}: conv_padding {list(arch.conv_padding)} is not two "
                            "paddings of 0 or 2")
    for key, shape in expected_shapes(arch).items():
        if key not in weights.arrays:
            raise ArtifactError(f"{where}: no array {key!r}")
        array = weights.arrays[key]
        if tuple(array.shape) != shape:
            raise ArtifactError(f"{where}: {key} has shape {list(array.shape)}, expected "
                                f"{list(shape)} for conv_padding {list(arch.conv_padding)}")
        if not np.isfinite(array).all():
            raise ArtifactError(f"{where}: {key} holds NaN or infinite values")
    return weights


def save(path: Path, weights: Weights) -> None:
    """Write the canonical file atomically (float32 arrays, architecture beside them)."""
    check(weights, str(path))
    arch = weights.architecture
    with atomic_open(path) as handle:
        np.savez(handle,
                 layout_version=np.array(LAYOUT_VERSION),
                 source=np.array(arch.source),
                 flatten_order=np.array(arch.flatten_order),
                 conv_padding=np.array(arch.conv_padding, dtype=np.int64),
                 feature_shape=np.array(arch.feature_shape, dtype=np.int64),
                 output=np.array(arch.output),
                 **{k: np.ascontiguousarray(v, dtype=np.float32)
                    for k, v in weights.arrays.items()})


def load(path: Path) -> Weights:
    """Read and check a canonical file; ArtifactError (one line) if it is missing or unsound."""
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; run `python -m convert export "
                            f"{path.parent.name}` first (export writes it)")
    files = read_npz(path)
    missing = [k for k in ("layout_version", "source", "flatten_order", "conv_padding",
                           "output") if k not in files]
    if missing:
        raise ArtifactError(f"{path}: not a canonical weights file (no {', '.join(missing)})")
    try:
        version = int(files["layout_version"])
        arch = Architecture(source=str(files["source"]),
                            flatten_order=str(files["flatten_order"]),
                            conv_padding=tuple(int(p) for p in np.atleast_1d(
                                files["conv_padding"])),
                            output=str(files["output"]))
        arrays = {k: v.astype(np.float32) for k, v in files.items() if "." in k}
    except (TypeError, ValueError) as exc:  # a field of the wrong kind: the file's fault
        raise ArtifactError(f"{path}: not a canonical weights file ({type(exc).__name__}: "
                            f"{str(exc)[:120]})") from None
    if version != LAYOUT_VERSION:
        raise ArtifactError(f"{path}: layout_version {version}, this toolkit reads "
                            f"{LAYOUT_VERSION}; export again")
    return check(Weights(arrays, arch), str(path))


# Layout conversions, shared by both twin builders (numpy only, so tests can check them).

def oihw_to_hwio(kernel: np.ndarray) -> np.ndarray:
    """PyTorch conv kernel -> Keras/TF conv kernel."""
    return np.ascontiguousarray(kernel.transpose(2, 3, 1, 0))


def hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
    """Keras/TF conv kernel -> PyTorch conv kernel."""
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def reorder_flatten(kernel: np.ndarray, feature_shape: tuple[int, int, int], source: str,
                    target: str) -> np.ndarray:
    """Permute a dense (out, in) kernel's inputs from one flatten order to another.

    Column j of the kernel multiplies feature j of the flattened map. A CHW flatten puts
    (c, h, w) at c*H*W + h*W + w; an HWC flatten puts it at h*W*C + w*C + c. Copying the
    kernel without this permutation gives a model that runs, with the right shapes, and
    computes something else (the classic cross-framework bug).
    """
    if source == target:
        return kernel
    c, h, w = feature_shape
    axes = {"CHW": (c, h, w), "HWC": (h, w, c)}
    if source not in axes or target not in axes:
        raise ValueError(f"flatten orders must be CHW or HWC, got {source} -> {target}")
    out = kernel.shape[0]
    grid = kernel.reshape(out, *axes[source])
    perm = (0, 3, 1, 2) if (source, target) == ("HWC", "CHW") else (0, 2, 3, 1)
    return np.ascontiguousarray(grid.transpose(perm).reshape(out, -1))
