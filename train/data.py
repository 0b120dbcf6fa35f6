"""Fashion-MNIST: find, fetch, verify (sha256) and parse the four official IDX gzip files.

Framework-free (numpy only), so the PyTorch side, the Keras side and the validator all read
exactly the same arrays.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.core.errors import DataError
from train.core.dataset import CLASS_NAMES, DATASET_SHA256, FILES  # noqa: F401  (re-exported)
from train.core.fileio import atomic_open, sha256_file

SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
ENV_DIR = "FASHION_MNIST_DIR"
ENV_URL = "FASHION_MNIST_URL"  # a mirror; files are verified by sha256 whatever the source
_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


@dataclass(frozen=True)
class FashionMNIST:
    """The four arrays: images uint8 [N, 28, 28], labels uint8 [N]."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    folder: Path


def default_cache_dir() -> Path:
    """Where the files go when no folder is given: `$XDG_CACHE_HOME/lenet5-onnx/fashion-mnist`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lenet5-onnx" / "fashion-mnist"


def _local_copies() -> list[Path]:
    """Folders that may already hold the official files, checked before any download."""
    root = Path(__file__).resolve().parent.parent
    keras_home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    return [
        keras_home / "datasets" / "fashion-mnist",      # keras.datasets.fashion_mnist's cache
        root.parent / "shared" / "datasets" / "fashion-mnist",  # a datasets folder beside the clone
    ]


def _progress(msg: str, final: bool = False) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r" + msg + ("\n" if final else ""))
    else:
        sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def _is_official(copy: Path) -> bool:
    """Is a local copy (another tool's file: never removed) the official file?"""
    return sha256_file(copy) == FILES[copy.name]


def _verify(path: Path) -> None:
    """Check a file's sha256; a bad file is removed and reported as one line."""
    expected = FILES[path.name]
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror})") from None
    if actual == expected:
        return
    try:
        path.unlink()
        fate = "removed it; run again to fetch a fresh copy"
    except OSError as exc:
        fate = f"could not remove it ({exc.strerror}); delete or replace it"
    raise DataError(
        f"{path}: sha256 mismatch (got {actual[:16]}…, expected {expected[:16]}…): "
        f"corrupt or truncated; {fate}"
    )


def download(name: str, folder: Path, base_url: str | None = None) -> Path:
    """Fetch one official file into `folder` atomically, showing progress; verify it."""
    base_url = base_url or os.environ.get(ENV_URL) or OFFICIAL_URL
    url = base_url.rstrip("/") + "/" + name
    dest = folder / name
    expected = FILES[name]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=60) as response, atomic_open(dest) as out:
            total = int(response.headers.get("Content-Length") or 0)
            digest, done, shown = hashlib.sha256(), 0, -1
            while block := response.read(1 << 16):
                out.write(block)
                digest.update(block)
                done += len(block)
                pct = int(100 * done / total) if total else 0
                step = pct if sys.stderr.isatty() else pct // 25 * 25
                if step != shown:
                    shown = step
                    _progress(f"downloading {name}: {pct:3d}% ({done / 1e6:.1f} MB)")
            if digest.hexdigest() != expected:
                # Raising inside atomic_open discards the temporary file: no bad file is kept.
                raise DataError(
                    f"{dest}: downloaded from {url} but sha256 is {digest.hexdigest()[:16]}…, "
                    f"expected {expected[:16]}…; nothing was kept"
                )
        _progress(f"downloading {name}: done ({done / 1e6:.1f} MB)", final=True)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise DataError(f"{dest}: missing, and downloading {url} failed: {reason}") from None
    return dest


def ensure_files(data_dir: str | os.PathLike | None = None) -> Path:
    """Return a folder holding the four verified files, fetching what is missing.

    `data_dir` (or $FASHION_MNIST_DIR) is used alone when given; otherwise the default cache
    folder, filled from a local copy where one exists, else from the official source.
    """
    given = data_dir or os.environ.get(ENV_DIR)
    folder = Path(given).expanduser() if given else default_cache_dir()
    try:
        existed = folder.exists()
        if existed and not folder.is_dir():
            raise DataError(f"{folder}: not a folder")
        present = {name: (folder / name).is_file() for name in FILES}
    except OSError as exc:  # a folder this user may not list
        raise DataError(f"{folder}: cannot read it ({exc.strerror or exc})") from None
    try:
        _fill(folder, present, bool(given))
    except DataError:
        if not existed:  # a mistyped folder is not left behind, empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return folder


def _fill(folder: Path, present: dict[str, bool], given: bool) -> None:
    """Verify the files present; copy or download the others (see ensure_files)."""
    for name in FILES:
        path = folder / name
        if present[name]:
            _verify(path)
            continue
        if not given:
            copy = next((d / name for d in _local_copies() if (d / name).is_file()), None)
            if copy is not None and _is_official(copy):
                with atomic_open(path) as out, open(copy, "rb") as src:
                    shutil.copyfileobj(src, out)
                continue
        download(name, folder)


def parse_idx(data: bytes, name: str, magic: int) -> np.ndarray:
    """Parse one decompressed IDX file, checking magic number and size; uint8 array."""
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found is not None and found != magic:
        raise DataError(f"{name}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    if len(data) < header:
        raise DataError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(
            f"{name}: IDX dimensions {dims} need {expected} bytes, file has {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_gz(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc})") from None


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse one split's images [N, 28, 28] and labels [N] from verified files."""
    img_name, lbl_name = SPLITS[split]
    images = parse_idx(_read_gz(folder / img_name), str(folder / img_name), _IMAGES_MAGIC)
    labels = parse_idx(_read_gz(folder / lbl_name), str(folder / lbl_name), _LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{folder / img_name}: images are {images.shape[1:]}, expected (28, 28)")
    if len(images) != len(labels):
        raise DataError(
            f"{folder / lbl_name}: {len(labels)} labels for {len(images)} images in {img_name}"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{folder / lbl_name}: label {labels.max()} outside 0-9")
    return images, labels


def load(data_dir: str | os.PathLike | None = None) -> FashionMNIST:
    """Find, verify and parse all four files."""
    folder = ensure_files(data_dir)
    return FashionMNIST(*load_split(folder, "train"), *load_split(folder, "test"), folder)


def load_test(data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Find and verify the files, then parse only the test split (export and validation)."""
    return load_split(ensure_files(data_dir), "test")


def load_test_on_disk(data_dir: str | os.PathLike | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The test split from verified files already on disk, never downloading (a report's
    figures need 16 test images, not a 30 MB download): the folder given (or
    $FASHION_MNIST_DIR), else the cache folder and the local copies."""
    given = data_dir or os.environ.get(ENV_DIR)
    ours = Path(given).expanduser() if given else default_cache_dir()
    paths = [ours / name for name in SPLITS["test"]]
    if all(p.is_file() for p in paths):
        for p in paths:
            _verify(p)  # a bad file there is removed and named, as ensure_files does
        return load_split(ours, "test")
    for folder in [] if given else _local_copies():  # another tool's files: checked, kept
        paths = [folder / name for name in SPLITS["test"]]
        if all(p.is_file() and _is_official(p) for p in paths):
            return load_split(folder, "test")
    raise DataError(f"{ours}: no Fashion-MNIST test files there (nothing is downloaded for a "
                    "report)")


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28], pixel / 255 (the ONNX input contract)."""
    return (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
