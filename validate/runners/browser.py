"""A real headless browser: Chromium, driven by Playwright, opens the web demo's own page
(validate/web) from a small HTTP server on 127.0.0.1 and runs the model there with
onnxruntime-web (WebAssembly). `write_web_demo` ships that same page next to the models.

Tensors travel by HTTP, not through Playwright's JSON: the page fetches each input's raw
bytes from the server and POSTs each output back; batching and timing happen in the page.
One Chromium (one Playwright driver) serves every browser runner of the process, each runner
in a page of its own; Playwright's sync API binds it to the thread that started it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np

from validate.timing.latency import TimingPlan
from validate.sandbox import address_space_unlimited
from validate.runners.base import Runner, RunnerFailed, RunnerUnavailable, tidy
from validate.runners.node import (JS_DIR, WEB_DIR, package_problem,
                                   pinned, tensor_specs, to_array)

CHROMIUM_ENV = "LENET5_CHROMIUM"  # another Chromium/Chrome binary than Debian's
DEFAULT_CHROMIUM = "/usr/bin/chromium"
# --disable-* flags: this browser must not try to reach anything but the page's server
# (a closed network refuses those connections, and they cost start-up time).
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync")
PAGE_FILES = ("index.html", "app.js", "core.mjs")
ORT_DIST = JS_DIR / "node_modules" / "onnxruntime-web" / "dist"
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
START_TIMEOUT_MS = 60_000
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript",
          ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json"}


def chromium_path() -> str:
    """The Chromium binary to drive ($LENET5_CHROMIUM, else Debian's /usr/bin/chromium)."""
    return os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM


def one_line(exc: BaseException) -> str:
    """A Playwright error's message, as one line (it adds a call log and a stack)."""
    text = str(exc).strip()
    for prefix in ("Page.evaluate: ", "page.evaluate: ", "Error: "):
        text = text.removeprefix(prefix) if text.startswith(prefix) else text
    lines = [l for l in text.splitlines() if l.strip()]
    return tidy(lines[0], 300) if lines else type(exc).__name__


class _Server:
    """HTTP on 127.0.0.1 in a thread: the page's files, models, and tensors both ways."""

    def __init__(self) -> None:
        self.files: dict[str, Path | bytes] = {f"/web/{n}": WEB_DIR / n for n in PAGE_FILES}
        self.files.update({f"/web/ort/{n}": ORT_DIST / n for n in ORT_FILES})
        self.blobs: dict[str, bytes | np.ndarray] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: errors surface in the page
                pass

            def _send(self, status: int, body: bytes | np.ndarray = b"", kind: str = "") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind or "application/octet-stream")
                self.send_header("Content-Length", str(memoryview(body).nbytes))
                self.send_header("Cache-Control", "no-store")
                # Cross-origin isolated: performance.now() at 5 us, not 100 us, for timings.
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path.startswith("/blob/"):
                    with server.lock:
                        body = server.blobs.pop(path, None)
                    return self._send(200, body) if body is not None else self._send(404)
                source = server.files.get(path)
                if source is None:
                    return self._send(HTTPStatus.NOT_FOUND)
                try:
                    body = source if isinstance(source, bytes) else source.read_bytes()
                except OSError:
                    return self._send(HTTPStatus.NOT_FOUND)
                self._send(200, body, _TYPES.get(Path(path).suffix, ""))

            def do_POST(self) -> None:
                path = self.path.split("?")[0]
                if not path.startswith("/blob/"):
                    return self._send(HTTPStatus.NOT_FOUND)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server.lock:
                    server.blobs[path] = body
                self._send(200)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="browser-runner-http",
                                       daemon=True)
        self.thread.start()

    def put(self, data: bytes | np.ndarray) -> str:
        """Serve `data` once; returns its path."""
        path = f"/blob/{uuid.uuid4().hex}"
        with self.lock:
            self.blobs[path] = data
        return path

    def take(self, path: str) -> bytes:
        """What the page POSTed to `path`."""
        with self.lock:
            return self.blobs.pop(path)

    def drop(self, *prefixes: str) -> None:
        """Forget every blob under these prefixes (a failed call's leftovers)."""
        with self.lock:
            for key in [k for k in self.blobs if k.startswith(prefixes)]:
                del self.blobs[key]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Browser:
    """The process's one Chromium and HTTP server, shared by every BrowserRunner."""

    instance: "_Browser | None" = None

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self.users = 0
        self.profile = tempfile.mkdtemp(prefix="lenet5-chromium-")
        self.server = _Server()
        self.playwright = None
        try:
            # Playwright's driver starts Chromium, which inherits the driver's limits.
            with address_space_unlimited():
                self.playwright = sync_playwright().start()
                # A fresh user-data-dir each time: no state from an earlier run.
                self.context = self.playwright.chromium.launch_persistent_context(
                    self.profile, executable_path=chromium_path(), headless=True,
                    args=list(CHROMIUM_ARGS), timeout=START_TIMEOUT_MS)
        except Exception as exc:
            self._stop()
            raise RunnerUnavailable(f"Chromium ({chromium_path()}) did not start: "
                                    f"{one_line(exc)}") from None
        self.version = self.context.browser.version if self.context.browser else ""

    @classmethod
    def acquire(cls) -> "_Browser":
        if cls.instance is None:
            cls.instance = cls()
        cls.instance.users += 1
        return cls.instance

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0 and _Browser.instance is self:
            _Browser.instance = None
            self._stop()

    def _stop(self) -> None:
        if self.playwright is not None:
            try:
                if getattr(self, "context", None) is not None:
                    self.context.close()
            finally:
                self.playwright.stop()
        self.server.stop()
        shutil.rmtree(self.profile, ignore_errors=True)


