"""One model's validation, run inside a contained child process (validate.sandbox).

Two phases, as Polygraphy does: every runner runs first and its outputs are kept; then the
outputs are compared with the native reference, with the float64 reference (the noise
floor), across batch sizes and across reruns. numpy + onnx + onnxruntime only.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx

from train import data
from train.core.errors import ArtifactError, ToolkitError
from train.core.history import read_history
from validate import artifacts as art
from validate import sandbox
from validate.compare import conversion, precision
from validate.compare import parity as par
from validate.compare.judge import INVARIANCE_IMAGES, RunnerOutput, confusion, judge
from validate.diagnose import layers
from validate.model.flow import validate_model
from validate.model.folder import MODEL, is_spec_folder
from validate.options import Options
from validate.runners import RunnerFailed, RunnerUnavailable, runner_class
from validate.timing import latency as lat
from validate.timing import native
from validate.timing.measure import measure_latency, start_natives


def run_contract_runner(key: str, path: Path, images: np.ndarray,
                        sets: list[art.TestDataSet], opts: Options) -> RunnerOutput:
    """Load one runner on a LeNet-5-contract model and collect everything phase 2 needs."""
    cls = runner_class(key)
    out = RunnerOutput(key, cls.name, opts.tolerances.for_runner(key, cls.tolerance),
                       cls.description, cls.exact)
    reason = opts.unavailable.get(key, "")  # decided once, in the parent (Options)
    if reason:
        out.status, out.reason = "unavailable", reason
        return out
    sub = np.ascontiguousarray(images[:INVARIANCE_IMAGES])
    try:
        with sandbox.memory_guard(cls):
            t0 = time.perf_counter()
            with cls(path, threads=1) as runner:
                out.load_seconds = round(time.perf_counter() - t0, 3)
                out.probabilities = runner.probabilities(images)
                out.batch1 = runner.probabilities(sub[:cls.batch1_images], batch_size=1)
                out.batch256 = runner.probabilities(sub, batch_size=INVARIANCE_IMAGES)
                out.rerun = runner.probabilities(sub, batch_size=INVARIANCE_IMAGES)
                for s in sets:
                    got = runner.run(s.inputs, outputs=list(s.outputs))
                    out.test_sets.append({"folder": str(s.folder), "outputs": {
                        name: par.outputs_close(got[name], want, out.tolerance, 0.0)
                        for name, want in s.outputs.items()}})
    except RunnerUnavailable as exc:
        out.status, out.reason = "unavailable", str(exc)
    except RunnerFailed as exc:
        sandbox.memory_check(exc)
        out.status, out.reason = "failed", str(exc)
    return out


# -- one model ----------------------------------------------------------------------------------
def _check_required(outputs: list[RunnerOutput], opts: Options) -> None:
    for o in outputs:
        if o.key in opts.required and o.status == "unavailable":
            raise ToolkitError(f"runtime {o.key} ({o.name}) is unavailable here: {o.reason}")


def validate_lenet(path: Path, opts: Options, reference_required: bool,
                   model: onnx.ModelProto | None = None) -> dict:
    """Everything the report holds about one model that keeps the I/O contract (`model`: the
    file already loaded and checked, when the caller has it)."""
    model = model if model is not None else art.load_model(path)
    art.check_contract(model, path)
    facts = art.model_facts(path, model)
    ref_path = path.parent / "reference.npz"
    ref = art.load_reference(ref_path) if (reference_required or ref_path.exists()) else None
    sets = art.test_data_sets(path, model)
    result: dict = {"kind": "lenet5", "facts": facts}
    if (path.parent / "history.json").is_file():  # optional: a deployer may hold only the ONNX
        result["training"] = _training(read_history(path.parent))
    images, labels = data.load_test(opts.data_dir)
    images = data.to_float(images)
    if ref is None:
        # A deployer holding only the file: its test_data_set_* folders, and the accuracy its
        # producer recorded in the metadata, checked in every runtime.
        checked = validate_with_test_sets(path, model, sets, opts, contract=True, images=images,
                                          labels=labels)
        return result | checked
    outputs, latency_rows, conditions, native_reason = _run_runners(path, ref, images, sets,
                                                                    opts)
    runtimes = _judge_against_reference(result, outputs, ref, labels, opts)
    result["latency"] = latency_rows
    if opts.latency:
        result["speedups"] = lat.speedups(latency_rows)
        result["latency_conditions"] = conditions | {
            "native": _native_status(latency_rows, conditions, native_reason, ref)}
    result["labels_sha256"] = str(ref.get("test_labels_sha256", ""))
    failed = [name for name, r in runtimes.items() if not r["passed"]]
    result["failed_runtimes"] = failed
    passed = not failed and not facts["missing_metadata"]
    cpu_out = next((o for o in outputs if o.key == "cpu" and o.status == "ran"), None)
    if cpu_out is not None and precision.has_variants(path.parent):
        result["precision"] = _precision(path.parent, images, labels, cpu_out, opts)
        passed = passed and result["precision"]["passed"]
    if reference_required and (path.parent / conversion.CONVERSION).is_dir():
        result["conversion"] = _conversion(path, ref, images, labels, opts)
        passed = passed and result["conversion"]["passed"]
    # Layer by layer: on demand, and whenever a runtime that can show its tensors failed.
    diagnosable = [o.key for o in outputs if runner_class(o.key).intermediates
                   and o.status == "ran" and not runtimes[o.name]["passed"]]
    if opts.layers or diagnosable:
        result["layers"] = _diagnose(path, ref, diagnosable[0] if diagnosable else "cpu", opts)
    result["passed"] = bool(passed)
    return result


def _training(h: dict) -> dict:
    """The report's summary of a model's history.json."""
    return {k: h.get(k) for k in (
        "architecture", "parameters", "recipe", "seconds", "images_per_second",
        "test_accuracy", "versions", "threads")} | {
        "epochs": len(h.get("epochs", [])), "history": h.get("epochs", [])}


def _run_runners(path: Path, ref: dict, images: np.ndarray, sets: list[art.TestDataSet],
                 opts: Options) -> tuple[list[RunnerOutput], list[dict], dict, str | None]:
    """Phase 1: every runner's outputs (each with its latency rows), and the latency rows,
    conditions and why the native model could not be timed, if it could not."""
    natives, native_reason = (start_natives(path.parent, str(ref.get("framework", "")), opts)
                              if opts.latency else ({}, None))
    try:
        outputs = [run_contract_runner(k, path, images, sets, opts) for k in opts.runtimes]
        _check_required(outputs, opts)
        latency_rows, conditions = (measure_latency(path, outputs, natives, images, opts)
                                    if opts.latency else ([], {}))
    finally:
        for proc in natives.values():
            proc.close()
    for out in outputs:
        out.latency = [r for r in latency_rows if r.get("runner") == out.name]
    return outputs, latency_rows, conditions, native_reason


def _judge_against_reference(result: dict, outputs: list[RunnerOutput], ref: dict,
                             labels: np.ndarray, opts: Options) -> dict:
    """Phase 2: each runner against the native probabilities and the float64 one; adds the
    parity, accuracy, runtimes and noise floor to RESULT and returns the runtimes."""
    reference = ref["probabilities"]
    exact_out = next((o for o in outputs if o.exact and o.status == "ran"), None)
    exact = exact_out.probabilities if exact_out else None
    native_floor = (float(np.abs(reference.astype(np.float64) - exact).max())
                    if exact is not None else None)
    runtimes = {o.name: judge(o, reference, labels, exact, native_floor, opts) for o in outputs}
    result.update(_accuracy(runtimes.get("onnxruntime-cpu"), outputs, reference, labels))
    cuda = runtimes.get("onnxruntime-cuda")
    if cuda is not None:
        result["parity_cuda"] = (cuda["parity"] if "parity" in cuda else
                                 {"status": cuda["status"], "reason": cuda.get("reason", "")})
    result["runtimes"] = runtimes
    result["noise_floor"] = {
        "exact_runner": exact_out.name if exact_out else None,
        "native_vs_exact": native_floor,
        "runtimes": {name: r.get("vs_exact_max_abs_diff") for name, r in runtimes.items()
                     if r["status"] != "unavailable"}}
    return runtimes


def _accuracy(cpu: dict | None, outputs: list[RunnerOutput], reference: np.ndarray,
              labels: np.ndarray) -> dict:
    """parity, accuracy and predictions from onnxruntime on CPU, or the native accuracy alone
    when it has no parity."""
    if cpu is None or "parity" not in cpu:
        return {"accuracy": {"native": par.accuracy(reference, labels),
                             "per_class": {"native": par.per_class_accuracy(reference, labels)},
                             "confusion": {"native": confusion(reference, labels)}}}
    probs = next(o.probabilities for o in outputs if o.key == "cpu")
    return {
        "parity": cpu["parity"],
        "accuracy": {
            "native": cpu["parity"]["accuracy_native"],
            "onnxruntime": cpu["parity"]["accuracy_onnxruntime"],
            "per_class": {"native": par.per_class_accuracy(reference, labels),
                          "onnxruntime": par.per_class_accuracy(probs, labels)},
            "confusion": {"native": confusion(reference, labels),
                          "onnxruntime": confusion(probs, labels)},
        },
        "predictions": probs.argmax(1),  # cross-framework section; not serialised
    }


def _native_status(latency_rows: list[dict], conditions: dict, native_reason: str | None,
                   ref: dict) -> str:
    """Whether the native model was timed, or why not."""
    if any("runner" not in r for r in latency_rows):
        return "measured side by side, in a process of its own"
    # The reason it could not start, or why each of its processes stopped.
    return "not measured: " + (native_reason or "; ".join(
        e["error"] for e in conditions.get("errors", [])
        if e["runtime"] == native.RUNTIMES.get(str(ref.get("framework", ""))))
        or "no native row")


def _precision(folder: Path, images: np.ndarray, labels: np.ndarray, cpu_out: RunnerOutput,
               opts: Options) -> dict:
    """The quantized variants' evaluation; a failure of theirs is recorded, not raised."""
    try:
        return precision.evaluate(folder, images, labels, cpu_out.probabilities, opts.quick,
                                  opts.latency, opts.latency_rounds)
    except ArtifactError as exc:  # stale or damaged variants: a failure, not the model's end
        return {"passed": False, "error": str(exc)}
    except RunnerFailed as exc:  # onnxruntime rejected a variant, or ran out of memory
        sandbox.memory_check(exc)
        return {"passed": False, "error": f"onnxruntime: {exc}"}


