"""Keras side: the seed's LeNet-5, its training run, and checkpoint loading.

Imports tensorflow/keras only; never torch (DESIGN.md: one framework per process).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TF's C++ start-up chatter off stderr

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

from convert.errors import ArtifactError  # noqa: E402
from convert.fileio import atomic_path  # noqa: E402
from train import data  # noqa: E402
from train.recipe import EpochLog, Recipe, write_history  # noqa: E402

STEPS_PER_EXECUTION = 32
ARCHITECTURE = ("Conv2D(6, 5, same) ReLU AvgPool2, Conv2D(16, 5, same) ReLU AvgPool2, "
                "Flatten, Dense 120 ReLU, 84 ReLU, 10 softmax")


def build_model() -> keras.Model:
    """The seed's Keras LeNet-5 on NHWC input: returns probabilities (107,786 parameters)."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input((28, 28, 1), name="image"),
        layers.Conv2D(6, 5, padding="same", activation="relu"),
        layers.AveragePooling2D(2),
        layers.Conv2D(16, 5, padding="same", activation="relu"),
        layers.AveragePooling2D(2),
        layers.Flatten(),
        layers.Dense(120, activation="relu"),
        layers.Dense(84, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ], name="lenet5")


def versions() -> dict[str, str]:
    """This framework's versions for history.json and ONNX metadata."""
    return {"tensorflow": tf.__version__, "keras": keras.__version__}


def make_deterministic(seed: int) -> None:
    """Seed Python, NumPy and TF, and make TF's kernels deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def nhwc(images_nchw: np.ndarray) -> np.ndarray:
    """float32 [N, 1, 28, 28] -> [N, 28, 28, 1] (Keras' layout)."""
    return np.ascontiguousarray(images_nchw.transpose(0, 2, 3, 1))


class _Progress(keras.callbacks.Callback):
    """Feeds Keras' epoch results to the shared EpochLog."""

    def __init__(self, log: EpochLog, images: int) -> None:
        super().__init__()
        self.log, self.images = log, images

    def on_epoch_begin(self, epoch, logs=None):
        self.log.begin()

    def on_train_batch_end(self, batch, logs=None):
        if self.log.tty:  # called once per `steps_per_execution` steps
            self.log.step(batch + 1, float(logs["loss"]))

    def on_epoch_end(self, epoch, logs=None):
        self.log.end(float(logs["loss"]), float(logs["accuracy"]), self.images)


def predict(model: keras.Model, images_nchw: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Softmax probabilities float32 [N, 10] for float32 NCHW images."""
    out = [model(nhwc(images_nchw[i:i + batch_size]), training=False).numpy()
           for i in range(0, len(images_nchw), batch_size)]
    return np.concatenate(out).astype(np.float32)


def make_dataset(images: np.ndarray, labels: np.ndarray, recipe: Recipe) -> tf.data.Dataset:
    """float32 NHWC batches, reshuffled every epoch from the recipe's seed."""
    # The seed fed float64 NumPy arrays to fit, which converts every batch; tf.data on float32
    # tensors does not.
    return (tf.data.Dataset.from_tensor_slices((images, labels))
            .shuffle(len(images), seed=recipe.seed, reshuffle_each_iteration=True)
            .batch(recipe.batch_size)
            .prefetch(tf.data.AUTOTUNE))


def compile_model(recipe: Recipe) -> keras.Model:
    """A fresh LeNet-5 with the recipe's optimizer and loss."""
    model = build_model()
    # Several steps per call into the compiled graph: the per-step Python overhead dominates
    # for a model this small. The arithmetic is unchanged.
    model.compile(optimizer=keras.optimizers.Adam(recipe.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=STEPS_PER_EXECUTION)
    return model


def train(recipe: Recipe, data_dir: str | None, artifacts: Path) -> dict:
    """Train with the recipe; write model.keras and history.json; return the history."""
    ds = data.load(data_dir)
    make_deterministic(recipe.seed)
    n = min(recipe.limit or len(ds.train_images), len(ds.train_images))
    images = nhwc(data.to_float(ds.train_images[:n]))
    labels = ds.train_labels[:n].astype(np.int32)
    # float32 tensors through tf.data (the seed fed float64 NumPy to fit, converting every batch).
    dataset = make_dataset(images, labels, recipe)
    model = compile_model(recipe)
    steps = (n + recipe.batch_size - 1) // recipe.batch_size
    log = EpochLog("tf", recipe, steps)
    print(f"[tf] training LeNet-5 ({model.count_params():,} parameters) on {n:,} images, "
          f"{recipe.epochs} epochs, batch {recipe.batch_size}")
    model.fit(dataset, epochs=recipe.epochs, verbose=0, shuffle=False,
              callbacks=[_Progress(log, n)])
    probs = predict(model, data.to_float(ds.test_images))
    test_accuracy = float((probs.argmax(1) == ds.test_labels).mean())
    folder = artifacts / "tf"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "model.keras") as tmp:
        model.save(tmp)
    return write_history(folder, "tf", recipe, log, versions(), ARCHITECTURE,
                         model.count_params(), n, test_accuracy, model.get_weights(),
                         folder / "model.keras")


def load_model(path: Path) -> keras.Model:
    """Load a .keras checkpoint in safe mode (no deserialised Python code)."""
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; run `python -m convert train tf` first")
    if not zipfile.is_zipfile(path):
        raise ArtifactError(f"{path}: not a .keras archive (not a zip file)")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # a corrupt or foreign archive: any failure is the file's fault
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{path}: cannot load as a Keras model ({reason[:200]})") from None
