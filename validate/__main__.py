"""`python -m validate [ARTIFACTS | MODEL.onnx | EXPORT_DIR]`: parity, accuracy and latency of
ONNX models in every runtime that can run here.

An artifacts folder: both frameworks' models against their native references. One ONNX
file: a LeNet-5 model of this toolkit is checked against its contract and metadata, the
test_data_set_* folders beside it and, when present, the reference.npz beside it; any other
ONNX model against the outputs stored in its test_data_set_* folders. A model export of
`python -m convert export MODEL_SPEC --out DIR` (spec.json beside model.onnx), or a folder of
several: every output against the native model's, in every runtime (docs/byom.md). Each model
runs in a child process with a memory and a time limit.

Needs onnxruntime and numpy only (plus Node.js and Chromium for those runtimes). Exit status:
0 passed, 1 failed, 2 bad input (or a model past its limits), 3 a crash.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # first of all: a clone's first run installs what the rest imports
    from train.core.bootstrap import ensure_environment

    ensure_environment(sys.argv[1:], "validate")

import argparse

from train.core.errors import ArgumentParser, cli_call
from validate.options import add_validate_args, limits, options
from validate.run import validate_command


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = ArgumentParser(prog="python -m validate", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_validate_args(p, positional=True)
    args = p.parse_args(argv)
    return cli_call(lambda: validate_command(
        args.target, args.frameworks, options(args, args.quick, args.data_dir), limits(args),
        args.output, args.summary))


if __name__ == "__main__":
    sys.exit(main())
