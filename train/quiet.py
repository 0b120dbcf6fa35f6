"""TensorFlow's import, the toolkit's way: its environment set first, its start-up chatter
kept off stderr.

The environment (`tensorflow_environment`, before TF is imported: it reads it once):
- TF_CPP_MIN_LOG_LEVEL=3: C++ logging at errors only.
- TF_ENABLE_ONEDNN_OPTS=1: TF's oneDNN kernels for convolution, pooling and matmul. TF turns
  them on by itself only on CPUs with AVX-512 VNNI, AVX-512 BF16 or AMX; elsewhere (a 2-core
  AMD EPYC with AVX2, measured) Conv2D runs Eigen's im2col path: LeNet-5's forward pass on
  1,000 images took 0.20-0.26 s instead of 0.036 s, and a training epoch on one thread 24.2 s
  instead of 6.6 s. On, the same kernels run on every x86 CPU (and training caps their
  instruction set at AVX2: train.keras_lenet.configure).
A variable the user set is kept.

TF 2.21 writes absl log lines while `import tensorflow` runs (`WARNING: All log messages
before absl::InitializeLog()…`, `I0000 … oneDNN custom operations are on…`, `… Could not find
cuda drivers…`), before its logging is configured: TF_CPP_MIN_LOG_LEVEL does not reach them.
They are written by C++ straight to file descriptor 2, so they are caught there: during the
import only, fd 2 points at a temporary file; afterwards every line that is not absl start-up
logging is written back to the real stderr. A failed import still raises, and its traceback
is printed after fd 2 is restored.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

_CHATTER = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
                      r"|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] )")


@contextlib.contextmanager
def quiet_stderr(chatter: re.Pattern = _CHATTER) -> Iterator[None]:
    """Hold fd 2 during the block; replay it afterwards without the lines `chatter` matches
    (absl start-up lines by default)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode("utf-8", "replace").splitlines(True)
                    if not chatter.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


TF_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "1"}


def tensorflow_environment() -> None:
    """Set TF_ENVIRONMENT's variables the user has not set; call before TF is imported."""
    for name, value in TF_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def import_tensorflow():
    """`import tensorflow` in the toolkit's environment, without its start-up chatter;
    returns the module. Later imports in the process are silent anyway."""
    tensorflow_environment()
    with quiet_stderr():
        import tensorflow

    return tensorflow
