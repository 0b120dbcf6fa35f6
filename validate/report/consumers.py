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


def rows(models: dict[str, dict]) -> list[list[str]]:
    """One row per consumer (its name, then one cell per model of `models`: label -> its
    report entry), for both reports; [] when no LeNet-5 model was validated."""
    tables = {label: consumers(m) for label, m in models.items()
              if "error" not in m and m.get("kind") == "lenet5"}
    names = list(dict.fromkeys(n for table in tables.values() for n in table))
    return [[name] + [state_text(*tables[label].get(name, (NOT_RUN, "")))
                      for label in tables] for name in names]


def labels(models: dict[str, dict]) -> list[str]:
    """The models `rows` has a column for, in order."""
    return [label for label, m in models.items()
            if "error" not in m and m.get("kind") == "lenet5"]


def markdown(report: dict) -> list[str]:
    """The table for report.md: one row per consumer, one column per model ([] if none)."""
    table = rows(report["models"])
    if not table:
        return []
    columns = labels(report["models"])
    out = ["| consumer | " + " | ".join(title(label) for label in columns) + " |",
           "|---|" + "---|" * len(columns)]
    return out + ["| " + " | ".join(cell(c) for c in row) + " |" for row in table]
