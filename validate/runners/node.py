"""onnxruntime-node and onnxruntime-web (WebAssembly) under Node.js: the JavaScript runtimes a
Node service deploys, each in one long-lived `node` process (validate/js/runner.mjs).

Requests go to the process's stdin, replies come back on a pipe of their own (not stdout, so
that nothing a library prints can corrupt them): one JSON line, then the tensors' raw
little-endian bytes. Batching and timing happen inside the process, so that neither the
round trips nor the transport are counted. The npm packages are pinned in
validate/js/package.json and installed with `npm ci --ignore-scripts` (bootstrap does it).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np

from validate.timing.latency import TimingPlan
from validate.sandbox import address_space_unlimited, ask_to_exit
from validate.runners.base import Runner, RunnerFailed, RunnerUnavailable, tidy

JS_DIR = Path(__file__).resolve().parent.parent / "js"
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MIN_NODE = 18  # onnxruntime-node 1.30 needs Node-API 6 and ES modules with top-level await
INSTALL_HINT = "run `npm ci --ignore-scripts` in validate/js"  # bootstrap runs it too

# ONNX element type names (as onnxruntime-js spells them) <-> numpy dtypes.
DTYPES: dict[str, np.dtype] = {name: np.dtype(t) for name, t in {
    "float32": np.float32, "float64": np.float64, "float16": np.float16, "int8": np.int8,
    "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16, "int32": np.int32,
    "uint32": np.uint32, "int64": np.int64, "uint64": np.uint64, "bool": np.bool_}.items()}
_NAMES = {dt: name for name, dt in DTYPES.items()}


def pinned(package: str) -> str:
    """The version validate/js/package.json pins for an npm package ("" if none)."""
    try:
        return json.loads((JS_DIR / "package.json").read_text())["dependencies"].get(package, "")
    except (OSError, ValueError, KeyError):
        return ""


def installed(package: str) -> str:
    """The version of an npm package in validate/js/node_modules ("" if absent)."""
    try:
        meta = json.loads((JS_DIR / "node_modules" / package / "package.json").read_text())
        return str(meta.get("version", ""))
    except (OSError, ValueError):
        return ""


@functools.lru_cache(maxsize=None)
def node_problem() -> str | None:
    """None when a recent enough `node` is on PATH, else the one-line reason."""
    node = shutil.which("node")
    if not node:
        return f"no `node` on PATH (install Node.js >= {MIN_NODE})"
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`{node} --version` failed ({type(exc).__name__})"
    match = re.match(r"v(\d+)\.", version)
    if not match:
        return f"`{node} --version` printed {version!r}, not a Node.js version"
    if int(match.group(1)) < MIN_NODE:
        return f"Node.js {version} at {node} is too old (need >= {MIN_NODE})"
    return None


def package_problem(package: str) -> str | None:
    """None when the pinned npm package is installed in validate/js, else the reason."""
    want, have = pinned(package), installed(package)
    if not have:
        return f"npm package {package} is not installed: {INSTALL_HINT}"
    if want and have != want:
        return f"npm package {package} {have} is installed but {want} is pinned: {INSTALL_HINT}"
    return None


def dtype_name(array: np.ndarray) -> str:
    """The ONNX element type name of an array, or RunnerFailed for one JavaScript lacks."""
    name = _NAMES.get(array.dtype.newbyteorder("="))
    if name is None:
        raise RunnerFailed(f"input element type {array.dtype} is not supported by the "
                           "JavaScript runners")
    return name


def tensor_specs(feeds: dict[str, np.ndarray]) -> tuple[list[dict], list[np.ndarray]]:
    """(one {name, dtype, shape, nbytes} per input, each input's little-endian bytes as a flat
    uint8 array)."""
    specs, arrays = [], []
    for name, value in feeds.items():
        value = np.asarray(value)
        kind = dtype_name(value)
        value = np.ascontiguousarray(value, dtype=DTYPES[kind].newbyteorder("<"))
        specs.append({"name": name, "dtype": kind, "shape": list(value.shape),
                      "nbytes": value.nbytes})
        arrays.append(value.reshape(-1).view(np.uint8))
    return specs, arrays


def to_array(spec: dict, data: bytearray | bytes) -> np.ndarray:
    """A reply's tensor as a numpy array."""
    dtype = DTYPES.get(spec["dtype"])
    if dtype is None:
        raise RunnerFailed(f"output {spec['name']} has element type {spec['dtype']}, which the "
                           "JavaScript runners do not return")
    return np.frombuffer(data, dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(
        spec["shape"])


class NodeProcess:
    """One `node validate/js/runner.mjs BACKEND FD` process and its request/reply pipes."""

    def __init__(self, backend: str, label: str) -> None:
        self.backend, self.label = backend, label
        self.proc: subprocess.Popen | None = None
        self.versions: dict = {}

    def start(self) -> None:
        """Start the process; RunnerUnavailable if it cannot import its runtime."""
        read_fd, write_fd = os.pipe()
        # node's own stdout and stderr go to a file, read back only to explain a crash.
        self.log = tempfile.TemporaryFile()
        try:
            with address_space_unlimited():
                self.proc = subprocess.Popen(
                    [shutil.which("node") or "node", str(JS_DIR / "runner.mjs"), self.backend,
                     str(write_fd)], cwd=JS_DIR, stdin=subprocess.PIPE, stdout=self.log,
                    stderr=self.log, pass_fds=(write_fd,))
        except OSError as exc:
            os.close(read_fd)
            self.log.close()
            raise RunnerUnavailable(f"cannot start node ({exc})") from None
        finally:
            os.close(write_fd)
        self.replies = os.fdopen(read_fd, "rb")
        try:
            hello = self._header()
        except RunnerFailed as exc:  # it never got as far as its runtime
            self.stop()
            raise RunnerUnavailable(str(exc)) from None
        if not hello.get("ok"):
            self.stop()
            raise RunnerUnavailable(f"{self.label} cannot start under Node.js "
                                    f"({hello.get('error')}): {INSTALL_HINT}")
        self.versions = hello.get("versions", {})

    def _log_lines(self) -> list[str]:
        self.log.seek(0)
        return [l for l in self.log.read().decode("utf-8", "replace").splitlines() if l.strip()]

    def _died(self) -> RunnerFailed:
        try:
            status = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            status = None
        lines = self._log_lines()
        # Node ends an uncaught error with its version line: name the error line instead.
        errors = [l for l in lines if re.search(r"\w*Error\b", l)]
        last = (errors or lines or ["no output"])[-1].strip()[:300]
        how = (f"was killed by {signal.Signals(-status).name}" if status is not None and status < 0
               else f"exited (status {status})")
        return RunnerFailed(f"the {self.label} process {how}: {last}",
                            "\n".join(lines[-50:]))

    def _header(self) -> dict:
        line = self.replies.readline()
        if not line.endswith(b"\n"):
            raise self._died()
        return json.loads(line)

    def _read(self, n: int) -> bytearray:
        data = bytearray(n)
        view, done = memoryview(data), 0
        while done < n:
            k = self.replies.readinto(view[done:])
            if not k:
                raise self._died()
            done += k
        return data

    def request(self, header: dict, blobs: list = ()) -> tuple[dict, list[np.ndarray]]:
        """Send one request with its tensors; return the reply and its tensors as arrays."""
        if self.proc is None or self.proc.poll() is not None:
            raise RunnerFailed(f"the {self.label} process is not running")
        try:
            self.proc.stdin.write(json.dumps(header).encode() + b"\n")
            for blob in blobs:
                self.proc.stdin.write(blob)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None
        reply = self._header()
        arrays = [to_array(spec, self._read(spec["nbytes"])) for spec in reply.get("outputs", [])
                  if "nbytes" in spec]
        return reply, arrays

    def stop(self) -> None:
        """Ask the process to exit; kill it if it does not."""
        if self.proc is None:
            return
        ask_to_exit(self.proc)
        self.replies.close()
        self.log.close()
        self.proc = None


class NodeRunner(Runner):
    """onnxruntime-node: the native CPU kernels, from a Node.js process."""

    key = "node"
    name = "onnxruntime-node"
    package: ClassVar[str] = "onnxruntime-node"
    backend: ClassVar[str] = "node"
    tolerance = 1e-5  # the same MLAS CPU kernels as onnxruntime in Python
    description = (f"onnxruntime-node {pinned('onnxruntime-node')} (npm) in a Node.js process, "
                   "CPU, intra-op threads as stated")
    provider = "cpu"
    in_process = False  # its own process: see validate.sandbox

    def __init__(self, model: Path | bytes, threads: int = 1) -> None:
        super().__init__(model, threads)
        self.process: NodeProcess | None = None
        self.versions: dict = {}

    @classmethod
    def availability(cls) -> str | None:
        return node_problem() or package_problem(cls.package) or cls._binary_problem()

    @classmethod
    def _binary_problem(cls) -> str | None:
        # The package ships prebuilt CPU binaries for some platforms only.
        machine = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}.get(
            os.uname().machine.lower(), os.uname().machine)
        system = os.uname().sysname.lower()
        folder = JS_DIR / "node_modules" / "onnxruntime-node" / "bin" / "napi-v6" / system / machine
        if not (folder / "onnxruntime_binding.node").is_file():
            return f"onnxruntime-node ships no binary for {system}/{machine} ({folder} is missing)"
        return None

    def load(self) -> None:
        problem = self.availability()
        if problem:
            raise RunnerUnavailable(problem)
        header: dict = {"op": "load", "threads": self.threads}
        blobs: list = []
        if isinstance(self.model, bytes):
            header["nbytes"] = len(self.model)
            blobs.append(self.model)
        else:
            header["path"] = str(Path(self.model).resolve())
        self.process = NodeProcess(self.backend, self.name)
        try:
            self.process.start()
            self.versions = self.process.versions
            reply, _ = self.process.request(header, blobs)
            if not reply.get("ok"):
                raise RunnerFailed(f"{self.name} cannot load it "
                                   f"({tidy(reply.get('detail') or reply.get('error'))})",
                                   reply.get("detail", ""))
        except BaseException:
            self.close()
            raise
        self.input_names = [i["name"] for i in reply["inputs"]]
        self.output_names = [o["name"] for o in reply["outputs"]]
        self.signature = {"inputs": reply["inputs"], "outputs": reply["outputs"]}

    def close(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def _call(self, header: dict, feeds: dict[str, np.ndarray]) -> tuple[dict, list[np.ndarray]]:
        if self.process is None:
            raise RunnerFailed(f"{self.name}: run before load")
        specs, arrays = tensor_specs(feeds)
        reply, outputs = self.process.request({**header, "inputs": specs}, arrays)
        if not reply.get("ok"):
            raise RunnerFailed(f"{self.name} failed to run it "
                               f"({tidy(reply.get('detail') or reply.get('error'))})",
                               reply.get("detail", ""))
        return reply, outputs

    def run(self, feeds: dict[str, np.ndarray], batch_size: int | None = None,
            outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Named inputs -> named outputs; batching (`batch_size`) happens inside Node, in one
        round trip."""
        reply, arrays = self._call({"op": "run", "outputs": outputs, "batch": batch_size}, feeds)
        return {spec["name"]: a for spec, a in zip(reply["outputs"], arrays)}

    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None
             ) -> dict[str, np.ndarray]:
        return self.run(feeds, None, outputs)

    def timings(self, feeds: dict[str, np.ndarray], plan: TimingPlan) -> list[float]:
        """Milliseconds per `session.run`, timed inside Node (performance.now)."""
        reply, _ = self._call({"op": "time", "plan": plan.as_dict()}, feeds)
        return [float(t) for t in reply["times"]]


class WasmRunner(NodeRunner):
    """onnxruntime-web's WebAssembly backend under Node.js: the kernels a browser runs.
    Its timings also warm up for min(1 s, plan.min_seconds): V8 optimises WebAssembly only
    once it is hot (validate/web/core.mjs)."""

    key = "wasm"
    name = "onnxruntime-web"
    package = "onnxruntime-web"
    backend = "wasm"
    tolerance = 1e-5  # WebAssembly SIMD kernels, float32 throughout
    description = (f"onnxruntime-web {pinned('onnxruntime-web')} (npm), WebAssembly backend under "
                   "Node.js, 1 thread (the kernels a browser runs)")
    provider = "wasm"
    latency_threads = (1,)

    def __init__(self, model: Path | bytes, threads: int = 1) -> None:
        # One thread whatever is asked: what a page without cross-origin isolation gets.
        super().__init__(model, 1)

    @classmethod
    def _binary_problem(cls) -> str | None:
        wasm = JS_DIR / "node_modules" / "onnxruntime-web" / "dist" / "ort-wasm-simd-threaded.wasm"
        return None if wasm.is_file() else f"{wasm} is missing: {INSTALL_HINT}"
