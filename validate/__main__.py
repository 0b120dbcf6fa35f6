"""`python -m validate [ARTIFACTS | MODEL.onnx]`: parity, accuracy and latency of ONNX models
in every runtime that can run here.

An artifacts folder: both frameworks' models against their native references. One ONNX
file: a LeNet-5 model of this toolkit is checked against its contract and metadata, the
test_data_set_* folders beside it and, when present, the reference.npz beside it; any other
ONNX model against the outputs stored in its test_data_set_* folders. Each model runs in a
child process with a memory and a time limit.

Needs onnxruntime and numpy only (plus Node.js and Chromium for those runtimes). Exit status:
0 passed, 1 failed, 2 bad input (or a model past its limits), 3 a crash.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # first of all: a clone's first run installs what the rest imports
    from convert.bootstrap import ensure_environment

    ensure_environment(sys.argv[1:], "validate")

import argparse
from pathlib import Path

from convert.errors import ArgumentParser, ToolkitError, cli_call
from convert.fileio import append_text
from convert.lock import shared_lock
from train.recipe import FRAMEWORKS
from validate.latency import DEFAULT_ROUNDS, QUICK_ROUNDS
from validate.parity import Tolerances
from validate.sandbox import Limits


def frameworks_arg(text: str) -> tuple[str, ...]:
    """Parse a comma-separated subset of torch,tf."""
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names or any(n not in FRAMEWORKS for n in names):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of torch,tf; "
                                         f"got {text!r}")
    return names


def runtimes_arg(text: str) -> tuple[str, ...]:
    """Parse `all` or a comma-separated list of runner keys."""
    from validate.runners import runner_keys

    keys = runner_keys()
    if text.strip() == "all":
        return keys
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names or any(n not in keys for n in names):
        raise argparse.ArgumentTypeError(f"expected 'all' or a comma-separated subset of "
                                         f"{','.join(keys)}; got {text!r}")
    return names


def rounds_arg(text: str) -> int:
    """--latency-rounds: a whole number, 1 to 100."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a whole number of rounds, 1 to 100; "
                                         f"got {text!r}")
    return value


def add_validate_args(p: argparse.ArgumentParser, positional: bool) -> None:
    """Validation flags (and, for the validator itself, what to validate)."""
    d, lim = Tolerances(), Limits()
    if positional:
        p.add_argument("target", nargs="?", type=Path, default=Path("artifacts"),
                       help="artifacts folder (default artifacts/) or one .onnx file")
        p.add_argument("--frameworks", type=frameworks_arg, default=FRAMEWORKS,
                       help="comma-separated subset of torch,tf (default both)")
        p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (test images)")
        p.add_argument("--quick", action="store_true", help="short latency runs")
        p.add_argument("--output", type=Path, default=None,
                       help="folder for report.json / report.md (default: the artifacts "
                            "folder; for one .onnx file, none unless given)")
    p.add_argument("--runtimes", type=runtimes_arg, default=None,
                   help="'all' (default: every runtime; those that cannot run here are "
                        "reported unavailable) or a list of cpu,cuda,reference,node,wasm,"
                        "browser (a runtime named here must be available)")
    p.add_argument("--no-latency", dest="latency", action="store_false",
                   help="skip latency measurements")
    p.add_argument("--latency-rounds", type=rounds_arg, default=None, metavar="N",
                   help=f"rounds per latency configuration, the runtimes' rounds interleaved "
                        f"(default {DEFAULT_ROUNDS}, {QUICK_ROUNDS} with --quick; the report "
                        "gives the median and the spread)")
    p.add_argument("--layers", action="store_true",
                   help="compare every layer with the native model even when parity passes")
    p.add_argument("--atol", type=float, default=d.atol,
                   help="max |probability diff| for every CPU runtime (default: each "
                        "runtime's own, 1e-5)")
    p.add_argument("--cuda-atol", type=float, default=d.cuda_atol,
                   help="the same on CUDA (default 1e-4)")
    p.add_argument("--rtol", type=float, default=d.rtol,
                   help=f"relative tolerance for the stored outputs of a model that is not "
                        f"LeNet-5 (default {d.rtol:g})")
    p.add_argument("--min-agreement", type=float, default=d.min_agreement,
                   help=f"top-1 agreement required, 0..1 (default {d.min_agreement:g})")
    p.add_argument("--max-memory", type=int, default=lim.memory_mb, metavar="MIB",
                   help=f"memory limit per model, MiB (default {lim.memory_mb})")
    p.add_argument("--timeout", type=float, default=lim.timeout_s, metavar="SECONDS",
                   help=f"time limit per model (default {lim.timeout_s:g})")
    p.add_argument("--summary", type=Path, default=None, metavar="PATH",
                   help="append the short Markdown verdict to PATH (e.g. $GITHUB_STEP_SUMMARY)")


