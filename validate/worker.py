"""One model's validation, run inside a contained child process (validate.sandbox).

Two phases, as Polygraphy does: every runner runs first and its outputs are kept; then the
outputs are compared with the native reference, with the float64 reference (the noise
floor), across batch sizes and across reruns. numpy + onnx + onnxruntime only.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from convert.errors import ArtifactError, ToolkitError
from convert.native import read_history
from train import data
from validate import artifacts as art
from validate import conversion, layers, precision
from validate import parity as par
from validate import latency as lat
from validate import native, sandbox
from validate.latency import thread_counts
from validate.runners import Runner, RunnerFailed, RunnerUnavailable, runner_class

INVARIANCE_IMAGES = 256   # batch 1 vs batch 256 on these many test images
MAX_FLIP_PREDICTIONS = 200  # flipped images whose two predictions the report keeps
HISTOGRAM_EDGES = [0.0] + [10.0 ** e for e in range(-12, 1)]  # |diff| bins for the report


@dataclass(frozen=True)
class Options:
    """What to run and how to judge it (built once by the CLI, passed to every child)."""

    tolerances: par.Tolerances = field(default_factory=par.Tolerances)
    runtimes: tuple[str, ...] = ("cpu", "cuda", "reference")
    required: tuple[str, ...] = ()    # runtimes asked for by name: unavailable is an error
    quick: bool = False               # light latency runs
    latency: bool = True              # measure latency at all
    latency_rounds: int | None = None  # None: 5, or 3 with quick
    data_dir: str | None = None
    layers: bool = False              # per-layer comparison even when parity passes


@dataclass
class RunnerOutput:
    """Phase 1: what one runner produced."""

    key: str
    name: str
    tolerance: float
    description: str
    exact: bool
    status: str = "ran"               # ran | unavailable | failed
    reason: str = ""
    load_seconds: float = 0.0
    probabilities: np.ndarray | None = None
    batch1: np.ndarray | None = None
    batch256: np.ndarray | None = None
    rerun: np.ndarray | None = None
    test_sets: list[dict] = field(default_factory=list)
    latency: list[dict] = field(default_factory=list)


# -- phase 1: run -----------------------------------------------------------------------------
def _guard(cls: type[Runner]):
    """In-process runtimes run under the address-space cap; the others are started without
    it (they reserve large ranges) and bounded by the parent's resident-memory watchdog."""
    return contextlib.nullcontext() if cls.in_process else sandbox.address_space_unlimited()


def _memory_check(exc: RunnerFailed) -> None:
    """An allocation that failed under the cap is the memory limit, not the runtime's fault."""
    if sandbox.capped() and sandbox.memory_failure(exc.detail):
        raise MemoryError(exc.detail)


def run_contract_runner(key: str, path: Path, images: np.ndarray,
                        sets: list[art.TestDataSet], opts: Options) -> RunnerOutput:
    """Load one runner on a LeNet-5-contract model and collect everything phase 2 needs."""
    cls = runner_class(key)
    out = RunnerOutput(key, cls.name, opts.tolerances.for_runner(key, cls.tolerance),
                       cls.description, cls.exact)
    reason = cls.availability()
    if reason:
        out.status, out.reason = "unavailable", reason
        return out
    sub = np.ascontiguousarray(images[:INVARIANCE_IMAGES])
    try:
        with _guard(cls):
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
        _memory_check(exc)
        out.status, out.reason = "failed", str(exc)
    return out


# -- latency: every runtime, native included, round by round in one window --------------------
def start_natives(folder: Path, framework: str, opts: Options
                  ) -> tuple[dict[int, native.NativeProcess], str | None]:
    """Start the native model's timing processes (one per thread count: TensorFlow fixes its
    thread pools at start-up) without waiting for them: the framework imports while the
    runtimes run phase 1. Returns them, or the reason the native model cannot be timed."""
    reason = native.availability(framework, folder)
    if reason:
        return {}, reason
    procs: dict[int, native.NativeProcess] = {}
    try:
        for threads in thread_counts():
            procs[threads] = native.NativeProcess(framework, folder, threads,
                                                  lat.cores_for(threads), opts.data_dir).start()
    except native.NativeFailed as exc:
        for p in procs.values():
            p.close()
        return {}, str(exc)
    return procs, None