def _conversion(path: Path, ref: dict, images: np.ndarray, labels: np.ndarray,
                opts: Options) -> dict:
    """The conversion matrix (--atol its limit), with the twin diagnosed layer by layer when
    it disagrees."""
    result = conversion.evaluate(path.parent.parent, path.parent.name, images, labels,
                                 opts.tolerances.atol)
    twin = path.parent / conversion.CONVERSION / conversion.TWIN_ONNX
    # Only a twin that ran and disagrees: a stale, missing or foreign file has its reason.
    twin_failed = any(r["passed"] is False and r["status"] == "ok"
                      and (r["key"] == "twin"
                           or str(r.get("file", "")).endswith(conversion.TWIN_ONNX))
                      for r in result["rows"])
    if twin_failed and twin.is_file():  # where the twin's function leaves the model's
        result["layers"] = _diagnose(twin, ref, "cpu", opts)
    return result


def _diagnose(model: Path, ref: dict, runner_key: str, opts: Options) -> dict:
    """validate.diagnose.layers.diagnose, its limits scaled by the tolerance the runner is
    judged by, or the reason it could not run (never fails the model)."""
    cls = runner_class(runner_key)
    try:
        return layers.diagnose(model, ref, runner_key,
                               opts.tolerances.for_runner(runner_key, cls.tolerance))
    except (ToolkitError, RunnerUnavailable, RunnerFailed) as exc:
        return {"runner_key": runner_key, "rows": [], "first_divergence": None,
                "message": f"no layer-by-layer comparison: {exc}", "error": str(exc)}


