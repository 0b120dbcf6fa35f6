"""The validation run: each model validated in a contained child process, results collected
into the report. numpy + onnx + onnxruntime only."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from train import data
from train.core.errors import ArtifactError, ToolkitError
from train.core.fileio import append_text, ensure_can_write
from train.core.lock import shared_lock
from validate import sandbox, worker
from validate.model import report as model_report
from validate.model.folder import MODEL, is_spec_folder, scaled_limits, spec_folders
from validate.options import Options
from validate.report import markdown, verdict
from validate.report.write import write
from validate.runners import cuda_status, runner_class
from validate.sandbox import Limits
from validate.timing.latency import METHOD

SCHEMA_VERSION = 3
MODEL_FILE = "lenet5.onnx"


def runner_table(opts: Options) -> dict:
    """Every runner asked for: what it is, its tolerance, and whether it can run here."""
    table = {}
    for key in opts.runtimes:
        cls = runner_class(key)
        reason = opts.unavailable.get(key, "")
        table[cls.name] = {"key": key, "description": cls.description,
                           "tolerance": opts.tolerances.for_runner(key, cls.tolerance),
                           "available": not reason, "reason": reason}
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
    """(label, model file, reference required) for each model to validate: one ONNX file, one
    model export (spec.json + model.onnx), or a folder holding LeNet-5's torch/ and tf/
    and/or model exports."""
    if target.is_file() or target.suffix == ".onnx":
        if not target.exists():
            raise ArtifactError(f"{target}: no such file")
        return [(target.parent.name if target.name == MODEL_FILE else target.stem, target,
                 False)]
    if not target.is_dir():
        raise ArtifactError(f"{target}: no artifacts folder; run `python -m convert all` "
                            "first")
    if is_spec_folder(target):  # one model export (docs/byom.md)
        return [(target.resolve().name, target / MODEL, False)]
    models = [(fw, target / fw / MODEL_FILE, True) for fw in frameworks]
    exports = [(f.name, f / MODEL, False) for f in spec_folders(target)]
    if exports and not any(path.exists() for _, path, _ in models):
        return exports
    models += exports  # an artifacts folder that also holds model exports: all of them
    if not any(path.exists() for _, path, _ in models):
        raise ArtifactError(f"{target}: no exported model ("
                            + ", ".join(f"{fw}/{MODEL_FILE}" for fw in frameworks)
                            + "); run `python -m convert all` first")
    return models


def validate(target: Path, frameworks: tuple[str, ...], opts: Options,
             limits: sandbox.Limits = sandbox.Limits()) -> dict:
    """Validate an artifacts folder's models, or one ONNX file; return the report."""
    models: dict[str, dict] = {}
    planned = plan(target, frameworks)
    if any(required for _, _, required in planned):
        # The test images that every LeNet-5 model of the folder reads: found and verified once
        # here, so that a bad --data-dir is one line, not one per model.
        opts = replace(opts, data_dir=str(data.ensure_files(opts.data_dir)))
    for label, path, required in planned:
        print(f"[validate] {label}: {path} in {', '.join(opts.runtimes)}", flush=True)
        try:
            lim = (scaled_limits(limits, path.stat().st_size)
                   if is_spec_folder(path.parent) else limits)
            models[label] = sandbox.run_contained(worker.validate_file,
                                                  (path, opts, required), lim, str(path))
            if lim != limits:
                models[label]["limits"] = asdict(lim)
        except ToolkitError as exc:
            models[label] = {"error": str(exc), "passed": False}
    report = {"schema_version": SCHEMA_VERSION,
              "passed": all(m["passed"] for m in models.values()),
              "target": str(target.resolve()),
              "environment": environment(),
              "tolerances": asdict(opts.tolerances),
              "limits": asdict(limits),
              "runners": runner_table(opts),
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


def validate_and_report(target: Path, frameworks: tuple[str, ...], opts: Options, lim: Limits,
                        output: Path | None, summary: Path | None = None) -> tuple[int, dict]:
    """Validate, write the reports, print failures; return (exit status, report)."""
    result = validate(target, frameworks, opts, lim)
    result["command"] = command_line()
    print("\n".join(markdown.main_table(result) + model_report.parity_table(result)))
    if output is not None:
        paths = write(result, output, opts.data_dir)
        print(f"\nreports: {', '.join(str(p) for p in paths)}")
    else:
        print("\n".join([""] + markdown.runtime_rows(result)))
    for line in verdict.warnings(result):  # not a failure: stdout, beside the table
        print(line)
    if summary is not None:
        append_text(summary, markdown.summary(result))
    for line in verdict.errors(result) + verdict.failures(result):
        print(line, file=sys.stderr)
    return verdict.exit_status(result), result


def command_line() -> str:
    """How this run was started, for "how to reproduce" in the reports."""
    main_file = Path(sys.argv[0])
    module = main_file.parent.name if main_file.name == "__main__.py" else main_file.stem
    return f"python -m {module} {shlex.join(sys.argv[1:])}".strip()


def validate_command(target: Path, frameworks: tuple[str, ...], opts: Options, lim: Limits,
                     output: Path | None, summary: Path | None) -> int:
    """`python -m validate` and `python -m convert validate`: the reports go into OUTPUT, else
    the artifacts folder (for one .onnx file: nowhere); the folder is held shared meanwhile."""
    output = output or (None if target.suffix == ".onnx" or target.is_file() else target)
    plan(target, frameworks)  # a target that is not there: its own line, nothing created
    for path in ([output / "report.json"] if output is not None else []) + (
            [summary] if summary is not None else []):
        ensure_can_write(path)  # an unwritable place is said before the validation, not after
    with shared_lock(target, "validation"):  # an artifacts folder; nothing for one file
        return validate_and_report(target, frameworks, opts, lim, output, summary)[0]
