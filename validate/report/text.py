"""Text helpers both reports share: display names, percentages, Markdown cells."""

from __future__ import annotations

NAMES = {"torch": "PyTorch", "tf": "TensorFlow"}
NO_LATENCY = ("no latency measured: --no-latency, no model validated, or only models of other "
              "kinds (latency is timed for LeNet-5 models validated against their native "
              "model)")  # report.md and report.html


def percent(x: object) -> str:
    """0.999 -> 99.9%, 1.0 -> 100%: a threshold as given, never rounded up (both reports)."""
    return f"{float(x) * 100:.4f}".rstrip("0").rstrip(".") + "%"


def cell(text: str) -> str:
    """Text as one Markdown table cell: a "|" in it would end the cell."""
    return text.replace("|", "\\|")


def title(label: str) -> str:
    """A model's display name (a file's own name may hold any character: escaped for the
    tables; a backslash before "|" shows as "|" elsewhere in Markdown too)."""
    return cell(NAMES.get(label, label))
