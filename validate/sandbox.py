"""Containment for untrusted models: each model is loaded and run in a child process with a
memory limit and a time limit, so that a model built to allocate tens of GB or to run for
hours stops with one line instead of taking the machine (or the CI runner) down.

- The child comes from a fork server that has already imported numpy, onnx and onnxruntime
  (one start-up per validation, then a fork per model).
- Memory: in the child, the address space is capped at its size at start plus the limit
  while in-process runtimes run (an allocation past it fails at once); and a watchdog in the
  parent sums the resident memory of the child and every process it started (Node.js, the
  browser) and stops the whole tree when the sum passes the limit.
- Time: the parent stops the whole tree when the model's validation outlives the limit.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import signal
import subprocess
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import psutil

from train.core.errors import ToolkitError

MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What one model's validation may use."""

    memory_mb: int = 4096      # resident memory of the model's processes, beyond start-up
    timeout_s: float = 1800.0  # wall time for the whole validation of one model

    def __post_init__(self) -> None:
        if self.memory_mb < 64:
            raise ToolkitError(f"--max-memory must be at least 64 (MiB), got {self.memory_mb}")
        if not self.timeout_s > 0:
            raise ToolkitError(f"--timeout must be positive (seconds), got {self.timeout_s:g}")


class LimitExceeded(ToolkitError):
    """A model went past its memory or time limit (exit 2)."""


class ChildCrashed(ToolkitError):
    """The process running a model died from a signal (a runtime crashed on the file)."""


# -- in the child --------------------------------------------------------------------------
_AS_LIMIT: int | None = None


def _vm_size() -> int:
    return psutil.Process().memory_info().vms


def set_address_space_limit(memory_mb: int) -> None:
    """Cap this process's address space at its current size plus `memory_mb`."""
    global _AS_LIMIT
    _AS_LIMIT = _vm_size() + memory_mb * MiB
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        _AS_LIMIT = min(_AS_LIMIT, hard)
    resource.setrlimit(resource.RLIMIT_AS, (_AS_LIMIT, hard))


def capped() -> bool:
    """Is this process running under the sandbox's address-space cap?"""
    return _AS_LIMIT is not None


@contextlib.contextmanager
def address_space_unlimited():
    """Lift the cap (soft limit back to the hard one) while processes that reserve large
    address ranges are started (and, for the worker, used): V8 reserves ~10 GB of virtual
    memory for a WebAssembly memory, so a capped Node.js or Chromium cannot run onnxruntime-web
    at all, and a framework (PyTorch, TensorFlow) maps far more than it uses. The parent's
    resident-memory watchdog still bounds every such process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == hard:
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def ask_to_exit(proc: subprocess.Popen) -> None:
    """Stop a child that reads JSON lines on stdin (Node.js runners, native latency servers):
    send {"op": "exit"}, close its stdin, and kill it if it has not gone within 10 s."""
    try:
        if proc.poll() is None:
            proc.stdin.write(b'{"op": "exit"}\n')
            proc.stdin.flush()
        proc.stdin.close()
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()


def memory_failure(text: str) -> bool:
    """Does a runtime's error message say an allocation failed?"""
    t = text.lower()
    return any(s in t for s in ("bad_alloc", "failed to allocate", "memoryerror",
                                "out of memory", "cannot allocate memory",
                                "unable to allocate"))


def _child(conn, memory_mb: int, fn: Callable, args: tuple) -> None:
    """Child body: limit, run, send ("ok", value) | ("user", message) | ("crash", traceback)."""
    try:
        set_address_space_limit(memory_mb)
        value = fn(*args)
        message: tuple = ("ok", value)
    except MemoryError:
        message = ("memory", "")
    except ToolkitError as exc:
        message = ("user", str(exc))
    except BaseException:  # noqa: BLE001 - a bug: the parent prints it and exits 3
        message = ("crash", traceback.format_exc())
    try:
        conn.send(message)
    except MemoryError:
        conn.send(("memory", ""))
    conn.close()


# -- in the parent -------------------------------------------------------------------------
_CTX = None


# The forkserver listens on TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX, and an AF_UNIX socket path
# holds at most 107 bytes: a longer TMPDIR is the user's to change, said in one line.
SOCKET_PATH_MAX, SOCKET_SUFFIX = 107, len("/pymp-xxxxxxxx/listener-xxxxxxxx")


def _context():
    global _CTX
    if _CTX is None:
        tmp = tempfile.gettempdir()
        if len(os.fsencode(tmp)) + SOCKET_SUFFIX > SOCKET_PATH_MAX:
            raise ToolkitError(f"{tmp}: the temporary folder's path is too long for the "
                               f"validator's process socket (at most "
                               f"{SOCKET_PATH_MAX - SOCKET_SUFFIX} bytes); set TMPDIR to a "
                               "shorter folder")
        _CTX = multiprocessing.get_context("forkserver")
        _CTX.set_forkserver_preload(["validate.worker"])
    return _CTX


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


