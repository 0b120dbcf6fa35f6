"""`python -m validate.html ARTIFACTS|report.json [--data-dir D] [--output DIR] [--png NAME=PATH]`
rewrites report.html from a report.json, and saves any figure as a PNG (e.g. for a README).
Needs numpy and matplotlib only (no framework)."""

from __future__ import annotations

import sys

if __name__ == "__main__":  # first of all: a clone's first run installs what the rest imports
    from train.core.bootstrap import ensure_environment

    ensure_environment(sys.argv[1:], "validate.html")

import argparse
import json
from pathlib import Path

from train.core.errors import ArgumentParser, ArtifactError, ToolkitError, cli_call
from validate.report.figures import FIGURES, save_png
from validate.report.page import write_html


def _load(path: Path) -> dict:
    file = path / "report.json" if path.is_dir() else path
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ArtifactError(f"{file}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ArtifactError(f"{file}: not JSON ({exc})") from None
    if not (isinstance(report, dict) and "schema_version" in report
            and isinstance(report.get("models"), dict)):
        raise ArtifactError(f"{file}: not a report of `python -m validate` (no schema_version "
                            "and models)")
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point: report.json -> report.html (and PNG figures on request)."""
    p = ArgumentParser(prog="python -m validate.html", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", type=Path, nargs="?", default=Path("artifacts"),
                   help="artifacts folder or report.json (default artifacts/)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (flipped images)")
    p.add_argument("--output", type=Path, default=None,
                   help="folder for report.html (default: beside report.json)")
    p.add_argument("--png", action="append", default=[], metavar="NAME=PATH",
                   help=f"also save a figure as PNG ({', '.join(FIGURES)}); repeatable")
    args = p.parse_args(argv)

    def run() -> int:
        pngs = []
        for spec in args.png:  # every spec checked before anything is written
            name, _, path = spec.partition("=")
            if not name or not path:
                raise ToolkitError(f"--png {spec}: expected NAME=PATH")
            if name not in FIGURES:
                raise ToolkitError(f"--png {spec}: no figure {name!r} (one of "
                                   f"{', '.join(FIGURES)})")
            if Path(path).suffix.lower() != ".png":
                raise ToolkitError(f"--png {spec}: {path} does not end in .png")
            pngs.append((name, Path(path)))
        report = _load(args.report)
        folder = args.output or (args.report if args.report.is_dir() else args.report.parent)
        print(write_html(report, folder, args.data_dir))
        for name, path in pngs:
            print(save_png(report, name, path, args.data_dir))
        return 0

    return cli_call(run)


if __name__ == "__main__":
    sys.exit(main())