def _timed_threads(cls: type[Runner]) -> list[int]:
    return thread_counts() if cls.latency_threads is None else list(cls.latency_threads)


def measure_latency(path: Path, outputs: list[RunnerOutput],
                    natives: dict[int, native.NativeProcess], images: np.ndarray,
                    opts: Options) -> tuple[list[dict], dict]:
    """Time the native model and every runner that ran, thread count by thread count, in
    interleaved rounds (validate.latency). Returns the latency rows and the conditions
    (rounds, plan, cores, load average at start and end, errors) for the report."""
    plan = lat.RoundPlan.for_run(opts.quick, opts.latency_rounds)
    conditions: dict = {"rounds": plan.rounds, "plan": plan.as_dict(), "cores": {},
                        "errors": []}
    ready: dict[int, native.NativeProcess] = {}
    for threads, proc in natives.items():  # all of them: a process still starting is noise
        try:
            conditions.setdefault("native_process", proc.wait_ready())
            ready[threads] = proc
        except native.NativeFailed as exc:
            conditions["errors"].append({"runtime": proc.runtime, "threads": threads,
                                         "error": str(exc)})
    origin = time.monotonic()
    conditions["load_average_start"] = lat.load_average()
    rows: list[dict] = []
    for threads in thread_counts():
        with lat.pinned(threads) as cores, contextlib.ExitStack() as stack:
            conditions["cores"][str(threads)] = cores
            subjects: list[lat.Subject] = []
            proc = ready.get(threads)
            if proc is not None:
                subjects.append(lat.Subject(proc.runtime, "cpu", threads, proc.timings,
                                            window=proc.window))
            for out in outputs:
                cls = runner_class(out.key)
                if out.status != "ran" or threads not in _timed_threads(cls):
                    continue
                try:
                    stack.enter_context(_guard(cls))
                    runner = stack.enter_context(cls(path, threads=threads))
                except (RunnerUnavailable, RunnerFailed) as exc:
                    conditions["errors"].append({"runtime": cls.name, "threads": threads,
                                                 "error": str(exc)})
                    continue
                subjects.append(lat.Subject(cls.runtime or cls.name, cls.provider, threads,
                                            runner.timings, runner=cls.name))
            print(f"[validate] {path.parent.name}: latency, {threads} thread"
                  f"{'s' * (threads > 1)}: {', '.join(s.label for s in subjects)} x batch "
                  f"{'/'.join(map(str, lat.BATCH_SIZES))}, {plan.rounds} interleaved rounds",
                  flush=True)
            lat.measure_rounds(subjects, images, plan,
                               failures=(RunnerFailed, native.NativeFailed))
        if proc is not None:
            proc.close()
        for s in subjects:
            rows += lat.rows(s, origin)
            if s.error:
                conditions["errors"].append({"runtime": s.label, "threads": threads,
                                             "error": s.error})
    conditions["load_average_end"] = lat.load_average()
    conditions["seconds"] = round(time.monotonic() - origin, 2)
    return rows, conditions


# -- phase 2: compare -------------------------------------------------------------------------
def histogram(diff: np.ndarray) -> dict:
    """Counts of |diff| per decade, for the report's plots."""
    counts, _ = np.histogram(np.clip(diff.ravel(), 0, 1), bins=HISTOGRAM_EDGES)
    return {"edges": HISTOGRAM_EDGES, "counts": counts.tolist()}


