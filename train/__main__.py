"""`python -m train {torch,tf}`: train the seed's LeNet-5 in one framework, in this process."""

from __future__ import annotations

import sys

if __name__ == "__main__":  # first of all: a clone's first run installs what the rest imports
    from train.core.bootstrap import ensure_environment

    ensure_environment(sys.argv[1:], "train")

import argparse

from train.command import add_recipe_args, add_threads_arg, run
from train.core.contract import FRAMEWORKS
from train.core.errors import ArgumentParser, cli_call
from train.recipe import Recipe


def parser() -> argparse.ArgumentParser:
    """The training CLI's arguments (shared with `python -m convert train`)."""
    p = ArgumentParser(prog="python -m train", description=__doc__)
    p.add_argument("framework", choices=FRAMEWORKS)
    add_recipe_args(p)
    add_threads_arg(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success, 2 on a user error (one line on stderr), 3 a crash."""
    args = parser().parse_args(argv)

    def body() -> int:
        recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                        limit=args.limit)
        run(args.framework, recipe, args.data_dir, args.artifacts, threads=args.threads)
        return 0

    return cli_call(body)


if __name__ == "__main__":
    sys.exit(main())
