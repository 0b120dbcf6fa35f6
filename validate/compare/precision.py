"""The INT8 and FP16 variants beside each FP32 model: accuracy gate, agreement, size, latency.

Each variant (made by `python -m convert quantize`) runs on all 10,000 test images in
onnxruntime's CPU execution provider and is compared with the FP32 model's probabilities.
Gate: INT8 may lose at most 1.0 accuracy point, FP16 at most 0.1 (counted in images, so no
rounding decides it). Latency of the FP32 model and both variants is measured here, side by
side, with 1 intra-op thread. numpy + onnx + onnxruntime only.

On an x86 CPU, onnxruntime has no float16 kernels for these operators: its optimiser folds
the FP16 graph's casts into float32 weights, so the CPU figures measure float16 *storage*
(weights rounded to float16), not float16 arithmetic; on CUDA it computes in float16.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from train.core.errors import ArtifactError
from train.core.fileio import sha256_file
from train.core.contract import REQUIRED_METADATA
from validate.artifacts import load_onnx
from validate.timing.latency import RoundPlan, Subject, measure_rounds, pinned, rows, speedups
from validate.report.text import title
from validate.runners.base import RunnerFailed
from validate.runners.ort import CPU, CpuRunner

PRECISIONS = ("int8", "fp16")
MAX_DROP_POINTS = {"int8": 1.0, "fp16": 0.1}  # accuracy points the variant may lose vs FP32
THREADS = 1             # onnxruntime intra-op threads for every timing here
LATENCY_BATCHES = (1, 256)


def variant_file(precision: str) -> str:
    """The file name of a precision variant (what `convert quantize` writes)."""
    return "lenet5.onnx" if precision == "fp32" else f"lenet5.{precision}.onnx"


def has_variants(folder: Path) -> bool:
    """Has `convert quantize` written any variant into `folder`?"""
    return any((folder / variant_file(p)).is_file() for p in PRECISIONS)


def time_precisions(paths: dict[str, Path], images: np.ndarray | dict[str, np.ndarray],
                    quick: bool, rounds: int | None,
                    batch_sizes: tuple[int, ...] = LATENCY_BATCHES
                    ) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """FP32 and the variants timed in interleaved rounds (validate.timing.latency), 1 thread, pinned:
    the rows per precision, and why a precision's timing stopped, where one did."""
    plan = RoundPlan.for_run(quick, rounds)
    with pinned(THREADS), contextlib.ExitStack() as stack:
        subjects = {}
        for precision, path in paths.items():
            runner = stack.enter_context(CpuRunner(path, threads=THREADS))
            subjects[precision] = Subject("onnxruntime", CPU, THREADS, runner.timings)
        measure_rounds(list(subjects.values()), images, plan, batch_sizes=batch_sizes,
                       failures=(RunnerFailed,))
    return ({precision: rows(s, 0.0) for precision, s in subjects.items()},
            {precision: s.error for precision, s in subjects.items() if s.error})


def _load_variant(folder: Path, precision: str, source_sha256: str) -> tuple[Path, dict]:
    """The variant's path and metadata, after the I/O contract and provenance checks."""
    path = folder / variant_file(precision)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; run `python -m convert quantize` first")
    meta = {p.key: p.value for p in load_onnx(path).metadata_props}
    if meta.get("precision") != precision:
        raise ArtifactError(f"{path}: metadata says precision {meta.get('precision')!r}, "
                            f"expected {precision!r}")
    if meta.get("source_sha256") != source_sha256:
        raise ArtifactError(f"{path}: made from another {folder / 'lenet5.onnx'} (stale); run "
                            "`python -m convert quantize` again")
    return path, meta