def _metadata_accuracy(model) -> float | None:
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        return float(meta["test_accuracy"])
    except (KeyError, ValueError):
        return None


def validate_with_test_sets(path: Path, model, sets: list[art.TestDataSet], opts: Options,
                            contract: bool, images: np.ndarray | None = None,
                            labels: np.ndarray | None = None) -> dict:
    """A model judged by its stored test_data_set_* outputs in every runner (and, for a
    contract model, by the test accuracy recorded in its metadata)."""
    recorded = _metadata_accuracy(model) if contract and images is not None else None
    if not sets and recorded is None:
        raise ArtifactError(f"{path}: no reference.npz, no test_data_set_* folder and no "
                            "test_accuracy metadata: nothing to validate against")
    runtimes = {}
    outputs = []
    for key in opts.runtimes:
        rec, unavailable = _judge_by_test_sets(key, path, sets, opts, contract, recorded, images,
                                               labels)
        runtimes[rec["runner"]] = rec
        if unavailable is not None:
            outputs.append(unavailable)
    _check_required(outputs, opts)
    failed = [name for name, r in runtimes.items() if not r["passed"]]
    return {"runtimes": runtimes, "failed_runtimes": failed, "passed": not failed,
            "latency": [], "test_data_sets": [str(s.folder) for s in sets]}


