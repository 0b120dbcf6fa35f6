"""The runner contract: one interface for every place an ONNX model runs.

A runner has a `key` (for `--runtimes`), a report `name`, a documented `tolerance` (max
|probability difference| against the native framework that its parity gate allows), and
says with `availability()` whether it can run on this machine (None) or why not (one line).
Loading (session, process, page) is kept apart from running: `load()` / `close()`, or use it
as a context manager. `run(feeds)` maps named input arrays to named output arrays.

Polygraphy's two phases: every runner is run first and its outputs kept; comparing happens
afterwards, in numpy (validate.compare.parity), never inside a runner.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import numpy as np

from validate.timing.latency import TimingPlan, time_calls


_SOURCE = re.compile(r"/onnxruntime_src/\S+?:\d+\s*|Load model from \S+ failed:\s*")
_SIGNATURE = re.compile(r"(?:[\w~]+::)+[\w~]+\(")


def tidy(text: str, limit: int = 240) -> str:
    """A runtime's error as one readable line: its first line, without onnxruntime's source
    locations and C++ signatures (which push the actual reason past any sane length)."""
    lines = [line.strip() for line in str(text).strip().splitlines()
             if line.strip() and not line.strip().startswith("at ")]  # JavaScript stack frames
    text = " ".join(lines[:3]).removeprefix("Error:").strip()
    text = _SOURCE.sub("", text)
    while (m := _SIGNATURE.search(text)) is not None:
        depth, end = 1, m.end()
        while end < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        text = (text[:m.start()] + text[end:]).strip()
    return text[:limit] or "no message"


class RunnerUnavailable(Exception):
    """This runner cannot run on this machine (no Node.js, no browser, no CUDA); the
    message is the one-line reason the report shows."""


class RunnerFailed(Exception):
    """This runner could not load or run this model (an operator it lacks, a crash): a
    failure of the model in that runtime, named in the verdict. `detail` keeps the runtime's
    whole message (the message itself is one short line)."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message


class Runner:
    """Base class of every runner. Subclasses set the class attributes and implement
    `load`, `close` and `_run`; the rest is shared."""

    key: ClassVar[str] = ""               # `--runtimes` name: cpu, cuda, reference, node, …
    name: ClassVar[str] = ""              # report name: onnxruntime-cpu, onnx-reference, …
    runtime: ClassVar[str] = ""           # latency rows' runtime; the report name when empty
    tolerance: ClassVar[float] = 1e-5     # max |diff| vs the native reference, by default
    description: ClassVar[str] = ""       # one line for the report: what runs where
    exact: ClassVar[bool] = False         # float64 reference: the "exact" answer of the graph
    intermediates: ClassVar[bool] = False  # can return any tensor of the graph (layer diagnosis)
    provider: ClassVar[str] = "cpu"       # device / execution provider, for latency rows
    default_batch: ClassVar[int | None] = None  # chunk size for whole-test-set runs
    batch1_images: ClassVar[int] = 256    # images run one at a time for the invariance check
    in_process: ClassVar[bool] = True     # False: runs in a process of its own (Node, browser)
    # Computes float64 tensors in float32 and int64 in int32 (OpenVINO's CPU plugin): outputs
    # keep the graph's types, values are what a deployment on it gets.
    narrows_wide_types: ClassVar[bool] = False
    # Thread counts its latency is measured at: None = 1 and all cores; () = not timed.
    latency_threads: ClassVar[tuple[int, ...] | None] = None

    def __init__(self, model: Path | bytes, threads: int = 1) -> None:
        self.model = model if isinstance(model, bytes) else Path(model)
        self.threads = threads
        self.input_names: list[str] = []
        self.output_names: list[str] = []

    # -- environment -------------------------------------------------------------------
    @classmethod
    def availability(cls) -> str | None:
        """None when this runner can run here, else the one-line reason why not."""
        return None

    # -- lifecycle ---------------------------------------------------------------------
    def load(self) -> None:
        """Prepare the model (session, process, page); raise RunnerFailed if it is rejected,
        RunnerUnavailable if the runtime itself cannot start."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what `load` made."""

    def __enter__(self) -> "Runner":
        self.load()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- running -----------------------------------------------------------------------
    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        """One call of the model on whole arrays."""
        raise NotImplementedError

    def run(self, feeds: dict[str, np.ndarray], batch_size: int | None = None,
            outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Named inputs -> named outputs (all graph outputs unless `outputs` names some).

        With `batch_size`, the leading axis of every input is cut into chunks of that size and
        the outputs are concatenated, as a deployment that batches requests would do.
        """
        n = _leading(feeds)
        if batch_size is None or n is None or n <= batch_size:
            return self._run(feeds, outputs)
        parts = [self._run({k: v[i:i + batch_size] for k, v in feeds.items()}, outputs)
                 for i in range(0, n, batch_size)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def probabilities(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """float32 NCHW images -> probabilities [N, 10] (models that keep the I/O contract)."""
        return self.run({"image": images}, batch_size or self.default_batch,
                        ["probabilities"])["probabilities"]

    def timings(self, feeds: dict[str, np.ndarray], plan: TimingPlan) -> list[float]:
        """Milliseconds per call after the plan's untimed warm-up calls. Runners in another
        process override this to time inside that process, so that transport is not counted."""
        return time_calls(lambda: self._run(feeds, None), plan)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} threads={self.threads}>"


def _leading(feeds: dict[str, np.ndarray]) -> int | None:
    """The common leading dimension of the inputs, or None when they differ or are scalars."""
    sizes = {v.shape[0] if v.ndim else None for v in feeds.values()}
    return sizes.pop() if len(sizes) == 1 else None