def judge(out: RunnerOutput, reference: np.ndarray, labels: np.ndarray,
          exact: np.ndarray | None, native_floor: float | None, opts: Options) -> dict:
    """Phase 2 for one runner: parity, noise floor, invariance, test sets."""
    rec: dict = {"runner": out.name, "key": out.key, "description": out.description,
                 "tolerance": out.tolerance}
    if out.status != "ran":
        rec |= {"status": out.status, "reason": out.reason, "passed": out.status != "failed"}
        return rec
    p = par.compare(out.probabilities, reference, labels, runner_class(out.key).provider,
                    out.tolerance, opts.tolerances.min_agreement)
    rec["parity"] = asdict(p)
    rec |= {"max_abs_diff": p.max_abs_diff, "mean_abs_diff": p.mean_abs_diff,
            "flip_count": p.flip_count, "flips": p.flips, "top1_agreement": p.top1_agreement,
            "accuracy": p.accuracy_onnxruntime, "accuracy_native": p.accuracy_native,
            "load_seconds": out.load_seconds}
    native_pred, run_pred = reference.argmax(1), out.probabilities.argmax(1)
    rec["flip_predictions"] = [[i, int(native_pred[i]), int(run_pred[i])]
                               for i in p.flips[:MAX_FLIP_PREDICTIONS]]
    diff = np.abs(out.probabilities.astype(np.float64) - reference.astype(np.float64))
    rec["diff_histogram"] = histogram(diff)
    if exact is not None:
        vs_exact = float(np.abs(out.probabilities.astype(np.float64) - exact).max())
        floor = max(vs_exact, native_floor or 0.0)
        rec |= {"vs_exact_max_abs_diff": vs_exact, "noise_floor": floor,
                "tolerance_check": par.tolerance_check(out.tolerance, floor)}
    else:
        rec |= {"vs_exact_max_abs_diff": None, "noise_floor": None,
                "tolerance_check": par.tolerance_check(out.tolerance, None)}
    n1 = len(out.batch1)
    b_diff = float(np.abs(out.batch1.astype(np.float64) - out.batch256[:n1]).max())
    rerun_same = bool(np.array_equal(out.batch256, out.rerun))
    rec["invariance"] = {
        "images": n1, "batch_sizes": [1, INVARIANCE_IMAGES],
        "batch_max_abs_diff": b_diff, "batch_passed": b_diff <= out.tolerance,
        "rerun_identical": rerun_same,
        "passed": b_diff <= out.tolerance and rerun_same}
    rec["test_data_sets"] = [s | {"passed": all(o["passed"] for o in s["outputs"].values())}
                             for s in out.test_sets]
    rec["latency"] = out.latency
    passed = bool(p.passed and rec["invariance"]["passed"]
                  and all(s["passed"] for s in rec["test_data_sets"]))
    rec["status"] = "passed" if passed else "failed"
    rec["passed"] = passed
    return rec