def tolerances(args: argparse.Namespace) -> Tolerances:
    """Tolerances from parsed flags."""
    return Tolerances(atol=args.atol, cuda_atol=args.cuda_atol, min_agreement=args.min_agreement,
                      rtol=args.rtol)


def options(args: argparse.Namespace, quick: bool, data_dir: str | None):
    """Validation options from parsed flags."""
    from validate.worker import Options
    from validate.runners import runner_class, runner_keys

    for key in args.runtimes or ():  # named: unavailable is an error, said once, before any work
        reason = runner_class(key).availability()
        if reason:
            raise ToolkitError(f"runtime {key} ({runner_class(key).name}) is unavailable here: "
                               f"{reason}")
    return Options(tolerances=tolerances(args), runtimes=args.runtimes or runner_keys(),
                   required=args.runtimes or (), quick=quick, latency=args.latency,
                   latency_rounds=args.latency_rounds, data_dir=data_dir, layers=args.layers)


def limits(args: argparse.Namespace) -> Limits:
    """Containment limits from parsed flags."""
    return Limits(memory_mb=args.max_memory, timeout_s=args.timeout)


def validate_and_report(target: Path, frameworks: tuple[str, ...], opts, lim: Limits,
                        output: Path | None, summary: Path | None = None) -> tuple[int, dict]:
    """Validate, write the reports, print failures; return (exit status, report)."""
    from validate import core, report

    result = core.validate(target, frameworks, opts, lim)
    result["command"] = command_line()
    print("\n".join(report.main_table(result)))
    if output is not None:
        paths = report.write(result, output, opts.data_dir)
        print(f"\nreports: {', '.join(str(p) for p in paths)}")
    else:
        print("\n".join([""] + report.runtime_rows(result)))
    if summary is not None:
        append_text(summary, report.summary(result))
    for line in core.errors(result) + core.failures(result):
        print(line, file=sys.stderr)
    return core.exit_status(result), result


def command_line() -> str:
    """How this run was started, for "how to reproduce" in the reports."""
    import shlex

    main_file = Path(sys.argv[0])
    module = main_file.parent.name if main_file.name == "__main__.py" else main_file.stem
    return f"python -m {module} {shlex.join(sys.argv[1:])}".strip()


def run_validate(args: argparse.Namespace) -> int:
    """Run from parsed arguments (shared with `python -m convert validate`)."""
    target = args.target
    output = args.output or (None if target.suffix == ".onnx" or target.is_file() else target)
    with shared_lock(target, "validation"):  # an artifacts folder; nothing for one file
        return validate_and_report(target, args.frameworks,
                                   options(args, args.quick, args.data_dir), limits(args), output,
                                   args.summary)[0]


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = ArgumentParser(prog="python -m validate", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_validate_args(p, positional=True)
    args = p.parse_args(argv)
    return cli_call(lambda: run_validate(args))


if __name__ == "__main__":
    sys.exit(main())
