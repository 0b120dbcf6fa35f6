"""One writer per artifacts folder: `convert all` holds ARTIFACTS/.lock exclusively for its whole
run; a single command (train, export, twins, quantize, validate on a folder) holds it shared,
so that it waits for a `convert all` on the same folder (and a `convert all` waits for it)
instead of changing files under it. Single commands do not wait for each other. The stages
of a `convert all` run under their pipeline's lock and take none.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Callable, Iterator

from train.core.errors import STAGE_ENV, ArtifactError

LOCK_NAME = ".lock"


def _open(artifacts: Path, create: bool):
    try:
        if create:
            artifacts.mkdir(parents=True, exist_ok=True)
        return open(artifacts / LOCK_NAME, "a+")
    except (FileExistsError, NotADirectoryError):
        raise ArtifactError(f"{artifacts}: not a folder") from None
    except OSError as exc:
        raise ArtifactError(f"{artifacts}: cannot use it as the artifacts folder "
                            f"({exc.strerror})") from None


def _take(handle, operation: int, waiting: Callable[[str], str]) -> None:
    """flock `operation` on `handle`; when another process holds the lock, print
    `waiting(holder)` (holder: what the lock file says, "" when nothing) and wait for it."""
    try:
        fcntl.flock(handle, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        print(waiting(handle.read().strip()), flush=True)
        fcntl.flock(handle, operation)


@contextlib.contextmanager
def artifacts_lock(artifacts: Path) -> Iterator[None]:
    """`convert all`'s exclusive hold; waits (and says so) while another command holds it."""
    with _open(artifacts, create=True) as handle:
        _take(handle, fcntl.LOCK_EX, lambda holder: "== waiting: " + (
            f"another `convert all` ({holder})" if holder else "another command")
            + f" is using {artifacts}")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def shared_lock(artifacts: Path, command: str) -> Iterator[None]:
    """A single command's hold on an existing artifacts folder (none for a folder that does not
    exist yet, or inside a `convert all`, whose lock covers its stages). A folder this process
    cannot write to is read without a lock: no `convert all` can write there either."""
    if os.environ.get(STAGE_ENV) or not artifacts.is_dir():
        yield
        return
    handle = None
    for mode in ("a+", "r"):
        try:
            handle = open(artifacts / LOCK_NAME, mode)
            break
        except OSError:
            continue
    if handle is None:
        yield
        return
    with handle:
        _take(handle, fcntl.LOCK_SH, lambda holder: (
            f"== waiting: `convert all` ({holder or 'another process'}) is using {artifacts}; "
            f"{command} starts when it has finished"))
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
