"""`python -m train {torch,tf}`: train the seed's LeNet-5 in one framework, in this process."""

from __future__ import annotations

import sys

if __name__ == "__main__":  # first of all: a clone's first run installs what the rest imports
    from convert.bootstrap import ensure_environment

    ensure_environment(sys.argv[1:], "train")

import argparse
from pathlib import Path

from convert.errors import ArgumentParser, cli_call
from convert.fileio import ensure_writable
from convert.lock import shared_lock
from train import data
from train.recipe import FRAMEWORKS, Recipe, check_threads


def parser() -> argparse.ArgumentParser:
    """The training CLI's arguments (shared with `python -m convert train`)."""
    p = ArgumentParser(prog="python -m train", description=__doc__)
    p.add_argument("framework", choices=FRAMEWORKS)
    add_recipe_args(p)
    add_threads_arg(p)
    return p


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """Recipe, data and artifacts flags."""
    d = Recipe()
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="train on the first N images only (smoke runs)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the four Fashion-MNIST files (else $FASHION_MNIST_DIR, "
                        "else a cache folder; missing files are downloaded)")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="default artifacts/")


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    """The --threads flag (not part of the recipe: it changes speed, not the model asked for)."""
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads to compute on (default: every core): PyTorch's intra-op "
                        "threads; for Keras, slices of each batch trained side by side on "
                        "one-thread ops (at most 2 for batch 32); recorded in history.json")


def run(framework: str, recipe: Recipe, data_dir: str | None, artifacts: Path,
        threads: int | None = None) -> dict:
    """Train one framework's model on `threads` threads (None: every core); imports only that
    framework."""
    check_threads(threads)
    data.ensure_files(data_dir)  # bad data is one line before a framework is imported
    ensure_writable(artifacts / framework)  # and an unwritable output before the training
    if framework == "torch":
        from train import torch_lenet as side
    else:
        from convert.quiet import import_tensorflow

        import_tensorflow()  # without its start-up chatter on stderr
        from train import keras_lenet as side
    with shared_lock(artifacts, f"training {framework}"):
        return side.train(recipe, data_dir, artifacts, threads=threads)


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
