"""Phase 2 for one runner: what it produced (phase 1's record) judged against the native
reference: parity, noise floor, batch invariance, determinism, stored test sets; and the
clauses that say why a record or a model's integrity check failed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from validate.compare import parity as par
from validate.options import Options
from validate.runners import runner_class


INVARIANCE_IMAGES = 256   # batch 1 vs batch 256 on these many test images


MAX_FLIP_PREDICTIONS = 200  # flipped images whose two predictions the report keeps


HISTOGRAM_EDGES = [0.0] + [10.0 ** e for e in range(-12, 1)]  # |diff| bins for the report


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


def confusion(probabilities: np.ndarray, labels: np.ndarray) -> list[list[int]]:
    """10x10 counts: rows are true classes, columns predicted classes."""
    m = np.zeros((10, 10), dtype=np.int64)
    np.add.at(m, (labels.astype(np.int64), probabilities.argmax(1)), 1)
    return m.tolist()


def integrity_clause(result: dict) -> str:
    """'SHA256SUMS: x does not match, y is missing', or ''."""
    integ = result.get("integrity")
    if not integ or integ["passed"]:
        return ""
    parts = [f"{n} does not match" for n in integ["mismatched"]]
    parts += [f"{n} is missing" for n in integ["missing"]]
    return f"{Path(integ['file']).name}: " + ", ".join(parts)
