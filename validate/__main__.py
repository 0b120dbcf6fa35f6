"""`python -m validate [ARTIFACTS]`: parity, accuracy and latency of the ONNX models.

Needs onnxruntime and numpy only. Exit status: 0 parity passed, 1 failed, 2 bad input,
3 a crash.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from convert.errors import cli_call
from train.recipe import FRAMEWORKS
from validate.parity import Tolerances


def frameworks_arg(text: str) -> tuple[str, ...]:
    """Parse a comma-separated subset of torch,tf."""
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names or any(n not in FRAMEWORKS for n in names):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of torch,tf; "
                                         f"got {text!r}")
    return names


def add_validate_args(p: argparse.ArgumentParser, positional: bool) -> None:
    """Tolerance flags (and, for the validator itself, the artifacts folder)."""
    d = Tolerances()
    if positional:
        p.add_argument("artifacts", nargs="?", type=Path, default=Path("artifacts"),
                       help="artifacts folder (default artifacts/)")
        p.add_argument("--frameworks", type=frameworks_arg, default=FRAMEWORKS,
                       help="comma-separated subset of torch,tf (default both)")
        p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (test images)")
        p.add_argument("--quick", action="store_true", help="short latency runs")
    p.add_argument("--atol", type=float, default=d.atol,
                   help=f"max |probability diff| on CPU (default {d.atol:g})")
    p.add_argument("--cuda-atol", type=float, default=d.cuda_atol,
                   help=f"the same on CUDA (default {d.cuda_atol:g})")
    p.add_argument("--min-agreement", type=float, default=d.min_agreement,
                   help=f"top-1 agreement required, 0..1 (default {d.min_agreement:g})")


def tolerances(args: argparse.Namespace) -> Tolerances:
    """Tolerances from parsed flags."""
    return Tolerances(atol=args.atol, cuda_atol=args.cuda_atol, min_agreement=args.min_agreement)


def validate_and_report(artifacts: Path, frameworks: tuple[str, ...], tol: Tolerances,
                        quick: bool, data_dir: str | None) -> tuple[int, dict]:
    """Validate, write both reports, print failures; return (exit status, report)."""
    from validate import core, report

    result = core.validate(artifacts, frameworks, tol, quick=quick, data_dir=data_dir)
    json_path, md_path = report.write(result, artifacts)
    print("\n".join(report.main_table(result)))
    print(f"\nreports: {json_path} and {md_path}")
    bad = core.failures(result)
    for line in bad:
        print(line, file=sys.stderr)
    return (0 if result["passed"] else 1), result


def run_validate(args: argparse.Namespace) -> int:
    """Run from parsed arguments (shared with `python -m convert validate`)."""
    return validate_and_report(args.artifacts, args.frameworks, tolerances(args), args.quick,
                               args.data_dir)[0]


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(prog="python -m validate", description=__doc__)
    add_validate_args(p, positional=True)
    args = p.parse_args(argv)
    return cli_call(lambda: run_validate(args))


if __name__ == "__main__":
    sys.exit(main())
