"""A model export's INT8 and FP16 variants (model.int8.onnx, model.fp16.onnx, when the export
wrote them) beside its FP32 graph, in onnxruntime CPU on every input: the gate LeNet-5's
variants have (validate.compare.precision), made for any outputs.

Gate, in whole inputs (losing k of n inputs is k x 100 / n points): with labels, INT8 may
lose at most 1.0 accuracy point against FP32, FP16 at most 0.1; without labels, the same
number of inputs may change their top-1 class against FP32 (on the first 2-D float output
with two columns or more). Every output's largest difference from FP32, relative to its
magnitude, is reported beside it; a non-finite output fails. Speed: FP32 and the variants
timed in interleaved rounds, 1 intra-op thread, pinned, at batch 1 and a larger batch, with
the speed-up verdict of validate.compare.precision.speed. numpy + onnx + onnxruntime only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from train.core.errors import ArtifactError
from train.core.fileio import sha256_file
from validate.artifacts import load_model
from validate.compare import precision
from validate.model import gate
from validate.model.folder import MODEL, SpecFolder
from validate.model.judge import class_output
from validate.model.runs import CHUNK
from validate.runners.base import RunnerFailed
from validate.runners.ort import CpuRunner
from validate import sandbox

PRECISIONS = precision.PRECISIONS
MAX_DROP_POINTS = precision.MAX_DROP_POINTS
GATE_TEXT = ("gate in whole inputs: with labels, INT8 may lose at most 1.0 accuracy point "
             "against FP32 and FP16 at most 0.1; without labels, as many inputs may change "
             "their top-1 class")
LATENCY_BATCH = 32


def variant_file(p: str) -> str:
    """model.int8.onnx, model.fp16.onnx (model.onnx for fp32)."""
    return MODEL if p == "fp32" else f"model.{p}.onnx"


def present(folder: Path) -> bool:
    return any((folder / variant_file(p)).is_file() for p in PRECISIONS)


def _load(folder: Path, p: str, source_sha256: str) -> Path:
    """The variant's path after its provenance checks (ArtifactError when stale or wrong)."""
    path = folder / variant_file(p)
    meta = {m.key: m.value for m in load_model(path).metadata_props}
    if meta.get("precision") != p:
        raise ArtifactError(f"{path}: metadata says precision {meta.get('precision')!r}, "
                            f"expected {p!r}")
    if meta.get("source_sha256") != source_sha256:
        raise ArtifactError(f"{path}: made from another {folder / MODEL} (stale); export the "
                            "model again")
    return path


def score_output(sf: SpecFolder) -> str | None:
    """The output whose top-1 class is compared: the labelled one, else the first 2-D float
    output with two columns or more."""
    return class_output(sf) or next(
        (n for n, r in sf.reference.items() if gate.is_float(r) and r.ndim == 2
         and r.shape[1] >= 2), None)


def _entry(p: str, path: Path, got: dict, fp32: dict, sf: SpecFolder) -> dict:
    """One variant's figures and gate."""
    n, name = sf.count, score_output(sf)
    finite = all(np.isfinite(v).all() for v in got.values() if gate.is_float(v))
    rel = {o: gate.max_diff(got[o], fp32[o]) / (gate.scale(fp32[o]) or 1.0) for o in fp32
           if gate.is_float(fp32[o])}
    entry = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
             "finite": bool(finite), "relative_error": rel,
             "max_drop_points": MAX_DROP_POINTS[p]}
    allowed = int(np.floor(MAX_DROP_POINTS[p] * n / 100 + 1e-9))
    lost = 0
    if name is not None:
        pred, ref = got[name].argmax(1), fp32[name].argmax(1)
        entry |= {"output": name, "top1_agreement": float((pred == ref).mean()),
                  "disagreements": int((pred != ref).sum())}
        lost = entry["disagreements"]
        if sf.labels is not None and name == class_output(sf):
            correct, base = int((pred == sf.labels).sum()), int((ref == sf.labels).sum())
            entry |= {"gate": "accuracy", "accuracy": correct / n, "fp32_accuracy": base / n,
                      "delta_points": round((correct - base) * 100 / n, 4)}
            lost = base - correct
        else:
            entry["gate"] = "top-1 agreement"
    else:
        entry["gate"] = "finite outputs only (no class output)"
    entry |= {"lost_inputs": int(lost), "allowed_inputs": allowed}
    entry["passed"] = bool(finite and lost <= allowed)
    return entry


def _timed(paths: dict[str, Path], sf: SpecFolder, result: dict, opts) -> None:
    batches = tuple(sorted({1, min(LATENCY_BATCH, sf.count)}))
    timed, errors = precision.time_precisions(paths, sf.feeds, opts.quick, opts.latency_rounds,
                                              batches)
    for p, rows in timed.items():
        result[p]["latency"] = rows
        if p in errors:
            result[p]["latency_error"] = errors[p]
    for p in paths:
        if p != "fp32":
            entry = result[p]
            entry["speed"] = precision.speed(result["fp32"]["latency"], entry["latency"])
            entry["slower_than_fp32"] = [s["batch_size"] for s in entry["speed"] if s["slower"]]


def evaluate(sf: SpecFolder, fp32: dict[str, np.ndarray], opts) -> dict:
    """Every variant present: gate, figures and (unless --no-latency) speed; a damaged or
    stale variant, or one onnxruntime rejects, is recorded as the precision's error."""
    paths: dict[str, Path] = {"fp32": sf.path}
    result: dict = {"passed": True, "threads": precision.THREADS, "inputs": sf.count,
                    "labels": sf.labels is not None,
                    "fp32": {"file": MODEL, "bytes": sf.path.stat().st_size}}
    try:
        source = sha256_file(sf.path)
        for p in PRECISIONS:
            if not (sf.folder / variant_file(p)).is_file():
                continue
            paths[p] = _load(sf.folder, p, source)
            with CpuRunner(paths[p], threads=precision.THREADS) as runner:
                got = runner.run(sf.feeds, batch_size=CHUNK)
            result[p] = _entry(p, paths[p], got, fp32, sf)
            result["passed"] = result["passed"] and result[p]["passed"]
        if opts.latency:
            _timed(paths, sf, result, opts)
    except ArtifactError as exc:
        return {"passed": False, "error": str(exc)}
    except RunnerFailed as exc:
        sandbox.memory_check(exc)
        return {"passed": False, "error": f"onnxruntime: {exc}"}
    return result


def failures(label: str, result: dict) -> list[str]:
    """One line per failed gate, with the figures."""
    lines = []
    for p in PRECISIONS:
        e = result.get(p)
        if not e or e["passed"]:
            continue
        what = f"precision gate failed: {label} {p.upper()} ({e['file']})"
        if not e["finite"]:
            lines.append(f"{what}: non-finite outputs")
        elif e["gate"] == "accuracy":
            lines.append(f"{what}: accuracy {e['accuracy']:.4f} vs FP32 {e['fp32_accuracy']:.4f} "
                         f"({e['delta_points']:+.2f} points; at most {e['max_drop_points']:g} "
                         f"may be lost: {e['allowed_inputs']} of {result['inputs']} inputs)")
        else:
            lines.append(f"{what}: top-1 class of {e['disagreements']} of {result['inputs']} "
                         f"inputs differs from FP32 (at most {e['allowed_inputs']})")
    return lines
