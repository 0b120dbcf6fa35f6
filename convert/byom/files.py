"""What a model export writes beside model.onnx (numpy and onnx only): an .npz filled batch by
batch with bounded memory, the ONNX backend-test folder for several inputs and outputs, and
SHA256SUMS over every file of the folder."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from numpy.lib import format as npy_format
from onnx import numpy_helper

from train.core.fileio import atomic_open, refresh_sha256sums, write_bytes

# Every file an export writes (the validator's contract, docs/byom.md), for SHA256SUMS.
EXPORT_FILES = ("model.onnx", "model.*.onnx", "spec.json", "weights.pt", "weights.weights.h5",
                "inputs.npz", "labels.npy", "reference.npz", "layers.npz",
                "test_data_set_*/*.pb")
VARIANTS = ("int8", "fp16")


class NpzStream:
    """An .npz written slice by slice: each array lives in a .npy memory map in a private
    folder beside the destination until `close` zips them (stored, as np.savez does) into
    the destination atomically. Memory holds one batch, never the whole arrays."""

    def __init__(self, path: Path, total: int) -> None:
        self.path, self.total = Path(path), total
        self._tmp = tempfile.TemporaryDirectory(prefix=f".{self.path.stem}.", dir=self.path.parent)
        self._maps: dict[str, np.memmap] = {}

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Put `arrays` (one batch, keyed by name) at rows start.. of each array."""
        for key, batch in arrays.items():
            if key not in self._maps:
                self._maps[key] = npy_format.open_memmap(
                    Path(self._tmp.name) / f"{len(self._maps)}.npy", mode="w+",
                    dtype=batch.dtype, shape=(self.total, *batch.shape[1:]))
            self._maps[key][start:start + len(batch)] = batch

    def close(self) -> None:
        """Zip the arrays into the destination (atomically), drop the temporary folder."""
        try:
            files = {}
            for k, (key, array) in enumerate(self._maps.items()):
                array.flush()
                files[key] = Path(self._tmp.name) / f"{k}.npy"
            del self._maps
            with atomic_open(self.path) as handle, zipfile.ZipFile(
                    handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for key, file in files.items():
                    archive.write(file, f"{key}.npy")
        finally:
            self._tmp.cleanup()


def batches(count: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of each batch."""
    for start in range(0, count, size):
        yield start, min(start + size, count)


def write_outputs(path: Path, run: Callable[[dict], dict[str, np.ndarray]],
                  arrays: dict[str, np.ndarray], batch: int,
                  progress: Callable[[int], None]) -> dict[str, np.ndarray]:
    """reference.npz: `run` on every input, batch by batch; returns the first batch's
    outputs (their names, dtypes and shapes)."""
    count = len(next(iter(arrays.values())))
    stream, first = NpzStream(path, count), None
    try:
        for start, stop in batches(count, batch):
            out = run({k: v[start:stop] for k, v in arrays.items()})
            first = first if first is not None else out
            stream.write(start, out)
            progress(stop)
    except BaseException:
        stream._tmp.cleanup()
        raise
    stream.close()
    return first


def write_test_data_set(folder: Path, inputs: dict[str, np.ndarray],
                        outputs: dict[str, np.ndarray]) -> None:
    """input_<k>.pb and output_<k>.pb (the ONNX backend-test format), in graph order."""
    for prefix, arrays in (("input", inputs), ("output", outputs)):
        for k, (name, array) in enumerate(arrays.items()):
            write_bytes(folder / f"{prefix}_{k}.pb",
                        numpy_helper.from_array(np.ascontiguousarray(array), name)
                        .SerializeToString())


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A small .npz (keys may hold '/'), atomically."""
    with atomic_open(path) as handle:
        np.savez(handle, **arrays)


def write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path) as handle:
        np.save(handle, array)


def refresh_sums(folder: Path) -> Path:
    """SHA256SUMS over every file an export writes."""
    return refresh_sha256sums(folder, EXPORT_FILES)