WATCH_SECONDS = 0.25  # how often a child's process tree is held to the limits
NATIVE_SERVER = "convert.native_server"  # its module name, on its command line
_natives: dict[tuple[int, float], bool] = {}


def _is_native(p: psutil.Process) -> bool:
    """Is this a native-model timing process (validate.timing.native)? Cached per process."""
    try:
        key = (p.pid, p.create_time())
        if key not in _natives:
            _natives[key] = NATIVE_SERVER in p.cmdline()
        return _natives[key]
    except psutil.Error:
        return False


def _split(procs: list[psutil.Process]) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """(the model's own processes, the native-model timing processes). The latter hold a
    whole framework (about 0.6 GB each, two per model) for the native latency: they are
    bounded one by one, so that the framework's memory never stops the ONNX model's
    validation, and one over the limit loses only the native latency."""
    own, natives = [], []
    for p in procs:
        (natives if _is_native(p) else own).append(p)
    return own, natives


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def _kill(procs: list[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=5)


def run_contained(fn: Callable, args: tuple, limits: Limits, label: str) -> Any:
    """Run `fn(*args)` in a contained child and return its value.

    Raises LimitExceeded (memory or time), ChildCrashed (a signal), the child's own
    ToolkitError message as a ToolkitError, or RuntimeError with the child's traceback.
    """
    ctx = _context()
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(sender, limits.memory_mb, fn, args),
                        name=f"validate {label}")
    child.start()
    sender.close()
    message = None
    try:
        message = _watch(child, receiver, limits, label)
    finally:
        if child.is_alive() and message is None:
            _kill(_tree(child.pid))
        child.join(10)
        receiver.close()
    if message is None:
        raise _no_result(child.exitcode, label)
    kind, value = message
    if kind == "ok":
        return value
    if kind == "memory":
        raise _over_memory(limits, label)
    if kind == "user":
        raise ToolkitError(value)
    raise RuntimeError(f"validating {label} crashed in its child process:\n{value}")


def _watch(child, receiver, limits: Limits, label: str) -> Any:
    """The child's message, or None when it ended without one; meanwhile its process tree is
    held to the limits (LimitExceeded once it passes one; the caller stops the tree)."""
    start = time.monotonic()
    baseline: int | None = None
    while True:
        # A message is taken as soon as it comes; the tree is measured every WATCH_SECONDS
        # (listing a process tree reads every process's /proc entry: at 20 times a second
        # that took a tenth of a core, beside the runtimes being timed).
        if receiver.poll(WATCH_SECONDS):
            try:
                return receiver.recv()
            except EOFError:
                return None
        if not child.is_alive():
            return None
        procs = _tree(child.pid)
        own, natives = _split(procs)
        for p in natives:
            if _rss([p]) > limits.memory_mb * MiB:
                _kill([p])  # the worker reports the native latency as not measured
        rss = _rss(own)
        baseline = rss if baseline is None else min(baseline, rss)
        if rss - baseline > limits.memory_mb * MiB:
            _kill(procs)
            raise _over_memory(limits, label)
        if time.monotonic() - start > limits.timeout_s:
            _kill(procs)
            raise LimitExceeded(f"{label}: stopped: it ran longer than the time limit of "
                                f"{limits.timeout_s:g} s (--timeout)")


def _over_memory(limits: Limits, label: str) -> LimitExceeded:
    return LimitExceeded(f"{label}: stopped: it needed more than the memory limit of "
                         f"{limits.memory_mb} MiB (--max-memory)")


def _no_result(code: int | None, label: str) -> ToolkitError:
    """Why a child that exited with status CODE sent no result."""
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else -code
        if -code == signal.SIGKILL:  # the kernel's OOM killer, most likely
            return LimitExceeded(f"{label}: killed ({name}) while running it; it probably "
                                 "ran out of memory")
        return ChildCrashed(f"{label}: the runtime crashed on it ({name})")
    return ChildCrashed(f"{label}: the process validating it exited ({code}) without a "
                        "result")


# -- phase 1: run -----------------------------------------------------------------------------
def memory_guard(cls):
    """In-process runtimes run under the address-space cap; the others are started without
    it (they reserve large ranges) and bounded by the parent's resident-memory watchdog."""
    return contextlib.nullcontext() if cls.in_process else address_space_unlimited()


def memory_check(exc) -> None:
    """An allocation that failed under the cap is the memory limit, not the runtime's fault."""
    if capped() and memory_failure(exc.detail):
        raise MemoryError(exc.detail)