class BrowserRunner(Runner):
    """onnxruntime-web (WebAssembly) in a page of a real headless Chromium; timings warm up
    as WasmRunner's do."""

    key = "browser"
    name = "browser"
    tolerance = 1e-5  # the WebAssembly kernels of onnxruntime-web, as under Node
    description = (f"headless Chromium (Playwright), the web demo's page, onnxruntime-web "
                   f"{pinned('onnxruntime-web')} WebAssembly, 1 thread")
    provider = "wasm"
    in_process = False  # a browser of its own: see validate.sandbox
    latency_threads = (1,)

    def __init__(self, model: Path | bytes, threads: int = 1) -> None:
        super().__init__(model, 1)  # the page runs one thread (see app.js)
        self.browser: _Browser | None = None
        self.page = None
        self.versions: dict = {}
        self.console: list[str] = []

    @classmethod
    def availability(cls) -> str | None:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            return ("Playwright for Python is not importable (pip install playwright; "
                    "no browser download is needed)")
        chromium = chromium_path()
        if not (os.path.isfile(chromium) and os.access(chromium, os.X_OK)):
            return (f"no Chromium at {chromium} (`apt-get install chromium`, or set "
                    f"{CHROMIUM_ENV})")
        problem = package_problem("onnxruntime-web")
        if problem:
            return problem
        missing = [n for n in ORT_FILES if not (ORT_DIST / n).is_file()]
        return f"{ORT_DIST / missing[0]} is missing" if missing else None

    def load(self) -> None:
        problem = self.availability()
        if problem:
            raise RunnerUnavailable(problem)
        self.browser = _Browser.acquire()
        try:
            self._open_page()
        except BaseException:
            self.close()
            raise

    def _open_page(self) -> None:
        server = self.browser.server
        self.page = self.browser.context.new_page()
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        try:
            self.page.goto(f"{server.url}/web/index.html?harness", timeout=START_TIMEOUT_MS)
            self.page.wait_for_function("() => window.harness !== undefined",
                                        timeout=START_TIMEOUT_MS)
            self.versions = {**self.page.evaluate("() => window.harness.versions"),
                             "chromium": self.browser.version}
        except Exception as exc:
            said = f" (page said: {self.console[-1][:200]})" if self.console else ""
            raise RunnerUnavailable(f"the page did not start in Chromium: {one_line(exc)}"
                                    f"{said}") from None
        model = self.model if isinstance(self.model, bytes) else self._read_model()
        try:
            info = self.page.evaluate("url => window.harness.load(url)", server.put(model))
        except Exception as exc:
            raise RunnerFailed(f"onnxruntime-web in Chromium cannot load it "
                               f"({one_line(exc)})", str(exc)) from None
        self.input_names = [i["name"] for i in info["inputs"]]
        self.output_names = [o["name"] for o in info["outputs"]]
        self.signature = info

    def _read_model(self) -> bytes:
        try:
            return Path(self.model).read_bytes()
        except OSError as exc:
            raise RunnerFailed(f"cannot read {self.model} ({exc.strerror})") from None

    def close(self) -> None:
        if self.page is not None:
            try:
                self.page.close()
            except Exception:  # the browser is already gone; nothing left to release
                pass
            self.page = None
        if self.browser is not None:
            self.browser.release()
            self.browser = None

    def _inputs(self, feeds: dict[str, np.ndarray]) -> list[dict]:
        if self.page is None:
            raise RunnerFailed(f"{self.name}: run before load")
        specs, arrays = tensor_specs(feeds)
        server = self.browser.server
        return [{**s, "url": server.put(a)} for s, a in zip(specs, arrays)]

    def _evaluate(self, script: str, arg: dict, what: str):
        if self.page is None:
            raise RunnerFailed(f"{self.name}: run before load")
        try:
            return self.page.evaluate(script, arg)
        except Exception as exc:
            raise RunnerFailed(f"onnxruntime-web in Chromium failed to {what} it "
                               f"({one_line(exc)})", str(exc)) from None

    def run(self, feeds: dict[str, np.ndarray], batch_size: int | None = None,
            outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Named inputs -> named outputs; batching (`batch_size`) happens in the page."""
        upload = f"/blob/{uuid.uuid4().hex}"
        inputs = self._inputs(feeds)
        try:
            specs = self._evaluate("a => window.harness.run(a)",
                                   {"inputs": inputs, "outputs": outputs,
                                    "batch": batch_size, "upload": upload}, "run")
            return {s["name"]: to_array(s, self.browser.server.take(s["url"])) for s in specs}
        finally:
            self.browser.server.drop(upload, *(i["url"] for i in inputs))

    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None
             ) -> dict[str, np.ndarray]:
        return self.run(feeds, None, outputs)

    def timings(self, feeds: dict[str, np.ndarray], plan: TimingPlan) -> list[float]:
        """Milliseconds per `session.run`, timed in the page (performance.now; the page is
        cross-origin isolated, so its clock resolves 5 us)."""
        inputs = self._inputs(feeds)
        try:
            times = self._evaluate("a => window.harness.time(a)",
                                   {"inputs": inputs, "plan": plan.as_dict()}, "time")
        finally:
            self.browser.server.drop(*(i["url"] for i in inputs))
        return [float(t) for t in times]


@contextlib.contextmanager
def shared_browser() -> Iterator[None]:
    """Keep one Chromium up across several BrowserRunners (and `evaluate_page` calls); without
    it, each runner starts Chromium when none is up and stops it when it is the last."""
    problem = BrowserRunner.availability()
    if problem:
        raise RunnerUnavailable(problem)
    browser = _Browser.acquire()
    try:
        yield
    finally:
        browser.release()


def evaluate_page(url: str, expression: str, timeout_s: float = 60.0) -> object:
    """Open `url` in the headless Chromium and return the value of the JavaScript
    `expression` as soon as it is truthy (e.g. the web demo's `window.demoResult`)."""
    problem = BrowserRunner.availability()
    if problem:
        raise RunnerUnavailable(problem)
    browser = _Browser.acquire()
    page = None
    try:
        page = browser.context.new_page()
        page.goto(url, timeout=timeout_s * 1e3)
        handle = page.wait_for_function(f"() => {expression}", timeout=timeout_s * 1e3)
        return handle.json_value()
    finally:
        if page is not None:
            page.close()
        browser.release()


# -- the web demo -------------------------------------------------------------------------

SAMPLES_PER_CLASS = 2


def _class_names(model: Path) -> list[str] | None:
    import onnx

    try:
        meta = {p.key: p.value for p in onnx.load(str(model), load_external_data=False)
                .metadata_props}
        names = json.loads(meta.get("class_names", "null"))
    except Exception:  # a model without our metadata: the caller falls back
        return None
    return names if isinstance(names, list) else None


def write_web_demo(artifacts: Path, models: dict[str, Path], images: np.ndarray | None = None,
                   labels: np.ndarray | None = None) -> Path:
    """Write ARTIFACTS/web/: the browser page that classifies test images with every model in
    `models` ({name: .onnx path}), with onnxruntime-web and a few labelled test images.

    `images` (uint8 [N, 28, 28] or float [N, 1, 28, 28] in [0, 1]) and `labels` default to
    the Fashion-MNIST test set. Open it with `python3 -m http.server 8000 --bind 127.0.0.1
    -d ARTIFACTS`, then http://127.0.0.1:8000/web/. RunnerUnavailable if onnxruntime-web is
    not installed.
    """
    from train.core.fileio import write_bytes, write_json, write_text
    from train import data

    problem = package_problem("onnxruntime-web")
    if problem:
        raise RunnerUnavailable(f"web demo not written: {problem}")
    artifacts = Path(artifacts)
    web = artifacts / "web"
    if images is None or labels is None:
        images, labels = data.load_test()
    pixels = np.asarray(images)
    if pixels.dtype != np.uint8:  # float [0, 1] -> the bytes the page shows and rescales
        pixels = np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)
    pixels = pixels.reshape(len(pixels), 784)
    labels = np.asarray(labels).astype(int)
    picked = [int(i) for c in range(10) for i in np.flatnonzero(labels == c)[:SAMPLES_PER_CLASS]]
    for name in PAGE_FILES:
        write_bytes(web / name, (WEB_DIR / name).read_bytes())
    for name in ORT_FILES:
        write_bytes(web / "ort" / name, (ORT_DIST / name).read_bytes())
    links, class_names = {}, None
    for name, path in models.items():
        path = Path(path).resolve()
        if artifacts.resolve() in path.parents:
            links[name] = os.path.relpath(path, web.resolve())
        else:  # outside the served folder: ship a copy
            write_bytes(web / "models" / f"{name}.onnx", path.read_bytes())
            links[name] = f"models/{name}.onnx"
        class_names = class_names or _class_names(path)
    write_json(web / "models.json", {
        "models": links, "input": "image", "output": "probabilities",
        "class_names": class_names or list(data.CLASS_NAMES)})
    samples = {"source": "Fashion-MNIST test set", "indices": picked,
               "labels": [int(labels[i]) for i in picked],
               "pixels": [pixels[i].tolist() for i in picked]}
    write_text(web / "samples.json", json.dumps(samples, separators=(",", ":")) + "\n")
    return web
