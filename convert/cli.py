"""Argument parsing for `python -m convert`; every command calls one library function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from train.core.errors import ArgumentParser, ArtifactError, ToolkitError, cli_call
from train.core.lock import shared_lock
from train.command import add_recipe_args, add_threads_arg
from train.core.contract import FRAMEWORKS
from train.core.threads import check_threads
from train.recipe import Recipe

QUICK_LIMIT = 6000  # images in the --quick run's one epoch


def parser() -> argparse.ArgumentParser:
    """The whole CLI."""
    from validate.options import add_validate_args

    p = ArgumentParser(
        prog="python -m convert",
        description="Train LeNet-5 on Fashion-MNIST in PyTorch and TensorFlow, export both to "
                    "ONNX, and validate the ONNX graphs against the trained models.",
        epilog="Exit status: 0 every gate passed, 1 a gate failed (parity, conversion, "
               "precision), 2 bad input, 3 a stage crashed.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_all(sub)
    t = sub.add_parser("train", help="train one framework (python -m train)")
    t.add_argument("framework", choices=FRAMEWORKS)
    add_recipe_args(t)
    add_threads_arg(t)
    _add_export(sub)
    _add_twins(sub)
    v = sub.add_parser("validate", help="validate the ONNX models (python -m validate)")
    add_validate_args(v, positional=True)
    _add_quantize(sub)
    s = sub.add_parser("test", help="run the test suite (pytest; arguments passed on); "
                                    "--fast: only the fast tier, no training and no pipeline "
                                    "run (under 2 minutes)")
    s.add_argument("pytest_args", nargs=argparse.REMAINDER)
    return p


def _add_all(sub) -> None:
    from validate.options import add_validate_args, frameworks_arg

    a = sub.add_parser("all", help="data check, train + export both frameworks, validate")
    add_recipe_args(a)
    add_threads_arg(a)
    a.set_defaults(epochs=None)  # 30, or 1 with --quick
    a.add_argument("--frameworks", type=frameworks_arg, default=FRAMEWORKS,
                   help="comma-separated subset of torch,tf (default both)")
    a.add_argument("--quick", action="store_true",
                   help="one short epoch on a subset of 6,000 images, light latency runs "
                        "(smoke runs, CI)")
    a.add_argument("--force", action="store_true",
                   help="train again even if a model for the same recipe is present")
    a.add_argument("--jobs", type=int, default=None,
                   help="framework lanes run at once (default: one per framework, at most "
                        "one per core); --jobs 1 runs them one after the other")
    add_validate_args(a, positional=False)


def _add_export(sub) -> None:
    e = sub.add_parser("export", help="export a trained LeNet-5 (torch, tf) or any PyTorch / "
                       "Keras model (MODEL_SPEC: package.module:callable or a .toml file, "
                       "docs/byom.md) to ONNX, with references")
    e.add_argument("framework", metavar="{torch,tf} | MODEL_SPEC")
    e.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    e.add_argument("--data-dir", default=None)
    e.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for the native model (default: all cores)")
    m = e.add_argument_group("a model spec (not torch / tf); flags override the spec file")
    m.add_argument("--checkpoint", help="torch: a state_dict; Keras: .keras or .weights.h5")
    m.add_argument("--inputs", help="fashion-mnist, a .npz / .npy file, or a folder of images")
    m.add_argument("--out", type=Path, help="the export folder (default artifacts/NAME)")
    m.add_argument("--count", type=int, help="how many inputs (default 256)")
    m.add_argument("--input-shape", help="C,H,W of a PyTorch model's single image input")
    m.add_argument("--layers", help="comma-separated modules / layers to map for diagnosis")
    m.add_argument("--random-inputs", action="store_true",
                   help="random inputs instead of real data (the report says so)")
    m.add_argument("--seed", type=int, help="seed before the factory runs (default 0)")
    m.add_argument("--name", help="the model's name (default: the callable's)")


BYOM_FLAGS = ("checkpoint", "inputs", "out", "count", "input_shape", "layers", "seed", "name")


def _add_twins(sub) -> None:
    w = sub.add_parser("twins", help="same weights in the other framework, and every "
                       "lenet5.onnx back into a framework (everything that needs FRAMEWORK)")
    w.add_argument("framework", choices=FRAMEWORKS,
                   help="torch: PyTorch twin of the Keras model, onnx2torch round trips; tf: "
                        "Keras twin of the PyTorch model, onnx2tf + TFLite round trips")
    w.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    w.add_argument("--data-dir", default=None)
    w.add_argument("--quick", action="store_true",
                   help="accepted for symmetry: every conversion runs on all 10,000 test "
                        "images either way (the stage takes seconds)")
    w.add_argument("--roundtrip-child", action="store_true", help=argparse.SUPPRESS)


def _add_quantize(sub) -> None:
    from validate.options import frameworks_arg

    q = sub.add_parser("quantize", help="INT8 and FP16 variants of each exported ONNX model")
    q.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    q.add_argument("--frameworks", type=frameworks_arg, default=FRAMEWORKS,
                   help="comma-separated subset of torch,tf (default both)")
    q.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (training images "
                   "for INT8 calibration)")


def _framework(framework: str) -> None:
    """Import the framework (TensorFlow without its start-up chatter on stderr)."""
    if framework == "tf":
        from train.quiet import import_tensorflow

        import_tensorflow()


def _check_export_inputs(args: argparse.Namespace) -> None:
    """What an export reads, checked before a framework is imported (seconds saved, and the
    one-line error comes first)."""
    from train.core.history import read_history
    from convert.pipeline import CHECKPOINTS
    from train import data

    folder = args.artifacts / args.framework
    checkpoint = folder / CHECKPOINTS[args.framework]
    if not checkpoint.is_file():
        raise ArtifactError(f"{checkpoint}: missing; run `python -m convert train "
                            f"{args.framework}` first")
    read_history(folder)
    check_threads(args.threads)
    args.data_dir = str(data.ensure_files(args.data_dir))


def _export_model(args: argparse.Namespace) -> int:
    """`convert export MODEL_SPEC`: any PyTorch / Keras model (convert.byom)."""
    from convert.byom.export import export_model
    from train.core.spec import load_spec, with_flags

    check_threads(args.threads)
    spec = with_flags(load_spec(args.framework), checkpoint=args.checkpoint, inputs=args.inputs,
                      count=args.count, input_shape=args.input_shape, layers=args.layers,
                      random=args.random_inputs, seed=args.seed, name=args.name)
    export_model(spec, args.out, args.data_dir, args.threads)
    return 0


def _export(args: argparse.Namespace) -> int:
    given = [f for f in BYOM_FLAGS if getattr(args, f) is not None] + (
        ["random_inputs"] if args.random_inputs else [])
    if given:
        raise ToolkitError(f"--{given[0].replace('_', '-')} is for a model spec, not the "
                           f"built-in {args.framework} LeNet-5")
    _check_export_inputs(args)
    _framework(args.framework)
    if args.framework == "torch":
        from convert.export import from_torch as side
    else:
        from convert.export import from_tf as side
    if args.threads is not None:
        set_threads(args.framework, args.threads)
    print(f"[{args.framework}] exporting {args.artifacts / args.framework} to ONNX", flush=True)
    path = side.export(args.artifacts, args.data_dir)
    print(f"[{args.framework}] wrote {path}, reference.npz and test_data_set_0/", flush=True)
    return 0


def set_threads(framework: str, threads: int) -> None:
    """Pin the framework's intra-op threads (inter-op 1) before it runs any op (`threads`
    checked by check_threads)."""
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
    else:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def _twins(args: argparse.Namespace) -> int:
    from convert.twins.common import check_inputs

    check_inputs(args.artifacts, args.framework)
    _framework(args.framework)
    if args.framework == "torch":
        from convert.twins import to_torch as side
    else:
        from convert.twins import to_tf as side
    if args.roundtrip_child:  # twin_tf's onnx2tf child (onnx2tf switches tf.keras globally)
        return side.roundtrip_child(args.artifacts, args.data_dir)
    times = side.run(args.artifacts, args.data_dir, args.quick)
    print(f"[{args.framework}] twins done: "
          + (", ".join(f"{name} {seconds:.1f} s" for name, seconds in times.items())
             or "nothing to make"), flush=True)
    return 0


def _test(args: argparse.Namespace) -> int:
    import subprocess

    tests = Path(__file__).resolve().parent.parent / "tests"
    if not tests.is_dir():
        raise ToolkitError(f"{tests}: no test suite here; run the tests from a clone")
    # The whole suite unless a test file, folder or node id is named (`tests/test_x.py::t`).
    named = any(not a.startswith("-") and Path(a.split("::")[0]).exists()
                for a in args.pytest_args)
    paths = [] if named else [str(tests)]
    rest = [a for a in args.pytest_args if a != "--fast"]
    tier = ["-m", "fast"] if len(rest) < len(args.pytest_args) else []  # tests/conftest.py
    # Two workers (pytest-xdist): most tests wait on the subprocesses they start, and the
    # quick pipeline is run once for both (tests/conftest.py). Not when collecting only, or
    # when the caller chose the workers.
    own = any(a.startswith(("-n", "--numprocesses", "--collect-only", "--co", "-p"))
              for a in rest)
    workers = [] if own else ["-n", "2"]
    return subprocess.run([sys.executable, "-m", "pytest", *paths, *tier, *workers, *rest],
                          cwd=tests.parent).returncode


def run(args: argparse.Namespace) -> int:
    """Dispatch one parsed command; return its exit status."""
    if args.command == "train":
        from train.command import run as train_run

        recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                        limit=args.limit)
        train_run(args.framework, recipe, args.data_dir, args.artifacts, threads=args.threads)
        return 0
    if args.command == "export" and args.framework not in FRAMEWORKS:
        return _export_model(args)
    if args.command == "export":
        with shared_lock(args.artifacts, f"the {args.framework} export"):
            return _export(args)
    if args.command == "twins":
        if args.roundtrip_child:  # a child of the twins command below: under its lock
            return _twins(args)
        with shared_lock(args.artifacts, f"the {args.framework} twins"):
            return _twins(args)
    if args.command == "validate":
        from validate.options import limits, options
        from validate.run import validate_command

        return validate_command(args.target, args.frameworks,
                                options(args, args.quick, args.data_dir), limits(args),
                                args.output, args.summary)
    if args.command == "test":
        return _test(args)
    if args.command == "quantize":
        from convert.quantize import quantize

        with shared_lock(args.artifacts, "quantize"):
            made = quantize(args.artifacts, args.frameworks, args.data_dir)
        for fw, paths in made.items():
            print(f"[{fw}] wrote " + " and ".join(
                f"{p} ({p.stat().st_size / 1024:.0f} KiB)" for p in paths.values()), flush=True)
        return 0
    from convert.pipeline import run_all
    from validate.options import limits, options

    quick_or_full = (1, QUICK_LIMIT) if args.quick else (Recipe().epochs, None)
    recipe = Recipe(epochs=args.epochs if args.epochs is not None else quick_or_full[0],
                    batch_size=args.batch_size, seed=args.seed,
                    limit=args.limit if args.limit is not None else quick_or_full[1])
    if args.jobs is not None and args.jobs < 1:
        raise ToolkitError(f"--jobs must be at least 1, got {args.jobs}")
    check_threads(args.threads)
    return run_all(frameworks=args.frameworks, recipe=recipe, data_dir=args.data_dir,
                   artifacts=args.artifacts, force=args.force, quick=args.quick,
                   options=options(args, args.quick, args.data_dir), limits=limits(args),
                   summary=args.summary, jobs=args.jobs, threads=args.threads)


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
