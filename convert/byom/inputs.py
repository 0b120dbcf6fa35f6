"""The real inputs of an export (numpy only): Fashion-MNIST resized and replicated to an image
input, a .npz / .npy file, or a folder of images; random only when asked. Every array is
checked against the model's input signature before the model sees it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.core.errors import ToolkitError
from train.core.fileio import read_npz
from train.core.spec import DEFAULT_INPUT, FASHION_MNIST, DataSpec, InputSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Inputs:
    """The inputs, keyed by input name, and their labels (int64) when the source has them."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str            # what spec.json records: fashion-mnist, a path, or "random"

    @property
    def count(self) -> int:
        return len(next(iter(self.arrays.values())))


def _axis_weights(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling along one axis (half-pixel centres, edges clamped): low index,
    high index, weight of the high one."""
    centre = (np.arange(size_out, dtype=np.float64) + 0.5) * size_in / size_out - 0.5
    centre = np.clip(centre, 0, size_in - 1)
    low = np.floor(centre).astype(np.int64)
    high = np.minimum(low + 1, size_in - 1)
    return low, high, (centre - low).astype(np.float32)


def resize_bilinear(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 [N, H0, W0] -> [N, height, width], bilinear (no antialiasing)."""
    images = images.astype(np.float32, copy=False)
    if images.shape[1:] == (height, width):
        return images
    lo, hi, w = _axis_weights(images.shape[1], height)
    rows = images[:, lo, :] * (1 - w)[None, :, None] + images[:, hi, :] * w[None, :, None]
    lo, hi, w = _axis_weights(images.shape[2], width)
    return rows[:, :, lo] * (1 - w)[None, None, :] + rows[:, :, hi] * w[None, None, :]


def _image_size(spec: InputSpec) -> tuple[int, int, int]:
    """(channels, height, width) of an image input."""
    dims = spec.sample_shape()
    return dims if spec.layout == "NCHW" else (dims[2], dims[0], dims[1])


def to_layout(gray: np.ndarray, spec: InputSpec) -> np.ndarray:
    """float32 [N, H, W] in [0, 1] -> the input's channels and layout (gray replicated)."""
    channels, height, width = _image_size(spec)
    resized = resize_bilinear(gray, height, width)
    if spec.layout == "NCHW":
        return np.ascontiguousarray(np.repeat(resized[:, None], channels, axis=1))
    return np.ascontiguousarray(np.repeat(resized[:, :, :, None], channels, axis=3))


def _fashion_mnist(signature: tuple[InputSpec, ...], count: int, data_dir: str | None) -> Inputs:
    from train import data

    for spec in signature:
        if spec.layout == "none":
            raise ToolkitError(f"input {spec.name!r} is not an image (layout none): "
                               "fashion-mnist cannot fill it; give --inputs a .npz file")
    images, labels = data.load_test(data_dir)
    gray = images[:count].astype(np.float32) / np.float32(255.0)
    arrays = {s.name: to_layout(gray, s).astype(s.dtype) for s in signature}
    return Inputs(arrays, labels[:count].astype(np.int64), FASHION_MNIST)


def _from_file(path: Path, signature: tuple[InputSpec, ...], count: int) -> Inputs:
    if path.suffix == ".npy":
        if len(signature) != 1:
            raise ToolkitError(f"{path}: a .npy file holds one input; the model takes "
                               f"{len(signature)} ({', '.join(s.name for s in signature)}): "
                               "use a .npz keyed by input name")
        try:
            array = np.load(path, allow_pickle=False, mmap_mode="r")
        except Exception as exc:  # the file is at fault
            raise ToolkitError(f"{path}: not a readable .npy array ({exc})") from None
        return Inputs({signature[0].name: np.array(array[:count])}, None, str(path))
    found = read_npz(path)
    missing = [s.name for s in signature if s.name not in found]
    if missing:
        raise ToolkitError(f"{path}: no array for input {', '.join(map(repr, missing))} "
                           f"(has {', '.join(sorted(found)) or 'nothing'})")
    labels = found.get("labels")
    if labels is not None:
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ToolkitError(f"{path}: labels must be a 1-D array of integer class ids, "
                               f"got {labels.dtype} {list(labels.shape)}")
        labels = labels[:count].astype(np.int64)
    return Inputs({s.name: found[s.name][:count] for s in signature}, labels, str(path))


def _from_folder(folder: Path, signature: tuple[InputSpec, ...], count: int) -> Inputs:
    try:
        from PIL import Image
    except ImportError:
        raise ToolkitError(f"{folder}: reading a folder of images needs Pillow "
                           "(pip install pillow); or give a .npz file") from None
    if len(signature) != 1 or signature[0].layout == "none":
        raise ToolkitError(f"{folder}: a folder of images fills one image input; the model "
                           f"takes {', '.join(s.name for s in signature)}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if not files:
        raise ToolkitError(f"{folder}: no PNG or JPEG images there")
    spec = signature[0]
    channels, height, width = _image_size(spec)
    mode = "L" if channels == 1 else "RGB"
    pixels = []
    for path in files:
        try:
            with Image.open(path) as image:
                pixels.append(np.asarray(image.convert(mode).resize((width, height),
                                                                    Image.BILINEAR)))
        except OSError as exc:
            raise ToolkitError(f"{path}: not a readable image ({exc})") from None
    array = np.stack(pixels).astype(np.float32) / np.float32(255.0)
    array = array[:, None] if mode == "L" else array.transpose(0, 3, 1, 2)
    if spec.layout == "NHWC":
        array = array.transpose(0, 2, 3, 1)
    classes = sorted({p.parent.name for p in files})
    labels = None
    if all(p.parent != folder for p in files) and len({p.parent for p in files}) == len(classes):
        labels = np.array([classes.index(p.parent.name) for p in files], dtype=np.int64)
    return Inputs({spec.name: np.ascontiguousarray(array, dtype=spec.dtype)}, labels,
                  str(folder))


def random_inputs(signature: tuple[InputSpec, ...], count: int, seed: int) -> Inputs:
    """Uniform [0, 1) floats, integers in [0, 10), from a seeded generator (asked for only)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for s in signature:
        shape = (count, *s.sample_shape())
        if np.dtype(s.dtype).kind in "iub":
            arrays[s.name] = rng.integers(0, 2 if s.dtype == "bool" else 10,
                                          shape).astype(s.dtype)
        else:
            arrays[s.name] = rng.random(shape, dtype=np.float64).astype(s.dtype)
    return Inputs(arrays, None, "random")


def check(inputs: Inputs, signature: tuple[InputSpec, ...]) -> None:
    """Every input present with the signature's dtype and sample shape, all of one count."""
    for s in signature:
        got = inputs.arrays[s.name]
        if got.dtype != np.dtype(s.dtype) or tuple(got.shape[1:]) != s.sample_shape():
            shape = ", ".join(map(str, ("N", *got.shape[1:])))
            want = ", ".join(map(str, ("batch", *s.sample_shape())))
            raise ToolkitError(f"{inputs.source}: input {s.name!r} is {got.dtype} [{shape}]; "
                               f"the model takes {s.dtype} [{want}]")
    counts = {len(a) for a in inputs.arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise ToolkitError(f"{inputs.source}: inputs of different or zero lengths {sorted(counts)}")
    if inputs.labels is not None and len(inputs.labels) != inputs.count:
        raise ToolkitError(f"{inputs.source}: {len(inputs.labels)} labels for "
                           f"{inputs.count} inputs")


def read(data: DataSpec, signature: tuple[InputSpec, ...], seed: int,
         data_dir: str | None = None) -> Inputs:
    """The export's inputs, checked against the signature."""
    if data.random:
        inputs = random_inputs(signature, data.count, seed)
    elif data.source == FASHION_MNIST:
        inputs = _fashion_mnist(signature, data.count, data_dir)
    else:
        path = Path(data.source)
        if path.is_dir():
            inputs = _from_folder(path, signature, data.count)
        elif not path.is_file():
            raise ToolkitError(f"{path}: no such inputs file or folder")
        elif path.suffix not in (".npz", ".npy"):
            raise ToolkitError(f"{path}: inputs must be fashion-mnist, a .npz or .npy file, "
                               "or a folder of images")
        else:
            inputs = _from_file(path, signature, data.count)
    check(inputs, signature)
    return inputs


def file_signature(data: DataSpec) -> tuple[InputSpec, ...] | None:
    """The inputs a .npy / .npz data file implies (names, dtypes, sample shapes), for a
    PyTorch model whose spec declares none; None for any other source."""
    path = Path(data.source)
    if data.random or path.suffix not in (".npy", ".npz") or not path.is_file():
        return None
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False, mmap_mode="r")
        except Exception as exc:  # the file is at fault
            raise ToolkitError(f"{path}: not a readable .npy array ({exc})") from None
        found = {DEFAULT_INPUT: array}
    else:
        found = {k: v for k, v in read_npz(path).items() if k != "labels"}
    return tuple(InputSpec(name, str(a.dtype), ("batch", *a.shape[1:]),
                           "NCHW" if a.ndim == 4 else "none") for name, a in found.items())
