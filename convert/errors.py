"""The project's exception types, and how the CLIs turn exceptions into exit statuses."""

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


def cli_call(fn: Callable[[], int]) -> int:
    """Run a CLI body: a user error is one line and its status (2); a bug shows its traceback
    and exits 3, so that it is never mistaken for a parity failure (1)."""
    try:
        return fn()
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    except Exception:  # a bug: keep the traceback
        traceback.print_exc()
        return CRASH_STATUS
