"""The consumers table: for each shipped lenet5.onnx, which consumers load the file as it is
(every runtime it was run in, and the onnx2torch and onnx2tf round trips, which take the
shipped file unchanged), with the reason for any that do not. Built from the report alone."""

from __future__ import annotations

from validate.report.text import cell, title

ROUND_TRIPS = {"onnx2torch": "onnx2torch", "onnx2tf": "onnx2tf"}  # conversion row key -> name
LOADS, REFUSED, UNAVAILABLE, NOT_RUN = "loads", "refused", "unavailable", "not run"


def _runtime(record: dict) -> tuple[str, str]:
    """A runtime's record: it loaded the file unless it failed with a reason of its own (a
    parity failure has figures, not a reason: the file loaded and ran)."""
    if record["status"] == "unavailable":
        return UNAVAILABLE, record.get("reason", "")
    if record["status"] == "failed" and record.get("reason"):
        return REFUSED, record["reason"]
    return LOADS, ""


def _round_trip(row: dict) -> tuple[str, str]:
    """A round trip's conversion row: `ok` means the converter took the shipped file."""
    status = row["status"]
    if status == "ok":
        return LOADS, ""
    kind, _, why = status.partition(": ")
    if kind == "unavailable":
        return UNAVAILABLE, why
    if kind == "failed":
        return REFUSED, why
    return NOT_RUN, status  # missing or stale: the twins stage did not run on this file


def consumers(model: dict) -> dict[str, tuple[str, str]]:
    """consumer name -> (state, reason) for one validated model, in report order."""
    table = {name: _runtime(r) for name, r in model.get("runtimes", {}).items()}
    for row in model.get("conversion", {}).get("rows", []):
        if row["key"] in ROUND_TRIPS:
            table[ROUND_TRIPS[row["key"]]] = _round_trip(row)
    return table


def all_load(model: dict) -> bool:
    """Every consumer that could run here loaded the shipped file unchanged."""
    return all(state in (LOADS, UNAVAILABLE) for state, _ in consumers(model).values())


def state_text(state: str, reason: str) -> str:
    """One table cell: the state, and the reason when there is one."""
    return f"{state}: {reason}" if reason else state


def markdown(report: dict) -> list[str]:
    """The table for report.md: one row per consumer, one column per model ([] if none)."""
    models = {label: consumers(m) for label, m in report["models"].items()
              if "error" not in m and m.get("kind") == "lenet5"}
    if not models:
        return []
    names = list(dict.fromkeys(n for table in models.values() for n in table))
    out = ["| consumer | " + " | ".join(title(label) for label in models) + " |",
           "|---|" + "---|" * len(models)]
    for name in names:
        cells = [cell(state_text(*models[label].get(name, (NOT_RUN, "")))) for label in models]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out
