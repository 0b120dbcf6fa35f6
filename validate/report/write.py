"""Write the three reports: report.json for machines and CI, report.md and report.html for
people."""

from __future__ import annotations

from pathlib import Path

from train.core.fileio import write_json, write_text
from validate.report.markdown import markdown
from validate.report.page import write_html


def write(report: dict, folder: Path, data_dir: str | None = None) -> tuple[Path, ...]:
    """Write report.json, report.md and report.html atomically."""
    write_json(folder / "report.json", report)
    write_text(folder / "report.md", markdown(report))
    return folder / "report.json", folder / "report.md", write_html(report, folder, data_dir)
