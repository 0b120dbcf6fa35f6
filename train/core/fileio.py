"""Atomic file writes: every file goes to a temporary name in its folder, then `os.replace`."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from train.core.errors import ArtifactError, OutputError


# errno -> the reason a user reads; an OSError with one of these while writing is the
# user's disk or folder, not a bug.
_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "not a folder",
    errno.EEXIST: "not a folder",
    errno.EISDIR: "is a folder",
    errno.ENAMETOOLONG: "file name too long",
}
_WHILE_WRITING = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def output_error(path: Path, exc: OSError) -> OutputError:
    """One line naming the path and the reason."""
    reason = _REASONS.get(exc.errno) or (exc.strerror or str(exc)).lower()
    return OutputError(f"{path}: cannot write it: {reason}")


def _prepare(path: Path) -> None:
    """Make the folder, or say in one line why it cannot hold the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        bad = next((p for p in [path.parent, *path.parent.parents] if p.exists()
                    and not p.is_dir()), path.parent)
        raise OutputError(f"{bad}: cannot write {path.name} there: not a folder") from None
    except OSError as exc:
        raise output_error(path.parent, exc) from None


def _publish(tmp: str, path: Path) -> None:
    """Give the temporary file normal permissions (mkstemp makes it 0600), then move it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def _mkstemp(path: Path, prefix: str, suffix: str) -> tuple[int, str]:
    _prepare(path)
    try:
        return tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise output_error(path, exc) from None


def ensure_can_write(path: Path) -> None:
    """Create PATH's folder and check that PATH could be written there, before long work (a
    training, a validation) that would otherwise end on it; the error names PATH as the write
    would."""
    path = Path(path)
    fd, tmp = _mkstemp(path, f".{path.name}.", ".tmp")
    os.close(fd)
    os.unlink(tmp)


def ensure_writable(folder: Path) -> None:
    """Create `folder` and check that a file can be written there (ensure_can_write)."""
    ensure_can_write(Path(folder) / ".write-check")


@contextlib.contextmanager
def _publishing(tmp: str, path: Path) -> Iterator[None]:
    """Around the writing of TMP for PATH: a disk or folder error becomes one line naming
    PATH, and TMP is removed whatever goes wrong (it never outlives a failed write)."""
    try:
        try:
            yield
        except OSError as exc:
            if exc.errno in _WHILE_WRITING or exc.errno in _REASONS:
                raise output_error(path, exc) from None
            raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; move it into place only if the block succeeds.

    A full disk, a read-only folder or a path that is not a folder is an OutputError (one
    line, exit 2), and the temporary file is removed whatever happens.
    """
    path = Path(path)
    fd, tmp = _mkstemp(path, f".{path.name}.", ".tmp")
    with _publishing(tmp, path):
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _publish(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a library that writes by name; then move it."""
    path = Path(path)
    fd, tmp = _mkstemp(path, f".{path.stem}.", path.suffix)
    os.close(fd)
    with _publishing(tmp, path):
        yield Path(tmp)
        _publish(tmp, path)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically."""
    write_bytes(path, text.encode("utf-8"))


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append UTF-8 text to a file (created if missing): for summaries other tools collect."""
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise output_error(Path(path), exc) from None


def _finite(obj: object) -> object:
    """NaN and ±inf as null: JSON has no such numbers (json.dumps would write NaN, which
    JSON.parse and strict readers reject)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Write strict JSON (indented, keys in insertion order, non-finite numbers as null)
    atomically."""
    write_text(path, json.dumps(_finite(obj), indent=2, allow_nan=False) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


SUMS_NAME = "SHA256SUMS"
# What a deployer copies out of a framework's folder; each writer refreshes the list.
DEPLOY_FILES = ("lenet5.onnx", "lenet5.*.onnx", "reference.npz", "test_data_set_*/*.pb")


def refresh_sha256sums(folder: str | os.PathLike,
                       patterns: tuple[str, ...] = DEPLOY_FILES) -> Path:
    """Write FOLDER/SHA256SUMS (the `sha256sum` format, so `sha256sum -c` checks it) over the
    files matching `patterns`, atomically."""
    folder = Path(folder)
    names = sorted({p.relative_to(folder).as_posix() for pattern in patterns
                    for p in folder.glob(pattern) if p.is_file() and p.name != SUMS_NAME
                    and not p.name.startswith(".")})
    write_text(folder / SUMS_NAME, "".join(f"{sha256_file(folder / n)}  {n}\n" for n in names))
    return folder / SUMS_NAME


def read_sha256sums(path: str | os.PathLike) -> dict[str, str]:
    """Parse a SHA256SUMS file: {relative name: hex digest}; ValueError on a bad line."""
    sums = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition(" ")
        name = name[1:] if name[:1] in (" ", "*") else name
        if (not sep or len(digest) != 64 or not name
                or any(c not in "0123456789abcdef" for c in digest.lower())):
            raise ValueError(f"line {number} is not `<sha256>  <file>`")
        sums[name] = digest.lower()
    return sums


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an .npz file (never unpickling); ArtifactError naming the file when it
    cannot be read (a damaged zip, a bad array header, a pickled object)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:  # any failure to read is the file's fault
        text = str(exc).strip()
        reason = text.splitlines()[0][:200] if text else type(exc).__name__
        raise ArtifactError(f"{path}: not a readable npz archive ({reason})") from None
