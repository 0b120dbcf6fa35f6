"""One model export validated (docs/byom.md), inside the contained child (validate.sandbox):
every runner runs first (validate.model.runs), then each is judged against the native
outputs (validate.model.judge, gate in validate.model.gate), the float64 noise floor is
measured, a failure is located layer by layer with the native module names, the INT8/FP16
variants are gated (validate.model.variants), and the native model and onnxruntime are timed
side by side. What needs LeNet-5 (twins, the conversion matrix, the cross-framework
comparison, the consumers table) is not run, and the result says so.
numpy + onnx + onnxruntime only: the native model is timed in a process of its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from train.core.errors import ToolkitError
from train.core.layermap import read_layer_map
from validate import artifacts as art
from validate.diagnose import layers
from validate.model import folder as fo
from validate.model import gate, variants
from validate.model.judge import accuracy, class_output, judge
from validate.model.runs import Ran, run_runner
from validate.options import Options
from validate.runners import RunnerFailed, RunnerUnavailable, runner_class
from validate.timing import latency as lat
from validate.timing.measure import measure_latency, start_natives

REQUIRED_METADATA = ("model_spec", "source_framework")
LATENCY_BATCH = 32    # the larger batch timed beside batch 1 (at most the inputs there are)
TIMED = ("cpu", "cuda")  # onnxruntime, timed against the native model
LENET_ONLY = ("twins of the same weights in the other framework, the conversion matrix, the "
              "cross-framework comparison and the consumers table are LeNet-5 only")


def _facts(sf: fo.SpecFolder) -> dict:
    facts = art.model_facts(sf.path, sf.model)
    facts["missing_metadata"] = [k for k in REQUIRED_METADATA if k not in facts["metadata"]]
    facts["metadata"].pop("layer_map", None)  # long; layers.npz and the diagnosis show it
    return facts


def _spec(sf: fo.SpecFolder) -> dict:
    """What the report shows of spec.json."""
    keys = ("name", "framework", "factory", "kwargs", "seed", "checkpoint", "inputs",
            "outputs", "data", "weights", "export", "unmapped_layers", "variants")
    return {k: sf.doc[k] for k in keys if k in sf.doc}


def _phase1(sf: fo.SpecFolder, opts: Options) -> tuple[list[Ran], list[dict], dict, str | None]:
    """Every runner's outputs, then the native model and onnxruntime timed side by side."""
    natives, native_reason = (start_natives(sf.folder, sf.doc["framework"], opts)
                              if opts.latency else ({}, None))
    try:
        ran = [run_runner(k, sf, opts) for k in opts.runtimes]
        for o in ran:
            if o.key in opts.required and o.status == "unavailable":
                raise ToolkitError(f"runtime {o.key} ({o.name}) is unavailable here: {o.reason}")
        timed = [o for o in ran if o.key in TIMED and o.status == "ran"]
        batches = tuple(sorted({1, min(LATENCY_BATCH, sf.count)}))
        rows, conditions = (measure_latency(sf.path, timed, natives, sf.feeds, opts, batches)
                            if opts.latency else ([], {}))
    finally:
        for proc in natives.values():
            proc.close()
    for o in ran:
        o.latency = [r for r in rows if r.get("runner") == o.name]
    return ran, rows, conditions, native_reason


def _noise_floor(sf: fo.SpecFolder, ran: list[Ran]) -> tuple[dict, dict | None, dict, dict]:
    """(the report's noise floor, the exact outputs, the gate's floors, native vs exact)."""
    exact_ran = next((o for o in ran if o.exact and o.status == "ran"), None)
    exact = exact_ran.outputs if exact_ran else None
    floors = gate.floors(exact, [o.outputs for o in ran if o.status == "ran" and not o.exact])
    native = {n: gate.max_diff(sf.reference[n][:len(e)], e) for n, e in (exact or {}).items()
              if gate.is_float(e)}
    report = {"exact_runner": exact_ran.name if exact_ran else None,
              "inputs": exact_ran.inputs if exact_ran else 0,
              "outputs": {n: {"scale": gate.scale(sf.reference[n]),
                              "native_vs_exact": native.get(n), "floor": floors.get(n)}
                          for n in sf.output_names}}
    return report, exact, floors, native


