"""`python -m tests._snippet CODE`: run CODE in a fresh interpreter (used by the tests)."""

import sys

exec(compile(sys.argv[1], "<snippet>", "exec"))
