"""The verdict: one line per failing model (what stderr, the summary and both reports say)
and the exit status."""

from __future__ import annotations

from validate.compare import conversion, precision
from validate.compare.judge import failure_reasons, integrity_clause
from validate.diagnose import layers
from validate.model import report as model_report

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
    if m.get("kind") == "model":  # a model export: its own clauses (validate.model.report)
        parts = model_report.failure_line(label, m, layer_clause(m["layers"])
                                          if "layers" in m else "")
    failed = [(name, r) for name, r in m.get("runtimes", {}).items()
              if not r["passed"] and m.get("kind") != "model"]
    if failed:
        name, r = failed[0]
        parts.append(f"parity failed: {label} ({name}): {'; '.join(failure_reasons(r))}")
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
    if "precision" in m and not m["precision"]["passed"] and m.get("kind") != "model":
        if "error" in m["precision"]:
            parts.append(f"precision: {m['precision']['error']}")
        else:
            parts += precision.failures(label, m["precision"])
    if integrity_clause(m):
        parts.append(integrity_clause(m) if parts
                     else f"integrity failed: {label}: {integrity_clause(m)}")
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


def warnings(report: dict) -> list[str]:
    """Lines that do not fail the run but a deployer must see: a quantized variant slower
    than the FP32 model it would replace."""
    return [line for label, m in report["models"].items()
            if "precision" in m and "error" not in m["precision"]
            for line in precision.warnings(label, m["precision"])]


def exit_status(report: dict) -> int:
    """2 if any model could not be validated, else 1 if any check failed, else 0."""
    if errors(report):
        return 2
    return 0 if report["passed"] else 1