def evaluate(folder: Path, test_images: np.ndarray, labels: np.ndarray,
             fp32_probabilities: np.ndarray, quick: bool, latency: bool = True,
             rounds: int | None = None) -> dict:
    """Accuracy, gate, agreement, max |diff|, size and (unless `latency` is off) latency of
    each variant in `folder`, timed in `rounds` rounds (None: the validator's default).
    A variant onnxruntime cannot run raises RunnerFailed."""
    fp32_path = folder / variant_file("fp32")
    labels = np.asarray(labels)
    n = len(labels)
    fp32_pred = np.asarray(fp32_probabilities).argmax(1)
    fp32_correct = int((fp32_pred == labels).sum())
    variants = {p: _load_variant(folder, p, sha256_file(fp32_path)) for p in PRECISIONS}
    result: dict = {"passed": True, "threads": THREADS, "images": n, "fp32": {
        "file": fp32_path.name, "bytes": fp32_path.stat().st_size,
        "accuracy": fp32_correct / n}}
    for precision, (path, meta) in variants.items():
        with CpuRunner(path, threads=THREADS) as runner:
            probs = runner.probabilities(test_images)
        pred = probs.argmax(1)
        correct = int((pred == labels).sum())
        finite = bool(np.isfinite(probs).all())
        # The gate in whole images: losing k of n images is k * 100 / n points.
        lost = fp32_correct - correct
        allowed = int(np.floor(MAX_DROP_POINTS[precision] * n / 100 + 1e-9))
        missing = [k for k in (*REQUIRED_METADATA, "precision") if k not in meta]
        entry = {
            "file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
            "converter": meta.get("precision_converter"),
            "accuracy": correct / n,
            "delta_points": round((correct - fp32_correct) * 100 / n, 4),
            "max_drop_points": MAX_DROP_POINTS[precision],
            "top1_agreement": float((pred == fp32_pred).mean()),
            "disagreements": int((pred != fp32_pred).sum()),
            "max_abs_diff": float(np.abs(probs - fp32_probabilities).max()) if finite else None,
            "finite": finite,
            "missing_metadata": missing,
        }
        if "calibration" in meta:
            entry["calibration"] = json.loads(meta["calibration"])
        entry["passed"] = bool(lost <= allowed and finite and not missing)
        result[precision] = entry
        result["passed"] = result["passed"] and entry["passed"]
    if not latency:
        return result
    timed, errors = time_precisions({"fp32": fp32_path} | {p: v[0] for p, v in variants.items()},
                             test_images, quick, rounds)
    for precision, rows_ in timed.items():
        result[precision]["latency"] = rows_
        if precision in errors:
            result[precision]["latency_error"] = errors[precision]
    for precision in PRECISIONS:
        entry = result[precision]
        entry["speed"] = speed(result["fp32"]["latency"], entry["latency"])
        entry["slower_than_fp32"] = [s["batch_size"] for s in entry["speed"] if s["slower"]]
    return result


def speed(fp32_rows: list[dict], variant_rows: list[dict]) -> list[dict]:
    """Per batch size, the variant's speed-up over FP32 (FP32 p50 / variant p50, > 1: faster),
    round by round as validate.timing.latency.speedups pairs them: median, range and the
    fastest rounds' ratio. `slower` when both the median and the fastest-rounds ratio are
    below 1: slower in the typical round and in the undisturbed one, not by noise alone."""
    paired = speedups(fp32_rows + [dict(r, runner="variant") for r in variant_rows])
    return [{"batch_size": s["batch_size"], "speedup": s["speedup"],
             "speedup_min": s["speedup_min"], "speedup_max": s["speedup_max"],
             "speedup_best": s["speedup_best"], "rounds": s["rounds"], "noisy": s["noisy"],
             "slower": s["speedup"] < 1 and s["speedup_best"] < 1} for s in paired]


def speed_text(entry: dict) -> str:
    """'batch 1 0.51x (0.45-0.55), batch 256 0.32x (0.30-0.35)': the speed-up per batch."""
    return ", ".join(f"batch {s['batch_size']} {_speedup(s)} over {s['rounds']} rounds)"
                     for s in entry.get("speed", []))


def _speedup(s: dict) -> str:
    """'0.51x (0.45-0.55': one batch size's median speed-up and the start of its range."""
    return f"{s['speedup']:.2f}x ({s['speedup_min']:.2f}-{s['speedup_max']:.2f}"


def warnings(framework: str, result: dict) -> list[str]:
    """One line per variant slower than FP32 (a warning, not a failure: the gate is
    accuracy), with the figures."""
    return [f"warning: {framework} {precision.upper()} ({result[precision]['file']}) is slower "
            f"than FP32 in onnxruntime CPU, {result['threads']} thread: "
            f"{speed_text(result[precision])}"
            for precision in PRECISIONS
            if result.get(precision, {}).get("slower_than_fp32")]


