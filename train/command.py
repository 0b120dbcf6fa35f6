"""What `python -m train` and `python -m convert train` share: the recipe's flags and the run
of one framework's training in this process."""

from __future__ import annotations

import argparse
from pathlib import Path

from train import data
from train.core.fileio import ensure_writable
from train.core.lock import shared_lock
from train.core.threads import check_threads
from train.recipe import Recipe


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
        from train.quiet import import_tensorflow

        import_tensorflow()  # without its start-up chatter on stderr
        from train import keras_lenet as side
    with shared_lock(artifacts, f"training {framework}"):
        return side.train(recipe, data_dir, artifacts, threads=threads)