def failure_reasons(rec: dict) -> list[str]:
    """Why a runner's record failed, as clauses."""
    if rec["status"] == "failed" and rec.get("reason"):
        return [rec["reason"]]
    reasons = []
    if "parity" in rec and not rec["parity"]["passed"]:
        reasons.append(par.Parity(**rec["parity"]).failure())
    inv = rec["invariance"]
    if not inv["batch_passed"]:
        reasons.append(f"batch 1 vs batch {INVARIANCE_IMAGES} differ by "
                       f"{inv['batch_max_abs_diff']:.3g} > {rec['tolerance']:g}")
    if not inv["rerun_identical"]:
        reasons.append("two runs of the same images are not bit-identical")
    meta = rec.get("metadata_accuracy")
    if meta and not meta["passed"]:
        reasons.append(f"test accuracy {meta['measured']:.4f}, but its metadata records "
                       f"{meta['recorded']:.4f}")
    for s in rec.get("test_data_sets", []):
        for name, o in s["outputs"].items():
            if not o["passed"]:
                reasons.append(f"{Path(s['folder']).name}: output {name!r} "
                               + (o.get("reason") or f"max |diff| {o['max_abs_diff']:.3g}"))
    return reasons


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
        h = read_history(path.parent)
        result["training"] = {k: h.get(k) for k in (
            "architecture", "parameters", "recipe", "seconds", "images_per_second",
            "test_accuracy", "versions", "threads")} | {
            "epochs": len(h.get("epochs", [])), "history": h.get("epochs", [])}
    images, labels = data.load_test(opts.data_dir)
    images = data.to_float(images)
    if ref is None:
        # A deployer holding only the file: its test_data_set_* folders, and the accuracy its
        # producer recorded in the metadata, checked in every runtime.
        checked = validate_with_test_sets(path, model, sets, opts, contract=True, images=images,
                                          labels=labels)
        return result | checked

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
    reference = ref["probabilities"]
    exact_out = next((o for o in outputs if o.exact and o.status == "ran"), None)
    exact = exact_out.probabilities if exact_out else None
    native_floor = (float(np.abs(reference.astype(np.float64) - exact).max())
                    if exact is not None else None)
    runtimes = {o.name: judge(o, reference, labels, exact, native_floor, opts) for o in outputs}

    cpu = runtimes.get("onnxruntime-cpu")
    if cpu is not None and "parity" in cpu:
        result["parity"] = cpu["parity"]
        probs = next(o.probabilities for o in outputs if o.key == "cpu")
        result["accuracy"] = {
            "native": cpu["parity"]["accuracy_native"],
            "onnxruntime": cpu["parity"]["accuracy_onnxruntime"],
            "per_class": {"native": par.per_class_accuracy(reference, labels),
                          "onnxruntime": par.per_class_accuracy(probs, labels)},
            "confusion": {"native": confusion(reference, labels),
                          "onnxruntime": confusion(probs, labels)},
        }
        result["predictions"] = probs.argmax(1)  # cross-framework section; not serialised
    else:
        result["accuracy"] = {"native": par.accuracy(reference, labels),
                              "per_class": {"native": par.per_class_accuracy(reference, labels)},
                              "confusion": {"native": confusion(reference, labels)}}
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
    result["latency"] = latency_rows
    if opts.latency:
        result["speedups"] = lat.speedups(latency_rows)
        if any("runner" not in r for r in latency_rows):
            native_status = "measured side by side, in a process of its own"
        else:  # the reason it could not start, or why each of its processes stopped
            native_status = "not measured: " + (native_reason or "; ".join(
                e["error"] for e in conditions.get("errors", [])
                if e["runtime"] == native.RUNTIMES.get(str(ref.get("framework", ""))))
                or "no native row")
        result["latency_conditions"] = conditions | {"native": native_status}
    result["labels_sha256"] = str(ref.get("test_labels_sha256", ""))
    failed = [name for name, r in runtimes.items() if not r["passed"]]
    result["failed_runtimes"] = failed
    passed = not failed and not facts["missing_metadata"]
    cpu_out = next((o for o in outputs if o.key == "cpu" and o.status == "ran"), None)
    if cpu_out is not None and precision.has_variants(path.parent):
        try:
            result["precision"] = precision.evaluate(path.parent, images, labels,
                                                     cpu_out.probabilities, opts.quick,
                                                     opts.latency, opts.latency_rounds)
        except ArtifactError as exc:  # stale or damaged variants: a failure, not the model's end
            result["precision"] = {"passed": False, "error": str(exc)}
        except RunnerFailed as exc:  # onnxruntime rejected a variant, or ran out of memory
            _memory_check(exc)
            result["precision"] = {"passed": False, "error": f"onnxruntime: {exc}"}
        passed = passed and result["precision"]["passed"]
    if reference_required and (path.parent / conversion.CONVERSION).is_dir():
        result["conversion"] = conversion.evaluate(path.parent.parent, path.parent.name,
                                                   images, labels)
        passed = passed and result["conversion"]["passed"]
        twin = path.parent / conversion.CONVERSION / conversion.TWIN_ONNX
        # Only a twin that ran and disagrees: a stale, missing or foreign file has its reason.
        twin_failed = any(r["passed"] is False and r["status"] == "ok"
                          and (r["key"] == "twin"
                               or str(r.get("file", "")).endswith(conversion.TWIN_ONNX))
                          for r in result["conversion"]["rows"])
        if twin_failed and twin.is_file():  # where the twin's function leaves the model's
            result["conversion"]["layers"] = _diagnose(twin, ref, "cpu")
    # Layer by layer: on demand, and whenever a runtime that can show its tensors failed.
    diagnosable = [o.key for o in outputs if runner_class(o.key).intermediates
                   and o.status == "ran" and not runtimes[o.name]["passed"]]
    if opts.layers or diagnosable:
        result["layers"] = _diagnose(path, ref, diagnosable[0] if diagnosable else "cpu")
    result["passed"] = bool(passed)
    return result