def failures(framework: str, result: dict) -> list[str]:
    """One line per failed gate, naming the model, the precision and the figures."""
    lines = []
    fp32 = result["fp32"]["accuracy"]
    for precision in PRECISIONS:
        e = result.get(precision)
        if not e or e["passed"]:
            continue
        what = f"{framework} {precision.upper()} ({e['file']})"
        if not e["finite"]:
            lines.append(f"precision gate failed: {what}: non-finite probabilities")
        elif e["missing_metadata"]:
            lines.append(f"precision gate failed: {what}: metadata_props missing "
                         f"{e['missing_metadata']}")
        else:
            lines.append(
                f"precision gate failed: {what}: accuracy {e['accuracy']:.4f} vs FP32 "
                f"{fp32:.4f} ({e['delta_points']:+.2f} points; at most "
                f"{e['max_drop_points']:g} may be lost), top-1 agreement "
                f"{e['top1_agreement']:.2%}")
    return lines


def _p50(entry: dict, batch: int) -> str:
    row = next((r for r in entry.get("latency", []) if r["batch_size"] == batch), None)
    if row is None:
        return "not timed" if "latency_error" in entry else "n/a"
    text = f"{row['p50_ms']:.3f} ms"
    if row.get("rounds"):  # the range of the round p50s
        text += (f" ({row['p50_min_ms']:.3f}-{row['p50_max_ms']:.3f}"
                 + (", NOISY" if row["noisy"] else "") + ")")
    return text


def _speed_cell(entry: dict) -> str:
    """Speed-up per batch size, SLOWER where the variant loses to FP32."""
    if not entry.get("speed"):
        return "n/a"
    return "; ".join(f"b{s['batch_size']} {_speedup(s)})" + (" SLOWER" if s["slower"] else "")
                     for s in entry["speed"])


def markdown(results: dict[str, dict]) -> list[str]:
    """The report's section: one table, every model at every precision."""
    calibration = next((r["int8"]["calibration"] for r in results.values()
                        if "calibration" in r.get("int8", {})), None)
    cal = (f"{calibration['images']} training images ({calibration['selection']})"
           if calibration else "training images")
    threads = next(iter(results.values()))["threads"] if results else THREADS
    lines = ["## Quantized and half-precision models", "",
             f"INT8: onnxruntime static quantization (QDQ, per-channel int8 weights, uint8 "
             f"activations, MinMax) calibrated on {cal}, never test images. FP16: "
             "onnxconverter-common, float16 weights and activations, float32 input and "
             "output. All on the 10,000 test images in onnxruntime CPU; gate: INT8 loses at "
             f"most {MAX_DROP_POINTS['int8']:g} accuracy point, FP16 at most "
             f"{MAX_DROP_POINTS['fp16']:g}. Latency: p50 with {threads} intra-op thread, the "
             "median over rounds interleaved across the three precisions (range of the round "
             "p50s in brackets). On an "
             "x86 CPU onnxruntime runs the FP16 graph in float32 with float16-rounded weights "
             "(no float16 kernels there).", "",
             "| model | precision | file | accuracy | Δ vs FP32 | top-1 agreement with FP32 | "
             "max abs diff vs FP32 | latency b1 | latency b256 | speed-up vs FP32 | gate |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for fw, r in results.items():
        f = r["fp32"]
        lines.append(f"| {title(fw)} | FP32 | {f['bytes'] / 1024:.0f} KiB | "
                     f"{f['accuracy']:.4f} | | | | {_p50(f, 1)} | {_p50(f, 256)} | | |")
        for precision in PRECISIONS:
            e = r.get(precision)
            if not e:
                continue
            diff = "n/a" if e["max_abs_diff"] is None else f"{e['max_abs_diff']:.2e}"
            gate = (f"{'PASS' if e['passed'] else 'FAIL'} (≤ {e['max_drop_points']:g} point"
                    f"{'s' * (e['max_drop_points'] != 1)} lost)")
            lines.append(
                f"| {title(fw)} | {precision.upper()} | {e['bytes'] / 1024:.0f} KiB | "
                f"{e['accuracy']:.4f} | {e['delta_points']:+.2f} points | "
                f"{e['top1_agreement']:.2%} ({e['disagreements']} differ) | {diff} | "
                f"{_p50(e, 1)} | {_p50(e, 256)} | {_speed_cell(e)} | {gate} |")
    lines += [f"- **{line}**" for fw, r in results.items() for line in warnings(fw, r)]
    lines += [f"- {title(fw)} {p.upper()}: latency not timed: {r[p]['latency_error']}"
              for fw, r in results.items() for p in ("fp32", *PRECISIONS)
              if "latency_error" in r.get(p, {})]
    return lines
