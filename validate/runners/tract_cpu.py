"""tract in this process: Sonos's ONNX engine, an implementation of the operators of its own
(Rust, no onnxruntime, no oneDNN), through its Python bindings. Single-threaded.

tract types every tensor of the graph before it runs it. A graph whose batch dimension stays
symbolic through tract's analysis (`batch,1,28,28`) is compiled once and serves every batch
size; a graph where it does not (a Reshape whose target shape is computed through a Cast, as
tf2onnx writes it: "shape input is variable") is compiled once per input shape, with concrete
input facts, and the compiled models are kept. tract reads only files: a model given as bytes
is written to a temporary folder that lives as long as the runner.

Known gap (tract 0.23.9): its optimiser turns Mul(x, x) into Square, which has no int64
kernel, so such a graph fails at run time ("Square does not support I64").
"""

from __future__ import annotations

import functools
import re
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

from validate.runners.base import Runner, RunnerFailed, RunnerUnavailable, tidy

PACKAGE = "tract"
# numpy dtype -> tract's fact notation ("1,3,224,224,f32").
_FACT_TYPES = {np.dtype(t): name for t, name in [
    (np.float32, "f32"), (np.float64, "f64"), (np.float16, "f16"), (np.int8, "i8"),
    (np.int16, "i16"), (np.int32, "i32"), (np.int64, "i64"), (np.uint8, "u8"),
    (np.uint16, "u16"), (np.uint32, "u32"), (np.uint64, "u64"), (np.bool_, "bool")]}
_CAUSE_NUMBER = re.compile(r"^\d+:\s*")


def installed_version() -> str:
    """The installed tract wheel's version ("" when it is not installed)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return ""


def one_line(exc: BaseException, limit: int = 240) -> str:
    """A tract error (an anyhow chain: context, "Caused by:", causes, and a backtrace when
    RUST_BACKTRACE is set) as one line: the chain joined by ": ", no backtrace."""
    text = str(exc).split("Stack backtrace:", 1)[0]
    parts = [_CAUSE_NUMBER.sub("", line.strip()) for line in text.splitlines()]
    parts = [p for p in parts if p and p != "Caused by:"]
    return tidy(": ".join(parts), limit) if parts else type(exc).__name__


@functools.lru_cache(maxsize=1)
def _problem() -> str | None:
    try:
        import tract
        tract.version()
    except Exception as exc:  # not installed, or its native library does not load here
        return (f"the tract package cannot be imported ({type(exc).__name__}: "
                f"{tidy(str(exc), 160)}); `pip install -e .` installs the pinned version")
    return None


def _concrete(fact: str) -> str | None:
    """An input fact with every symbolic dimension set to 1 ("batch,1,28,28,f32" ->
    "1,1,28,28,f32"); None when the fact has no full shape."""
    *dims, dtype = fact.split(",")
    if not dims or any(d in ("..", "?", "") for d in dims):
        return None
    return ",".join([d if d.isdigit() else "1" for d in dims] + [dtype])


def _graph_names(path: Path) -> tuple[list[str], list[str]]:
    """The ONNX graph's input names (initializers excepted) and output names, in order."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return ([i.name for i in graph.input if i.name not in weights],
            [o.name for o in graph.output])


