"""Keep TensorFlow's start-up chatter off stderr, and nothing else.

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


def import_tensorflow():
    """`import tensorflow` without its start-up chatter (and with its C++ logging at errors
    only); returns the module. Later imports in the process are silent anyway."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with quiet_stderr():
        import tensorflow

    return tensorflow