def _judge_by_test_sets(key: str, path: Path, sets: list[art.TestDataSet], opts: Options,
                        contract: bool, recorded: float | None, images: np.ndarray | None,
                        labels: np.ndarray | None) -> tuple[dict, RunnerOutput | None]:
    """One runner's record against the test sets (and the recorded accuracy), and, when the
    runner is unavailable, its output for the required-runtimes check."""
    cls = runner_class(key)
    tol = opts.tolerances.for_runner(key, cls.tolerance)
    rtol = 0.0 if contract else opts.tolerances.rtol
    rec: dict = {"runner": cls.name, "key": key, "description": cls.description,
                 "tolerance": tol, "rtol": rtol}

    def unavailable(reason: str) -> tuple[dict, RunnerOutput]:
        return (rec | {"status": "unavailable", "reason": reason, "passed": True},
                RunnerOutput(key, cls.name, tol, cls.description, cls.exact, "unavailable",
                             reason))

    reason = opts.unavailable.get(key, "")  # decided once, in the parent (Options)
    if reason:
        return unavailable(reason)
    try:
        with sandbox.memory_guard(cls), cls(path, threads=1) as runner:
            got = [runner.run(s.inputs, outputs=list(s.outputs)) for s in sets]
            again = (runner.run(sets[0].inputs, outputs=list(sets[0].outputs)) if sets
                     else None)
            probs = first = rerun = None
            if recorded is not None:
                probs = runner.probabilities(images)
                first = runner.probabilities(images[:INVARIANCE_IMAGES])
                rerun = runner.probabilities(images[:INVARIANCE_IMAGES])
    except RunnerUnavailable as exc:
        return unavailable(str(exc))
    except RunnerFailed as exc:
        sandbox.memory_check(exc)
        return rec | {"status": "failed", "reason": str(exc), "passed": False}, None
    rec["test_data_sets"] = [
        {"folder": str(s.folder),
         "outputs": {n: par.outputs_close(g[n], w, tol, rtol) for n, w in s.outputs.items()}}
        for s, g in zip(sets, got)]
    for s in rec["test_data_sets"]:
        s["passed"] = all(o["passed"] for o in s["outputs"].values())
    rerun_same = (all(np.array_equal(got[0][n], again[n]) for n in again) if sets else
                  bool(np.array_equal(first, rerun)))
    rec["invariance"] = {"rerun_identical": rerun_same, "passed": rerun_same,
                         "batch_passed": True, "batch_max_abs_diff": None, "images": 0}
    accuracy_ok = True
    if recorded is not None:
        acc = par.accuracy(probs, labels)
        accuracy_ok = round(acc, 6) == round(recorded, 6)
        rec["metadata_accuracy"] = {"recorded": recorded, "measured": acc,
                                    "passed": accuracy_ok}
    rec["passed"] = bool(rerun_same and accuracy_ok
                         and all(s["passed"] for s in rec["test_data_sets"]))
    rec["status"] = "passed" if rec["passed"] else "failed"
    return rec, None


def validate_foreign(path: Path, opts: Options, model: onnx.ModelProto | None = None) -> dict:
    """Any ONNX model (not ours): each runner's outputs against stored test_data_set_* ones."""
    model = model if model is not None else art.load_model(path)
    sets = art.test_data_sets(path, model)
    if not sets:
        raise ArtifactError(f"{path}: not a LeNet-5 model of this toolkit (inputs "
                            f"{art.describe(art.graph_inputs(model))}) and no test_data_set_* "
                            "folder beside it: nothing to validate against")
    facts = art.model_facts(path, model)
    facts["missing_metadata"] = []  # the metadata contract is ours, not theirs
    return {"kind": "foreign", "facts": facts,
            "inputs": {k: [int(v[0]), list(v[1])] for k, v in art.graph_inputs(model).items()},
            "outputs": [o.name for o in model.graph.output]
            } | validate_with_test_sets(path, model, sets, opts, contract=False)


def validate_file(path: Path, opts: Options, reference_required: bool = False) -> dict:
    """Entry point of the child: a model export (spec.json beside it, docs/byom.md), a
    contract model or any other ONNX model, and the SHA256SUMS beside it when there is one."""
    if path.name == MODEL and is_spec_folder(path.parent):
        result = validate_model(path, opts)
    else:
        model = art.load_model(path)
        if art.follows_contract(model):
            result = validate_lenet(path, opts, reference_required, model)
        else:
            if reference_required:
                art.check_contract(model, path)  # raises: an artifacts folder holds contract models
            result = validate_foreign(path, opts, model)
    integrity = art.check_sha256sums(path.parent)
    if integrity is not None:
        result["integrity"] = integrity
        result["passed"] = bool(result["passed"] and integrity["passed"])
    return result
