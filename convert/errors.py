"""The project's exception types, and how the CLIs turn exceptions into exit statuses."""

import contextlib
import signal
import sys
import traceback
from typing import Callable

CRASH_STATUS = 3


class ToolkitError(Exception):
    """A problem with the user's input or environment (bad path, bad file, bad flag): exit 2."""

    exit_status = 2


class DataError(ToolkitError):
    """A dataset file is missing, corrupt or cannot be fetched."""


class ArtifactError(ToolkitError):
    """A file in the artifacts folder is missing or unreadable."""


class OutputError(ToolkitError):
    """A result cannot be written: the disk is full, the folder is read-only, a path that
    should be a folder is a file."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every `finally` runs (child processes are
    stopped, temporary files removed), as Ctrl-C does."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def cli_call(fn: Callable[[], int]) -> int:
    """Run a CLI body: a user error is one line and its status (2); a bug shows its traceback
    and exits 3, so that it is never mistaken for a parity failure (1); Ctrl-C and SIGTERM
    stop it with one line and the shell's status for the signal (130, 143) after cleaning
    up."""
    with contextlib.suppress(ValueError):  # ValueError: not the main thread
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return fn()
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except Exception:  # a bug: keep the traceback
        traceback.print_exc()
        return CRASH_STATUS