def _accuracy(sf: fo.SpecFolder, runtimes: dict) -> dict | None:
    name = class_output(sf)
    if name is None:
        return None
    per = {r["runner"]: {"accuracy": r["accuracy"], "inputs": r["inputs"]}
           for r in runtimes.values() if "accuracy" in r}
    return {"output": name, "inputs": sf.count,
            "native": accuracy(sf.reference[name], sf.labels), "runtimes": per}


def diagnose(sf: fo.SpecFolder, runner_key: str, opts: Options) -> dict:
    """Every mapped layer (layer map version 2, native module names) of model.onnx run by
    RUNNER_KEY against layers.npz; the first divergence named (validate.diagnose.layers), or
    why no comparison could be made (never fails the model)."""
    cls = runner_class(runner_key)
    tol = opts.tolerances.for_runner(runner_key, cls.tolerance)
    unmapped = sf.doc.get("unmapped_layers", [])
    try:
        index, native = fo.native_layers(sf.folder)
        mapped = [s for s in read_layer_map(sf.model, str(sf.path)) if s["layer"] in native]
        if not mapped:
            raise ToolkitError(f"{sf.folder / fo.LAYERS}: none of the mapped layers recorded")
        feeds = {k: np.ascontiguousarray(v[index]) for k, v in sf.feeds.items()}
        runner, values = layers.run_layers(sf.model, mapped, feeds, runner_key)
        rows = layers.compare(mapped, values, native, tol)
    except (ToolkitError, RunnerUnavailable, RunnerFailed, IndexError) as exc:
        return {"runner_key": runner_key, "rows": [], "first_divergence": None,
                "message": f"no layer-by-layer comparison: {exc}", "error": str(exc),
                "unmapped": unmapped}
    result = {"runner": runner.name, "runner_key": runner_key, "images": int(len(index)),
              "unmapped": unmapped, **layers.summary(rows)}
    result["message"] = layers.failure_clause(result)  # with the number of inputs used
    return result


def _native_status(rows: list[dict], conditions: dict, reason: str | None) -> str:
    if any("runner" not in r for r in rows):
        return "measured side by side, in a process of its own"
    errors = "; ".join(e["error"] for e in conditions.get("errors", [])
                       if e["runtime"] in ("torch", "tensorflow"))
    return "not measured: " + (reason or errors or "no native row")


def validate_model(path: Path, opts: Options) -> dict:
    """Everything the report holds about one model export (PATH: its model.onnx)."""
    sf = fo.load(path.parent)
    result: dict = {"kind": "model", "facts": _facts(sf), "spec": _spec(sf),
                    "inputs": sf.count, "labels": sf.labels is not None,
                    "lenet_only": LENET_ONLY}
    ran, rows, conditions, native_reason = _phase1(sf, opts)
    floor, exact, floors, native = _noise_floor(sf, ran)
    scales = {n: gate.scale(sf.reference[n]) for n in sf.output_names}
    runtimes = {o.name: judge(o, sf, scales, floors, exact, native, opts) for o in ran}
    result |= {"runtimes": runtimes, "noise_floor": floor,
               "failed_runtimes": [n for n, r in runtimes.items() if not r["passed"]]}
    acc = _accuracy(sf, runtimes)
    if acc:
        result["model_accuracy"] = acc
    result["latency"] = rows
    if opts.latency:
        result["speedups"] = lat.speedups(rows)
        result["latency_conditions"] = conditions | {
            "native": _native_status(rows, conditions, native_reason)}
    passed = not result["failed_runtimes"] and not result["facts"]["missing_metadata"]
    cpu = next((o for o in ran if o.key == "cpu" and o.status == "ran"), None)
    if cpu is not None and variants.present(sf.folder):
        result["precision"] = variants.evaluate(sf, cpu.outputs, opts)
        passed = passed and result["precision"]["passed"]
    diagnosable = [o.key for o in ran if runner_class(o.key).intermediates
                   and o.status == "ran" and not runtimes[o.name]["passed"]]
    if opts.layers or diagnosable:
        result["layers"] = diagnose(sf, diagnosable[0] if diagnosable else "cpu", opts)
    result["passed"] = bool(passed)
    return result
