"""The seed recipe as a config object, and the framework-free parts of a training run."""

from __future__ import annotations

import hashlib
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from train.core.errors import ToolkitError
from train.core.fileio import sha256_file, write_json
from train import data


@dataclass(frozen=True)
class Recipe:
    """Training settings; the defaults are the seed's."""

    epochs: int = 30            # passes over the training set
    batch_size: int = 32        # images per optimizer step
    learning_rate: float = 1e-3  # Adam
    seed: int = 42              # weights, shuffling and every other random draw
    limit: int | None = None    # train on the first N images only (smoke runs); None = all 60,000

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ToolkitError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ToolkitError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ToolkitError(f"--limit must be at least 1, got {self.limit}")
        if not 0 <= self.seed < 2**32:  # what both frameworks' generators accept
            raise ToolkitError(f"--seed must be between 0 and 2**32 - 1, got {self.seed}")


def common_versions() -> dict[str, str]:
    """Versions every history records besides the framework's own."""
    return {"python": platform.python_version(), "numpy": np.__version__,
            "platform": platform.platform()}


class EpochLog:
    """Per-epoch progress: a live line on a terminal, one plain line per epoch otherwise."""

    def __init__(self, framework: str, recipe: Recipe, steps: int) -> None:
        self.framework, self.recipe, self.steps = framework, recipe, steps
        self.tty = sys.stdout.isatty()
        self.epochs: list[dict] = []
        self._start = 0.0

    def begin(self) -> None:
        """Mark the start of an epoch."""
        self._start = time.perf_counter()

    def step(self, step: int, loss: float) -> None:
        """Update the live line (terminals only, every 50 steps)."""
        if self.tty and step % 50 == 0:
            sys.stdout.write(f"\r[{self.framework}] epoch {len(self.epochs) + 1}/"
                             f"{self.recipe.epochs} step {step}/{self.steps} loss {loss:.4f}")
            sys.stdout.flush()

    def end(self, loss: float, accuracy: float, images: int) -> None:
        """Record an epoch and print its line."""
        seconds = time.perf_counter() - self._start
        self.epochs.append({"epoch": len(self.epochs) + 1, "loss": loss, "accuracy": accuracy,
                            "seconds": round(seconds, 3),
                            "images_per_second": round(images / seconds, 1)})
        line = (f"[{self.framework}] epoch {len(self.epochs)}/{self.recipe.epochs} "
                f"loss {loss:.4f} accuracy {accuracy:.4f} {seconds:.1f}s "
                f"({images / seconds:.0f} images/s)")
        sys.stdout.write(("\r" + line + " " * 10 + "\n") if self.tty else line + "\n")
        sys.stdout.flush()


def weights_digest(weights: list[np.ndarray]) -> str:
    """sha256 over every weight array's dtype, shape and bytes, in order: equal iff identical."""
    digest = hashlib.sha256()
    for w in weights:
        w = np.ascontiguousarray(w)
        digest.update(f"{w.dtype}{w.shape}".encode())
        digest.update(w.tobytes())
    return digest.hexdigest()


class EpochTrainer(Protocol):
    """A framework's trainer: one reshuffled epoch per call."""

    def epoch(self, log: EpochLog) -> tuple[float, float]:
        """Train one epoch; return its mean loss and accuracy."""


def run_epochs(framework: str, recipe: Recipe, trainer: EpochTrainer, images: int,
               parameters: int, threads: int) -> EpochLog:
    """Every epoch of RECIPE on TRAINER, with the run's opening line and a line per epoch;
    returns the epoch log."""
    log = EpochLog(framework, recipe, (images + recipe.batch_size - 1) // recipe.batch_size)
    print(f"[{framework}] training LeNet-5 ({parameters:,} parameters) on {images:,} images, "
          f"{recipe.epochs} epochs, batch {recipe.batch_size}, {threads} threads", flush=True)
    for _ in range(recipe.epochs):
        log.begin()
        loss, accuracy = trainer.epoch(log)
        log.end(loss, accuracy, images)
    return log


def top1_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The share of LABELS that PROBABILITIES rank first."""
    return float((probabilities.argmax(1) == labels).mean())


def write_history(folder: Path, framework: str, recipe: Recipe, log: EpochLog,
                  versions: dict[str, str], architecture: str, parameters: int,
                  train_images: int, test_accuracy: float, weights: list[np.ndarray],
                  checkpoint: Path, threads: int) -> dict:
    """Write `history.json` atomically and return what it holds.

    `threads` (the intra-op thread count the run used) is recorded beside the recipe, not in
    it: it changes the speed, and the bits (a reduction split N ways sums in another order),
    but not what model the recipe asks for.
    """
    seconds = sum(e["seconds"] for e in log.epochs)
    history = {
        "framework": framework,
        "recipe": asdict(recipe),
        "seed": recipe.seed,
        "versions": {**common_versions(), **versions},
        "architecture": architecture,
        "parameters": parameters,
        "dataset_sha256": data.DATASET_SHA256,
        "train_images": train_images,
        "epochs": log.epochs,
        "seconds": round(seconds, 3),
        "images_per_second": round(train_images * len(log.epochs) / seconds, 1),
        "threads": threads,
        "test_accuracy": test_accuracy,
        "weights_sha256": weights_digest(weights),
        # Ties this history to its checkpoint: the two files are replaced one after the other.
        "checkpoint_sha256": sha256_file(checkpoint),
    }
    write_json(folder / "history.json", history)
    print(f"[{framework}] test accuracy {test_accuracy:.4f}; wrote {folder}")
    return history
