"""The validation run: each model validated in a contained child process, results collected
into the report. numpy + onnx + onnxruntime only."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from convert.errors import ArtifactError, ToolkitError
from train import data
from validate import parity as par
from validate import conversion, layers, precision, sandbox, worker
from validate.latency import METHOD
from validate.runners import cuda_status, runner_class
from validate.worker import Options

SCHEMA_VERSION = 3
MODEL_FILE = "lenet5.onnx"


def runner_table(keys: tuple[str, ...], tol: par.Tolerances) -> dict:
    """Every runner asked for: what it is, its tolerance, and whether it can run here."""
    table = {}
    for key in keys:
        cls = runner_class(key)
        reason = cls.availability()
        table[cls.name] = {"key": key, "description": cls.description,
                           "tolerance": tol.for_runner(key, cls.tolerance),
                           "available": reason is None, "reason": reason or ""}
    return table


def environment() -> dict:
    """Versions, CPU and providers, for the report."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "numpy": np.__version__,
            "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "providers_available": ort.get_available_providers(),
            "cuda": asdict(cuda_status())}


def plan(target: Path, frameworks: tuple[str, ...]) -> list[tuple[str, Path, bool]]:
    """(label, model file, reference required) for each model to validate."""
    if target.is_file() or target.suffix == ".onnx":
        if not target.exists():
            raise ArtifactError(f"{target}: no such file")
        return [(target.parent.name if target.name == MODEL_FILE else target.stem, target,
                 False)]
    if not target.is_dir():
        raise ArtifactError(f"{target}: no artifacts folder; run `python -m convert all` "
                            "first")
    models = [(fw, target / fw / MODEL_FILE, True) for fw in frameworks]
    if not any(path.exists() for _, path, _ in models):
        raise ArtifactError(f"{target}: no exported model ("
                            + ", ".join(f"{fw}/{MODEL_FILE}" for fw in frameworks)
                            + "); run `python -m convert all` first")
    return models


def validate(target: Path, frameworks: tuple[str, ...], opts: Options,
             limits: sandbox.Limits = sandbox.Limits()) -> dict:
    """Validate an artifacts folder's models, or one ONNX file; return the report."""
    models: dict[str, dict] = {}
    for label, path, required in plan(target, frameworks):
        print(f"[validate] {label}: {path} in {', '.join(opts.runtimes)}", flush=True)
        try:
            models[label] = sandbox.run_contained(worker.validate_file,
                                                  (path, opts, required), limits, str(path))
        except ToolkitError as exc:
            models[label] = {"error": str(exc), "passed": False}
    report = {"schema_version": SCHEMA_VERSION,
              "passed": all(m["passed"] for m in models.values()),
              "target": str(target.resolve()),
              "environment": environment(),
              "tolerances": asdict(opts.tolerances),
              "limits": asdict(limits),
              "runners": runner_table(opts.runtimes, opts.tolerances),
              "latency_method": METHOD,
              "models": models}
    preds = {k: m.pop("predictions") for k, m in models.items() if "predictions" in m}
    if {"torch", "tf"} <= set(preds):
        t, f = models["torch"], models["tf"]
        report["cross_framework"] = {
            "agreement": float((preds["torch"] == preds["tf"]).mean()),
            "disagreements": int((preds["torch"] != preds["tf"]).sum()),
            "accuracy": {"torch": t["accuracy"]["onnxruntime"], "tf": f["accuracy"]["onnxruntime"]},
            "per_class": {"torch": t["accuracy"]["per_class"]["onnxruntime"],
                          "tf": f["accuracy"]["per_class"]["onnxruntime"],
                          "class_names": list(data.CLASS_NAMES)},
        }
    return report


def errors(report: dict) -> list[str]:
    """One `error: …` line per model that could not be validated (bad input, limits)."""
    return [f"error: {m['error']}" for m in report["models"].values() if "error" in m]


def failures(report: dict) -> list[str]:
    """One line per failing model: its first failure with the figures, then every other
    failure of that model as a short clause (CI logs get one line a model)."""
    return [line for label, m in report["models"].items() if "error" not in m
            for line in [model_failure(label, m)] if line]


def model_failure(label: str, m: dict) -> str:
    """The one line for a model ('' when it passed)."""
    parts: list[str] = []
    failed = [(name, r) for name, r in m.get("runtimes", {}).items() if not r["passed"]]
    if failed:
        name, r = failed[0]
        parts.append(f"parity failed: {label} ({name}): {'; '.join(worker.failure_reasons(r))}")
        if len(failed) > 1:
            parts.append(f"also failed in {', '.join(n for n, _ in failed[1:])}")
        if "layers" in m:
            parts.append(layer_clause(m["layers"]))
    if "conversion" in m and not m["conversion"]["passed"]:
        bad = conversion.failures(label, m["conversion"])
        rest = [b.split(": ", 1)[1].split(": ", 1)[0] for b in bad[1:]]
        lead = bad[0] if bad else f"conversion failed: {label}"
        if rest:
            lead += f"; also {', '.join(rest)}"
        if "layers" in m["conversion"]:
            lead += f"; twin.onnx: {layer_clause(m['conversion']['layers'])}"
        parts.append(lead)
    if "precision" in m and not m["precision"]["passed"]:
        if "error" in m["precision"]:
            parts.append(f"precision: {m['precision']['error']}")
        else:
            parts += precision.failures(label, m["precision"])
    if worker.integrity_clause(m):
        parts.append(worker.integrity_clause(m) if parts
                     else f"integrity failed: {label}: {worker.integrity_clause(m)}")
    if m["facts"].get("missing_metadata"):
        parts.append(f"{label}: metadata_props missing {m['facts']['missing_metadata']}")
    return "; ".join(parts)


def layer_clause(result: dict) -> str:
    """Where a failure starts, layer by layer, or why that is not known."""
    if result.get("error"):
        return result["message"]
    if result["first_divergence"]:
        return layers.failure_clause(result)
    return (f"not localized: every layer within tolerance on the {result['images']} diagnosis "
            "images")


def exit_status(report: dict) -> int:
    """2 if any model could not be validated, else 1 if any check failed, else 0."""
    if errors(report):
        return 2
    return 0 if report["passed"] else 1
