"""Phase 1 for a model export: each runner loads model.onnx once and runs the real inputs (all
of them, or the first few for the slow and the exact runners), a few inputs one at a time and
together (batch invariance), the same inputs again (determinism), and every
test_data_set_* folder. Nothing is compared here. numpy + onnx + onnxruntime only.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np

from validate import sandbox
from validate.model.folder import SpecFolder
from validate.options import Options
from validate.runners import RunnerFailed, RunnerUnavailable, runner_class

# Inputs each runner runs. The float64 reference evaluator is pure numpy (seconds per input
# for a ResNet); Node.js, WebAssembly and the browser ship every tensor through a pipe or a
# page: both run the first inputs only, and the report says how many ("inputs").
SUBSET = {"reference": 16, "node": 64, "wasm": 64, "browser": 64}
LARGE_MODEL_BYTES = 20 << 20   # above this, the float64 reference runs LARGE_EXACT inputs
LARGE_EXACT = 8
INVARIANCE_INPUTS = 8          # batch 1 vs one batch of these, and a rerun of that batch
CHUNK = 32                     # inputs per call: bounded memory whatever the model


@dataclass
class Ran:
    """What one runner produced (or why it could not)."""

    key: str
    name: str
    tolerance: float
    description: str
    exact: bool
    status: str = "ran"                       # ran | unavailable | failed
    reason: str = ""
    op: str | None = None                     # the operator a failure names, when it does
    load_seconds: float = 0.0
    inputs: int = 0
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    batch1: dict[str, np.ndarray] = field(default_factory=dict)
    batchn: dict[str, np.ndarray] = field(default_factory=dict)
    rerun: dict[str, np.ndarray] = field(default_factory=dict)
    test_sets: list[dict[str, np.ndarray]] = field(default_factory=list)
    latency: list[dict] = field(default_factory=list)


def inputs_for(key: str, sf: SpecFolder) -> int:
    """How many of the export's inputs runner KEY runs."""
    n = SUBSET.get(key, sf.count)
    if key == "reference" and sf.path.stat().st_size > LARGE_MODEL_BYTES:
        n = min(n, LARGE_EXACT)
    return min(n, sf.count)


def op_in(message: str, op_types: set[str]) -> str | None:
    """The graph's operator a runtime's message names (the first one it mentions), or None."""
    hits = [(m.start(), op) for op in op_types
            for m in [re.search(rf"(?<![A-Za-z0-9_]){re.escape(op)}(?![A-Za-z0-9_])", message)]
            if m is not None]
    return min(hits)[1] if hits else None


def graph_ops(sf: SpecFolder) -> set[str]:
    """Every operator type of the graph (subgraphs not included)."""
    return {n.op_type for n in sf.model.graph.node}


def run_runner(key: str, sf: SpecFolder, opts: Options) -> Ran:
    """Load one runner on the export's model.onnx and collect everything phase 2 needs."""
    cls = runner_class(key)
    out = Ran(key, cls.name, opts.tolerances.for_runner(key, cls.tolerance), cls.description,
              cls.exact)
    reason = opts.unavailable.get(key, "")  # decided once, in the parent (Options)
    if reason:
        out.status, out.reason = "unavailable", reason
        return out
    out.inputs = inputs_for(key, sf)
    few = sf.first(min(INVARIANCE_INPUTS, out.inputs))
    try:
        with sandbox.memory_guard(cls):
            t0 = time.perf_counter()
            with cls(sf.path, threads=1) as runner:
                out.load_seconds = round(time.perf_counter() - t0, 3)
                out.outputs = runner.run(sf.first(out.inputs), batch_size=CHUNK)
                out.batch1 = runner.run(few, batch_size=1)
                out.batchn = runner.run(few)
                out.rerun = runner.run(few)
                out.test_sets = [runner.run(s.inputs, outputs=list(s.outputs))
                                 for s in sf.sets]
    except RunnerUnavailable as exc:
        out.status, out.reason = "unavailable", str(exc)
    except RunnerFailed as exc:
        sandbox.memory_check(exc)
        out.status, out.reason = "failed", str(exc)
        out.op = op_in(exc.detail, graph_ops(sf)) or op_in(str(exc), graph_ops(sf))
    return out