def _diagnose(model: Path, ref: dict, runner_key: str) -> dict:
    """validate.layers.diagnose, or the reason it could not run (never fails the model)."""
    try:
        return layers.diagnose(model, ref, runner_key)
    except (ToolkitError, RunnerUnavailable, RunnerFailed) as exc:
        return {"runner_key": runner_key, "rows": [], "first_divergence": None,
                "message": f"no layer-by-layer comparison: {exc}", "error": str(exc)}


def confusion(probabilities: np.ndarray, labels: np.ndarray) -> list[list[int]]:
    """10x10 counts: rows are true classes, columns predicted classes."""
    m = np.zeros((10, 10), dtype=np.int64)
    np.add.at(m, (labels.astype(np.int64), probabilities.argmax(1)), 1)
    return m.tolist()


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
        cls = runner_class(key)
        tol = opts.tolerances.for_runner(key, cls.tolerance)
        rtol = 0.0 if contract else opts.tolerances.rtol
        rec: dict = {"runner": cls.name, "key": key, "description": cls.description,
                     "tolerance": tol, "rtol": rtol}
        reason = cls.availability()
        if reason:
            runtimes[cls.name] = rec | {"status": "unavailable", "reason": reason,
                                        "passed": True}
            outputs.append(RunnerOutput(key, cls.name, tol, cls.description, cls.exact,
                                        "unavailable", reason))
            continue
        try:
            with _guard(cls), cls(path, threads=1) as runner:
                got = [runner.run(s.inputs, outputs=list(s.outputs)) for s in sets]
                again = (runner.run(sets[0].inputs, outputs=list(sets[0].outputs)) if sets
                         else None)
                probs = first = rerun = None
                if recorded is not None:
                    probs = runner.probabilities(images)
                    first = runner.probabilities(images[:INVARIANCE_IMAGES])
                    rerun = runner.probabilities(images[:INVARIANCE_IMAGES])
        except RunnerUnavailable as exc:
            runtimes[cls.name] = rec | {"status": "unavailable", "reason": str(exc),
                                        "passed": True}
            outputs.append(RunnerOutput(key, cls.name, tol, cls.description, cls.exact,
                                        "unavailable", str(exc)))
            continue
        except RunnerFailed as exc:
            _memory_check(exc)
            runtimes[cls.name] = rec | {"status": "failed", "reason": str(exc), "passed": False}
            continue
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
        runtimes[cls.name] = rec
    _check_required(outputs, opts)
    failed = [name for name, r in runtimes.items() if not r["passed"]]
    return {"runtimes": runtimes, "failed_runtimes": failed, "passed": not failed,
            "latency": [], "test_data_sets": [str(s.folder) for s in sets]}


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
    """Entry point of the child: a contract model or any other ONNX model, and the
    SHA256SUMS beside it when there is one."""
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


def integrity_clause(result: dict) -> str:
    """'SHA256SUMS: x does not match, y is missing', or ''."""
    integ = result.get("integrity")
    if not integ or integ["passed"]:
        return ""
    parts = [f"{n} does not match" for n in integ["mismatched"]]
    parts += [f"{n} is missing" for n in integ["missing"]]
    return f"{Path(integ['file']).name}: " + ", ".join(parts)