class TractRunner(Runner):
    """tract, CPU, one thread; one compiled model for a symbolic batch, else one per shape."""

    key = "tract"
    name = "tract"
    provider = "cpu"
    # Measured on all 10,000 test images, quick models, at batch 1, 7, 32, 256, 1000 and
    # 10,000 (2-core AMD EPYC, AVX2): max |Δp| vs the native framework 1.3e-6 (torch) and
    # 1.5e-6 (tf); vs the float64 reference 1.1e-6 and 1.5e-6, where the native models are at
    # 7.0e-7 and 9.8e-7 and onnxruntime at 8.4e-7 and 1.2e-6 (the noise floor). Batch 1 vs 256
    # differs by up to 2.4e-7; reruns are bit-identical. 2e-5: 14x the worst measured, about
    # 15x the floor.
    tolerance = 2e-5
    description = (f"tract {installed_version() or '(not installed)'} (Python bindings to the "
                   "Rust engine), CPU, 1 thread")
    latency_threads = (1,)  # tract runs a model on one thread
    default_batch = 1000

    def __init__(self, model: Path | bytes, threads: int = 1) -> None:
        super().__init__(model, 1)
        self._folder: tempfile.TemporaryDirectory | None = None
        self._path: Path | None = None
        self._symbolic = None  # the one compiled model, when the batch stays symbolic
        self._by_shape: dict[tuple, object] = {}  # else: one per input facts ("1,1,28,28,f32")
        self._facts: list[str] = []

    @classmethod
    def availability(cls) -> str | None:
        return _problem()

    def load(self) -> None:
        reason = _problem()
        if reason:
            raise RunnerUnavailable(reason)
        import tract

        if isinstance(self.model, bytes):
            self._folder = tempfile.TemporaryDirectory(prefix="lenet5-tract-")
            self._path = Path(self._folder.name) / "model.onnx"
            self._path.write_bytes(self.model)
        else:
            self._path = self.model
        try:
            graph = tract.onnx().load(str(self._path))
            self._facts = [graph.input_fact(i).dump() for i in range(graph.input_count())]
            # tract names inputs and outputs after their nodes ("node_softmax"), and its typed
            # model renames an output that an Identity made: the names are the ONNX graph's,
            # in the same order.
            self.input_names, self.output_names = _graph_names(self._path)
        except Exception as exc:
            self.close()
            raise RunnerFailed(f"tract cannot load it ({one_line(exc)})", str(exc)) from None
        if len(self.input_names) != len(self._facts):
            self.close()
            raise RunnerFailed(f"tract sees {len(self._facts)} inputs where the graph has "
                               f"{len(self.input_names)}")
        try:
            self._symbolic = graph.into_model().into_runnable()
            return
        except Exception:  # a dimension tract cannot keep symbolic: compile per shape
            pass
        facts = [_concrete(f) for f in self._facts]
        if all(facts):  # compile it for batch 1 now, so that a model tract rejects fails here
            try:
                self._by_shape[tuple(facts)] = self._compile(facts)
            except Exception as exc:
                self.close()
                raise RunnerFailed(f"tract cannot load it ({one_line(exc)})", str(exc)) from None

    def _compile(self, facts: list[str]):
        """A runnable model for these input facts (outputs left for tract to infer)."""
        import tract

        graph = tract.onnx().load(str(self._path))
        for i, fact in enumerate(facts):
            graph.set_input_fact(i, fact)
        for i in range(graph.output_count()):
            graph.set_output_fact(i, None)
        return graph.into_model().into_runnable()

    def close(self) -> None:
        self._symbolic = None
        self._by_shape = {}
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def _runnable(self, inputs: list[np.ndarray]):
        if self._symbolic is not None:
            return self._symbolic
        facts = []
        for name, value in zip(self.input_names, inputs):
            if value.dtype not in _FACT_TYPES:
                raise RunnerFailed(f"tract runner: input {name!r} has element type "
                                   f"{value.dtype}, which tract does not take")
            facts.append(",".join([*map(str, value.shape), _FACT_TYPES[value.dtype]]))
        key = tuple(facts)
        if key not in self._by_shape:
            try:
                self._by_shape[key] = self._compile(facts)
            except Exception as exc:
                raise RunnerFailed(f"tract cannot compile it for inputs {'; '.join(facts)} "
                                   f"({one_line(exc)})", str(exc)) from None
        return self._by_shape[key]

    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None
             ) -> dict[str, np.ndarray]:
        names = outputs or self.output_names
        try:
            inputs = [np.ascontiguousarray(feeds[n]) for n in self.input_names]
        except KeyError as exc:
            raise RunnerFailed(f"tract runner: no value for input {exc}") from None
        runnable = self._runnable(inputs)
        try:
            values = [t.to_numpy() for t in runnable.run(inputs)]
        except Exception as exc:
            raise RunnerFailed(f"tract failed to run it ({one_line(exc)})", str(exc)) from None
        by_name = dict(zip(self.output_names, values))
        missing = [n for n in names if n not in by_name]
        if missing:
            raise RunnerFailed(f"tract runner: no output named {', '.join(missing)}")
        return {n: by_name[n] for n in names}
