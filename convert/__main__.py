"""`python -m convert {all,train,export,validate,test}`: see `python -m convert --help`."""

import sys

from train.core.bootstrap import ensure_environment

ensure_environment(sys.argv[1:])

from convert.cli import main  # noqa: E402  (after the environment is known to be complete)

sys.exit(main())
