"""The project's exception types, and how the CLIs turn exceptions into exit statuses."""

import argparse
import contextlib
import os
import signal
import sys
import traceback
from typing import Callable, NoReturn

CRASH_STATUS = 3


def first_line(exc: BaseException) -> str:
    """'Type: first line of the message' (200 characters at most), for a status row or the
    reason in a one-line error."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


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


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a bad flag reported in one line (`error: PROG: …; see PROG --help`),
    exit status 2, instead of the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}; see {self.prog} --help\n")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every `finally` runs (child processes are
    stopped, temporary files removed), as Ctrl-C does."""


def _terminate(signum, frame) -> None:
    raise Terminated()


STAGE_ENV = "LENET5_PIPELINE_STAGE"  # set by `convert all` for its stages


def _stopped(line: str) -> None:
    if not os.environ.get(STAGE_ENV):  # a stage of `convert all`: the pipeline says it once
        print(line, file=sys.stderr)


def cli_call(fn: Callable[[], int]) -> int:
    """Run a CLI body: a user error is one line and its status (2); a bug shows its traceback
    and exits 3, so that it is never mistaken for a parity failure (1); Ctrl-C and SIGTERM
    stop it with one line and the shell's status for the signal (130, 143) after cleaning
    up; a closed stdout (`| head`) stops it without a word (141)."""
    if not os.environ.get(STAGE_ENV):  # a stage of `convert all` dies as the pipeline says
        with contextlib.suppress(ValueError):  # ValueError: not the main thread
            signal.signal(signal.SIGTERM, _terminate)
    try:
        return fn()
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        _stopped("interrupted (Ctrl-C)")
        return 128 + signal.SIGINT
    except Terminated:
        _stopped("terminated (SIGTERM)")
        return 128 + signal.SIGTERM
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly with SIGPIPE's status, as
        # the shell's own tools do; stdout to /dev/null, so that the exit flush cannot fail.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:
        if exc.filename is None:  # not about a file the user named: a bug, keep the traceback
            traceback.print_exc()
            return CRASH_STATUS
        # A path the user gave that this user may not read or write, and that no check
        # before caught: still the environment's problem, in one line.
        reason = (exc.strerror or str(exc)).lower()
        print(f"error: {exc.filename}: {reason}", file=sys.stderr)
        return 2
    except Exception:  # a bug: keep the traceback
        traceback.print_exc()
        return CRASH_STATUS
