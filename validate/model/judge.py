"""Phase 2 for a model export: one runner's outputs judged against the native ones by the gate
of validate.model.gate (every output, top-1 flips, accuracy where labels exist), batch
invariance, determinism and the stored test sets; and the clauses that say why it failed.
numpy only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from validate.compare import parity as par
from validate.model import gate
from validate.model.folder import SpecFolder
from validate.model.runs import Ran

MAX_LISTED = 200  # flipped inputs the report lists per output


def class_output(sf: SpecFolder) -> str | None:
    """The output that holds class scores: the first 2-D float output wide enough for every
    label (None without labels, or when no output fits)."""
    if sf.labels is None:
        return None
    for name, ref in sf.reference.items():
        if gate.is_float(ref) and ref.ndim == 2 and ref.shape[1] > int(sf.labels.max()):
            return name
    return None


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(1) == labels[:len(scores)]).mean())


def _output(ran: Ran, sf: SpecFolder, name: str, lim: float, scale: float,
            exact: dict | None, native_floor: float | None) -> dict:
    """One output of one runner: the gate's record, and its distance from the exact answer."""
    got = ran.outputs.get(name)
    if got is None:
        return {"passed": False, "reason": "not produced", "max_abs_diff": None}
    rec = gate.compare_output(got, sf.reference[name][:ran.inputs], lim, scale)
    for key in ("flips", "ties"):
        if key in rec:
            rec[key] = rec[key][:MAX_LISTED]
    if exact and name in exact and not ran.exact and gate.is_float(got):
        rec["vs_exact"] = gate.max_diff(got[:len(exact[name])], exact[name])
        rec["tolerance_check"] = par.tolerance_check(lim, max(rec["vs_exact"],
                                                              native_floor or 0.0))
    return rec


def _invariance(ran: Ran, limits: dict[str, float]) -> dict:
    """Batch 1 vs one batch (within each output's limit; integers equal), and the rerun."""
    diffs = {n: gate.max_diff(ran.batch1[n], ran.batchn[n]) for n in ran.batchn}
    ok = all(d <= limits.get(n, 0.0) for n, d in diffs.items())
    rerun = all(np.array_equal(ran.batchn[n], ran.rerun[n]) for n in ran.batchn)
    few = len(next(iter(ran.batchn.values()))) if ran.batchn else 0
    return {"images": few, "batch_sizes": [1, few], "batch_max_abs_diff": max(
        diffs.values(), default=0.0), "per_output": diffs, "batch_passed": bool(ok),
        "rerun_identical": bool(rerun), "passed": bool(ok and rerun)}


def _test_sets(ran: Ran, sf: SpecFolder, limits: dict[str, float]) -> list[dict]:
    out = []
    for s, got in zip(sf.sets, ran.test_sets):
        outputs = {n: par.outputs_close(got[n], want, limits.get(n, 0.0), 0.0)
                   for n, want in s.outputs.items()}
        out.append({"folder": str(s.folder), "outputs": outputs,
                    "passed": all(o["passed"] for o in outputs.values())})
    return out


def _summary(outs: dict[str, dict], min_agreement: float, n: int) -> dict:
    """Figures over every output: the worst relative difference, flips and ties."""
    flips = sum(o.get("flip_count", 0) for o in outs.values())
    ties = sum(len(o.get("ties", [])) for o in outs.values())
    width = sum(1 for o in outs.values() if "flip_count" in o)
    agreement = 1.0 - (flips - ties) / max(1, n * max(1, width))
    rel = [o["relative"] for o in outs.values() if o.get("relative") is not None]
    return {"max_relative_diff": max(rel, default=None), "flip_count": flips,
            "tie_count": ties, "top1_agreement": 1.0 - flips / max(1, n * max(1, width)),
            "flips_passed": bool(agreement >= min_agreement)}


def judge(ran: Ran, sf: SpecFolder, scales: dict[str, float], floors: dict, exact: dict | None,
          native_floors: dict, opts) -> dict:
    """One runner's record: per output, summary, accuracy, invariance, test sets, verdict."""
    rec: dict = {"runner": ran.name, "key": ran.key, "description": ran.description,
                 "tolerance": ran.tolerance, "inputs": ran.inputs}
    if ran.status != "ran":
        rec |= {"status": ran.status, "reason": ran.reason, "passed": ran.status != "failed"}
        return rec | ({"op": ran.op} if ran.op else {})
    limits = {n: gate.limit(ran.tolerance, scales[n], floors.get(n)) for n in sf.output_names}
    outs = {n: _output(ran, sf, n, limits[n], scales[n], exact, native_floors.get(n))
            for n in sf.output_names}
    rec |= {"load_seconds": ran.load_seconds, "outputs": outs,
            **_summary(outs, opts.tolerances.min_agreement, ran.inputs)}
    name = class_output(sf)
    if name and name in ran.outputs:
        rec["accuracy"] = accuracy(ran.outputs[name], sf.labels)
        rec["accuracy_native"] = accuracy(sf.reference[name][:ran.inputs], sf.labels)
    rec["diff_histogram"] = gate.relative_histogram(
        [(ran.outputs[n], sf.reference[n][:ran.inputs], scales[n]) for n in outs
         if n in ran.outputs])
    rec["invariance"] = _invariance(ran, limits)
    rec["test_data_sets"] = _test_sets(ran, sf, limits)
    rec["latency"] = ran.latency
    passed = (all(o["passed"] for o in outs.values()) and rec["flips_passed"]
              and rec["invariance"]["passed"] and all(s["passed"] for s in rec["test_data_sets"]))
    rec["status"] = "passed" if passed else "failed"
    rec["passed"] = bool(passed)
    return rec


def _output_clause(name: str, o: dict) -> str:
    if o.get("reason"):
        return f"output {name!r}: {o['reason']}"
    if o.get("kind") == "exact":
        return f"output {name!r}: {o['mismatches']} elements differ (integers must be equal)"
    return (f"output {name!r}: max |diff| {o['max_abs_diff']:.3g} > {o['limit']:.3g} (scale "
            f"{o['scale']:.3g}, relative {o['relative']:.3g})")


def failure_reasons(rec: dict) -> list[str]:
    """Why one runner's record failed, as clauses."""
    if rec["status"] == "failed" and rec.get("reason"):
        return [(f"operator {rec['op']}: " if rec.get("op") else "") + rec["reason"]]
    reasons = [_output_clause(n, o) for n, o in rec.get("outputs", {}).items()
               if not o["passed"]]
    if not rec.get("flips_passed", True):
        reasons.append(f"top-1 agreement {rec['top1_agreement']:.4%} ({rec['flip_count']} "
                       f"flips, {rec['tie_count']} of them ties within the gate)")
    inv = rec.get("invariance", {})
    if inv and not inv["batch_passed"]:
        reasons.append(f"batch 1 vs batch {inv['images']} differ by "
                       f"{inv['batch_max_abs_diff']:.3g}")
    if inv and not inv["rerun_identical"]:
        reasons.append("two runs of the same inputs are not bit-identical")
    for s in rec.get("test_data_sets", []):
        for n, o in s["outputs"].items():
            if not o["passed"]:
                reasons.append(f"{Path(s['folder']).name}: output {n!r} "
                               + (o.get("reason") or f"max |diff| {o['max_abs_diff']:.3g}"))
    return reasons
