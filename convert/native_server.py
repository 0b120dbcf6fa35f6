"""A native model held in a process of its own and timed on request: the validator's partner
for side-by-side latency (validate.timing.native drives it; the framework never enters the
validator's process).

    python -m convert.native_server {torch,tf} MODEL --threads N [--cores 0,1] [--data-dir D]

MODEL is LeNet-5's model.pt / model.keras, or a model export's folder (docs/byom.md: spec.json,
the weights, inputs.npz), rebuilt by convert.byom.native.load_native. The process pins itself
to `--cores` and fixes the framework's thread pools (`N` intra-op, 1 inter-op) before the
model is built, loads the model and its latency inputs (LeNet-5: the first 256 test images;
a model export: the first rows of its inputs.npz), then answers JSON lines on stdin/stdout:

    -> {"op": "time", "batch": 32, "plan": {TimingPlan fields}}
    <- {"ok": true, "times": [ms, ...], "start": t0, "end": t1}   (time.monotonic())
    -> {"op": "exit"}

Its first line is {"ok": true, "runtime", "version", "threads", "cores", "pid"} once ready,
or {"ok": false, "error": "..."}. Anything the framework prints goes to stderr: stdout
carries the protocol only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from train.core.errors import ArgumentParser, ToolkitError
from validate.timing.latency import TimingPlan, time_calls  # numpy only

SIDES = {"torch": "convert.export.from_torch", "tf": "convert.export.from_tf"}


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m convert.native_server",
                       description="time a native model on request")
    p.add_argument("framework", choices=sorted(SIDES))
    p.add_argument("model", help="model.pt, model.keras, or a model export's folder")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cores", default="", help="comma-separated cores to pin to")
    p.add_argument("--data-dir", default=None)
    return p


def _lenet_model(args: argparse.Namespace):
    """LeNet-5's checkpoint: (runtime, version, prepare(batch) -> a no-argument call)."""
    import importlib

    from convert.export import reference

    side = importlib.import_module(SIDES[args.framework])
    runtime, version, prepare = side.native_model(Path(args.model), args.threads)
    images = reference.latency_images(args.data_dir)
    return runtime, version, lambda batch: prepare(images[:batch])


def _pin_threads(framework: str, threads: int) -> tuple[str, str]:
    """The framework imported with `threads` intra-op threads and 1 inter-op thread (before
    any model is built); its runtime name and version."""
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        return "torch", torch.__version__
    from train.quiet import import_tensorflow

    tf = import_tensorflow()
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return "tensorflow", tf.__version__


def _export_model(args: argparse.Namespace):
    """A model export's folder: the native model rebuilt from its spec.json and weights, fed
    the first rows of its inputs.npz; (runtime, version, prepare(batch) -> a call)."""
    from convert.byom.native import load_native
    from train.core.fileio import read_npz

    folder = Path(args.model)
    runtime, version = _pin_threads(args.framework, args.threads)
    framework, run = load_native(folder)
    if framework != args.framework:
        raise ToolkitError(f"{folder}: a {framework} model, not {args.framework}")
    feeds = read_npz(folder / "inputs.npz")

    def prepare(batch: int):
        part = {k: v[:batch] for k, v in feeds.items()}
        return lambda: run(part)

    return runtime, version, prepare


def serve(args: argparse.Namespace, reply) -> int:
    if args.cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
    try:
        runtime, version, prepare = (_export_model if Path(args.model).is_dir()
                                     else _lenet_model)(args)
        calls: dict[int, object] = {}
    except ToolkitError as exc:  # the toolkit's own one-line reason (a damaged model file…)
        reply({"ok": False, "error": str(exc)})
        return 1
    except Exception as exc:  # anything else: the parent reports it as the native's error
        text = str(exc).strip().splitlines()
        reply({"ok": False, "error": f"{type(exc).__name__}: {text[0][:300] if text else ''}"})
        return 1
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    reply({"ok": True, "runtime": runtime, "version": version, "threads": args.threads,
           "cores": cores, "pid": os.getpid()})
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("op") != "time":
            break
        try:
            batch = int(request["batch"])
            if batch not in calls:
                calls[batch] = prepare(batch)
            plan = TimingPlan(**request["plan"])
            start = time.monotonic()
            times = time_calls(calls[batch], plan)
        except Exception as exc:  # reported, and the parent stops timing this model
            reply({"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            continue
        reply({"ok": True, "times": times, "start": start, "end": time.monotonic()})
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The protocol keeps the real stdout; fd 1 (print, C libraries) goes to stderr.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(message: dict) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    return serve(args, reply)


if __name__ == "__main__":
    sys.exit(main())
