"""The native model beside an ONNX file, timed in a long-lived process of its own
(`python -m convert.native_server`) that the validator drives round by round, so that native
and ONNX latencies are measured in the same time window. Framework-free: the framework lives
only in that child; this module starts it, talks JSON lines to it, and stops it.
"""

from __future__ import annotations

import importlib.util
import json
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from validate import sandbox
from validate.timing.latency import TimingPlan

MODEL_FILES = {"torch": "model.pt", "tf": "model.keras"}
MODULES = {"torch": "torch", "tf": "tensorflow"}   # what the child imports
RUNTIMES = {"torch": "torch", "tf": "tensorflow"}  # latency rows' `runtime`
ROOT = Path(__file__).resolve().parents[2]  # where `convert` is importable from
START_SECONDS = 600.0  # import the framework, load the model (a busy machine: tens of seconds)
REPLY_SECONDS = 120.0  # one block of timed calls (a fraction of a second when all is well)


class NativeFailed(Exception):
    """The native process could not start, load the model or time it (one line)."""


SPEC_FILE = "spec.json"  # a model export (docs/byom.md): the server rebuilds it from the folder


def model_path(framework: str, folder: Path) -> Path:
    """What the server loads: a model export's folder itself, else the LeNet-5 checkpoint."""
    return folder if (folder / SPEC_FILE).is_file() else folder / MODEL_FILES[framework]


def _weights_problem(folder: Path) -> str | None:
    """Why a model export's native weights cannot be loaded, read from its spec.json."""
    try:
        weights = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))["weights"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{folder / SPEC_FILE}: unreadable, or no weights named"
    if not (folder / str(weights)).is_file():
        return f"no {weights} in the model's folder ({folder})"
    return None


def availability(framework: str, folder: Path) -> str | None:
    """None when the native model beside the ONNX file can be timed here, else why not."""
    if framework not in MODEL_FILES:
        return f"no native framework known for {framework!r}"
    path = model_path(framework, folder)
    if path == folder:
        problem = _weights_problem(folder)
        if problem:
            return problem
    elif not path.is_file():
        return f"no {path.name} beside the ONNX model ({folder})"
    if importlib.util.find_spec(MODULES[framework]) is None:
        return f"{MODULES[framework]} is not installed in this Python"
    return None


class NativeProcess:
    """One native model at one thread count, pinned to `cores`; `start()` returns at once
    (the framework imports while the validator works), `wait_ready()` waits for the model."""

    def __init__(self, framework: str, folder: Path, threads: int, cores: list[int] | None,
                 data_dir: str | None) -> None:
        self.framework, self.threads, self.cores = framework, threads, cores
        self.path = model_path(framework, folder)
        self.data_dir = data_dir
        self.runtime = RUNTIMES[framework]
        self.proc: subprocess.Popen | None = None
        self.hello: dict | None = None
        self.last_window: tuple[float, float] | None = None

    def start(self) -> "NativeProcess":
        cmd = [sys.executable, "-m", sandbox.NATIVE_SERVER, self.framework, str(self.path),
               "--threads", str(self.threads)]
        if self.cores:
            cmd += ["--cores", ",".join(map(str, self.cores))]
        if self.data_dir:
            cmd += ["--data-dir", str(self.data_dir)]
        self.log = tempfile.TemporaryFile()  # the framework's chatter; read back on failure
        try:
            # A framework reserves large address ranges: started without the in-process cap,
            # and bounded by the sandbox's resident-memory watchdog on its own (sandbox._split).
            with sandbox.address_space_unlimited():
                self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=self.log)
        except OSError as exc:
            self.log.close()
            raise NativeFailed(f"cannot start {' '.join(cmd[:3])} ({exc})") from None
        return self

    def _log_tail(self) -> str:
        self.log.seek(0)
        lines = [line for line in self.log.read().decode("utf-8", "replace").splitlines()
                 if line.strip() and not line.startswith(("I0000", "W0000"))]
        return lines[-1].strip()[:300] if lines else "no output"

    def _read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:  # hung, or stopped from outside: the validation goes on without it
            self.proc.kill()
            self.proc.wait()
            raise NativeFailed(f"the {self.runtime} process gave no answer in {timeout:g} s "
                               "(stopped)")
        line = self.proc.stdout.readline()
        if not line.endswith(b"\n"):
            status = self.proc.wait()
            why = (" (killed: over the memory limit, --max-memory, or from outside)"
                   if status == -signal.SIGKILL else "")
            raise NativeFailed(f"the {self.runtime} process exited (status {status}){why}: "
                               f"{self._log_tail()}")
        message = json.loads(line)
        if not message.get("ok"):
            raise NativeFailed(f"{self.runtime}: {message.get('error', 'failed')}")
        return message

    def wait_ready(self) -> dict:
        """The child's hello: runtime, version, threads, cores, pid."""
        if self.hello is None:
            if self.proc is None:
                raise NativeFailed(f"the {self.runtime} process was never started")
            self.hello = self._read(START_SECONDS)
        return self.hello

    def timings(self, feeds: dict[str, np.ndarray], plan: TimingPlan) -> list[float]:
        """Milliseconds per call of the native model on the first `batch` latency images,
        timed inside the child."""
        self.wait_ready()
        batch = int(next(iter(feeds.values())).shape[0])
        try:
            self.proc.stdin.write(json.dumps({"op": "time", "batch": batch,
                                              "plan": plan.as_dict()}).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            raise NativeFailed(f"the {self.runtime} process is gone: {self._log_tail()}") from None
        reply = self._read(REPLY_SECONDS)
        self.last_window = (float(reply["start"]), float(reply["end"]))
        return [float(t) for t in reply["times"]]

    def window(self) -> tuple[float, float] | None:
        return self.last_window

    def close(self) -> None:
        if self.proc is None:
            return
        sandbox.ask_to_exit(self.proc)
        self.proc.stdout.close()
        self.log.close()
        self.proc = None

    def __enter__(self) -> "NativeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
