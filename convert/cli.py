"""Argument parsing for `python -m convert`; every command calls one library function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from convert.errors import ToolkitError, cli_call
from train.__main__ import add_recipe_args
from train.recipe import FRAMEWORKS, Recipe

QUICK_LIMIT = 6000  # images in the --quick run's one epoch


def parser() -> argparse.ArgumentParser:
    """The whole CLI."""
    from validate.__main__ import add_validate_args, frameworks_arg

    p = argparse.ArgumentParser(
        prog="python -m convert",
        description="Train LeNet-5 on Fashion-MNIST in PyTorch and TensorFlow, export both to "
                    "ONNX, and validate the ONNX graphs against the trained models.",
        epilog="Exit status: 0 parity passed, 1 parity failed, 2 bad input, 3 a stage crashed.")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("all", help="data check, train + export both frameworks, validate")
    add_recipe_args(a)
    a.set_defaults(epochs=None)  # 30, or 1 with --quick
    a.add_argument("--frameworks", type=frameworks_arg, default=FRAMEWORKS,
                   help="comma-separated subset of torch,tf (default both)")
    a.add_argument("--quick", action="store_true",
                   help="one short epoch on a subset of 6,000 images, light latency runs "
                        "(smoke runs, CI)")
    a.add_argument("--force", action="store_true",
                   help="train again even if a model for the same recipe is present")
    add_validate_args(a, positional=False)

    t = sub.add_parser("train", help="train one framework (python -m train)")
    t.add_argument("framework", choices=FRAMEWORKS)
    add_recipe_args(t)

    e = sub.add_parser("export", help="export one trained model to ONNX, with references")
    e.add_argument("framework", choices=FRAMEWORKS)
    e.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    e.add_argument("--data-dir", default=None)
    e.add_argument("--quick", action="store_true", help="light native latency runs")
    e.add_argument("--native-latency-threads", type=int, default=None, help=argparse.SUPPRESS)

    v = sub.add_parser("validate", help="validate the ONNX models (python -m validate)")
    add_validate_args(v, positional=True)

    s = sub.add_parser("test", help="run the test suite (pytest; arguments passed on)")
    s.add_argument("pytest_args", nargs=argparse.REMAINDER)
    return p


def _export(args: argparse.Namespace) -> int:
    if args.framework == "torch":
        from convert import export_torch as side
    else:
        from convert import export_tf as side
    if args.native_latency_threads is not None:  # a child of the exporter: print JSON only
        print(json.dumps(side.native_latency(args.artifacts, args.data_dir,
                                             args.native_latency_threads, args.quick)))
        return 0
    print(f"[{args.framework}] exporting {args.artifacts / args.framework} to ONNX", flush=True)
    path = side.export(args.artifacts, args.data_dir, args.quick)
    print(f"[{args.framework}] wrote {path}, reference.npz and test_data_set_0/", flush=True)
    return 0


def _test(args: argparse.Namespace) -> int:
    import subprocess

    tests = Path(__file__).resolve().parent.parent / "tests"
    if not tests.is_dir():
        raise ToolkitError(f"{tests}: no test suite here; run the tests from a clone")
    return subprocess.run([sys.executable, "-m", "pytest", str(tests), *args.pytest_args],
                          cwd=tests.parent).returncode


def run(args: argparse.Namespace) -> int:
    """Dispatch one parsed command; return its exit status."""
    if args.command == "train":
        from train.__main__ import run as train_run

        recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                        limit=args.limit)
        train_run(args.framework, recipe, args.data_dir, args.artifacts)
        return 0
    if args.command == "export":
        return _export(args)
    if args.command == "validate":
        from validate.__main__ import run_validate

        return run_validate(args)
    if args.command == "test":
        return _test(args)
    from convert.pipeline import run_all
    from validate.__main__ import tolerances

    quick_or_full = (1, QUICK_LIMIT) if args.quick else (Recipe().epochs, None)
    recipe = Recipe(epochs=args.epochs if args.epochs is not None else quick_or_full[0],
                    batch_size=args.batch_size, seed=args.seed,
                    limit=args.limit if args.limit is not None else quick_or_full[1])
    return run_all(frameworks=args.frameworks, recipe=recipe, data_dir=args.data_dir,
                   artifacts=args.artifacts, force=args.force, quick=args.quick,
                   tolerances=tolerances(args))


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 passed, 1 parity failed, 2 bad input (one line), 3 a crash."""
    p = parser()
    # pytest's own options (-x, -k …) pass through `test` untouched.
    args, extra = p.parse_known_args(argv)
    if extra and args.command != "test":
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "test":
        args.pytest_args = extra + args.pytest_args
    return cli_call(lambda: run(args))
