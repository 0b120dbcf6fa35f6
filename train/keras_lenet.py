"""Keras side: the seed's LeNet-5, its training loop, and checkpoint loading.

Imports tensorflow/keras only; never torch (DESIGN.md: one framework per process).

Where the seed's time went (`model.fit` on float64 NumPy arrays, batch 32): about 2.7 ms of
the 4-5 ms of each step are the model's own oneDNN kernels; the rest is fit's per-step
machinery (the arrays' tf.data conversion and shuffle, a call into the compiled step,
callbacks and metrics, Keras' Adam as ~20 small ops per variable). The float64 input costs
nothing measurable. And TF's default pools split each of this model's small ops over both
cores, which costs more than it saves (CPU time up by half, wall time no better, and an
epoch now and then twice as long). So the toolkit's loop:

- is one compiled `tf.function` that runs `STEPS_PER_CALL` optimizer steps per call over a
  slice of an index permutation (NumPy, from the recipe's seed, every epoch) of float32
  tensors held in memory: no per-step Python, no tf.data;
- runs every op on one thread, and spends more threads on data parallelism instead: each
  batch of 32 is cut into `shards` slices whose forward and backward passes run side by side
  in TF's inter-op pool, their gradients summed before one Adam step (the same mean gradient
  over the 32 images);
- updates with TF's fused Adam kernel (`FusedAdam`), one op per variable instead of ~20;
- caps oneDNN at AVX2 (`ONEDNN_MAX_CPU_ISA`, unless set): with 1 or 6 channels, the 8-lane
  AVX2 kernels waste less than the 16-lane AVX-512 ones (conv 2's input gradient 0.46 ms
  instead of 0.67 ms).

The kernels are TF's oneDNN ones, turned on by train.quiet (TF leaves them off on CPUs
without AVX-512 VNNI/BF16 or AMX). Measured on a quiet 2-core AMD EPYC (AVX2): an epoch of
60,000 images takes 6.6 s on 1 thread and 4.8 s on 2 (24.2 s on 1 thread with oneDNN off);
`python -m train.bench` compares it with the seed's code.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from train.quiet import tensorflow_environment

tensorflow_environment()  # before TF is imported: oneDNN kernels on, C++ logging at errors

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

from train.core.errors import ArtifactError  # noqa: E402
from train.core.fileio import atomic_path  # noqa: E402
from train import data  # noqa: E402
from train.core.threads import default_threads  # noqa: E402
from train.recipe import (EpochLog, Recipe, run_epochs, top1_accuracy,  # noqa: E402
                          write_history)

# Optimizer steps per call into the compiled loop: enough that the Python call costs nothing,
# few enough that a terminal's progress line moves.
STEPS_PER_CALL = 100
# Fewest images per slice of a batch: two slices of 16 ran 1.6x faster than one of 32 on two
# cores; smaller slices (more than 2 threads for batch 32) are untested, so not used.
MIN_SHARD = 16
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


def shards_for(threads: int | None, batch_size: int) -> int:
    """Slices per batch trained side by side: one per thread, each of >= MIN_SHARD images."""
    threads = default_threads() if threads is None else threads
    return max(1, min(threads, batch_size // MIN_SHARD))


def configure(threads: int | None, batch_size: int) -> int:
    """Set TF's pools for `threads` threads (None: every core) and oneDNN's instruction set;
    return the shard count, which is also the number of threads that compute.

    Must run before TF's first op: the pools are made then and never resized, and oneDNN
    reads its instruction-set cap once.
    """
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    shards = shards_for(threads, batch_size)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(shards)
    return (tf.config.threading.get_inter_op_parallelism_threads()
            * tf.config.threading.get_intra_op_parallelism_threads())


def make_deterministic(seed: int) -> None:
    """Seed Python, NumPy and TF, and make TF's kernels deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def nhwc(images_nchw: np.ndarray) -> np.ndarray:
    """float32 [N, 1, 28, 28] -> [N, 28, 28, 1] (Keras' layout)."""
    return np.ascontiguousarray(images_nchw.transpose(0, 2, 3, 1))


def predict(model: keras.Model, images_nchw: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Softmax probabilities float32 [N, 10] for float32 NCHW images."""
    out = [model(nhwc(images_nchw[i:i + batch_size]), training=False).numpy()
           for i in range(0, len(images_nchw), batch_size)]
    return np.concatenate(out).astype(np.float32)


class FusedAdam:
    """Keras' Adam (same hyperparameters, same update) as one fused TF kernel per variable.

    keras.optimizers.Adam updates each variable with ~20 small ops; TF's `ResourceApplyAdam`
    does the same update in one: m += (g - m)(1 - b1), v += (g² - v)(1 - b2),
    w -= lr·√(1 - b2ᵗ)/(1 - b1ᵗ)·m/(√v + ε).
    """

    def __init__(self, variables: list, learning_rate: float) -> None:
        spec = keras.optimizers.Adam(learning_rate)  # the hyperparameters the seed used
        self.learning_rate = float(learning_rate)
        self.beta_1, self.beta_2, self.epsilon = spec.beta_1, spec.beta_2, spec.epsilon
        self.variables = list(variables)
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        self.slots = [(tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False),
                       tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False))
                      for v in self.variables]

    def apply(self, gradients: list[tf.Tensor]) -> None:
        """One Adam step on every variable (inside a tf.function)."""
        t = tf.cast(self.iterations + 1, tf.float32)
        beta_1_power = tf.pow(tf.constant(self.beta_1, tf.float32), t)
        beta_2_power = tf.pow(tf.constant(self.beta_2, tf.float32), t)
        for variable, grad, (m, v) in zip(self.variables, gradients, self.slots):
            tf.raw_ops.ResourceApplyAdam(
                var=variable.value.handle, m=m.handle, v=v.handle, beta1_power=beta_1_power,
                beta2_power=beta_2_power, lr=self.learning_rate, beta1=self.beta_1,
                beta2=self.beta_2, epsilon=self.epsilon, grad=grad)
        self.iterations.assign_add(1)


def make_train_steps(model: keras.Model, optimizer: FusedAdam, images: tf.Tensor,
                     labels: tf.Tensor, batch_size: int, shards: int = 1):
    """Compile the training loop: `fn(order)` trains on the batches `order` (int32 indices
    into `images`) lists, in order, and returns (sum of per-image losses, correct).

    With `shards` > 1, `order` must hold whole batches: each is cut into `shards` slices
    (one slice of a short batch could be empty, which oneDNN's kernels refuse).
    """
    variables = model.trainable_variables
    size = -(-batch_size // shards)
    cuts = [(k * size, min((k + 1) * size, batch_size)) for k in range(shards)]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
    def train_steps(order: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        loss_sum = tf.constant(0.0)
        correct = tf.constant(0)
        for start in tf.range(0, tf.shape(order)[0], batch_size):
            idx = order[start:start + batch_size]
            with tf.GradientTape() as tape:
                sums = []
                for a, b in cuts:
                    # No data flows between slices: TF's executor runs them on separate
                    # inter-op threads, and sums their gradients where they meet.
                    y = tf.gather(labels, idx[a:b])
                    probs = model(tf.gather(images, idx[a:b]), training=True)
                    # Sparse categorical cross-entropy on the softmax output, as the seed
                    # (Keras computes it from the softmax's logits).
                    sums.append(tf.reduce_sum(
                        keras.losses.sparse_categorical_crossentropy(y, probs)))
                    hits = tf.equal(tf.argmax(probs, 1, output_type=tf.int32), y)
                    correct += tf.reduce_sum(tf.cast(hits, tf.int32))
                batch_sum = tf.add_n(sums)
                # The batch mean, whatever the slicing: the seed's loss and gradient.
                loss = batch_sum / tf.cast(tf.shape(idx)[0], tf.float32)
            optimizer.apply(tape.gradient(loss, variables))
            loss_sum += batch_sum
        return loss_sum, correct

    return train_steps


class Trainer:
    """The toolkit's training run for one recipe: model, optimizer, compiled loop, shuffling."""

    def __init__(self, recipe: Recipe, images_nhwc: np.ndarray, labels: np.ndarray,
                 shards: int = 1) -> None:
        self.recipe, self.images = recipe, len(images_nhwc)
        self.model = build_model()
        self.optimizer = FusedAdam(self.model.trainable_variables, recipe.learning_rate)
        args = (self.model, self.optimizer, tf.constant(images_nhwc),
                tf.constant(labels.astype(np.int32)), recipe.batch_size)
        self.whole_batches = make_train_steps(*args, shards)
        # A last, short batch (N not a multiple of the batch size) is trained in one slice.
        self.short_batch = (make_train_steps(*args) if shards > 1
                            and self.images % recipe.batch_size else self.whole_batches)
        # Reshuffled every epoch from the recipe's seed: the same seed, the same batches.
        self.shuffle = np.random.default_rng(recipe.seed)
        # Compile now (an empty order trains nothing), so that epoch 1 is timed like the rest.
        for fn in dict.fromkeys([self.whole_batches, self.short_batch]):
            fn(tf.zeros([0], tf.int32))

    def epoch(self, log: EpochLog) -> tuple[float, float]:
        """Train one reshuffled epoch; returns mean loss and accuracy."""
        order = self.shuffle.permutation(self.images).astype(np.int32)
        batch = self.recipe.batch_size
        whole = len(order) - len(order) % batch
        loss_sum, correct = 0.0, 0
        chunk = STEPS_PER_CALL * batch
        for start in range(0, len(order), chunk):
            stop = min(start + chunk, len(order))
            for fn, a, b in ((self.whole_batches, start, min(stop, whole)),
                             (self.short_batch, max(start, whole), stop)):
                if b > a:
                    loss, hits = fn(tf.constant(order[a:b]))
                    loss_sum += float(loss)
                    correct += int(hits)
            if log.tty:
                log.step(-(-stop // batch), loss_sum / stop)
        # fit's "loss" is the batch-size-weighted mean of the batch losses: the same number.
        return loss_sum / len(order), correct / len(order)


def train(recipe: Recipe, data_dir: str | None, artifacts: Path,
          threads: int | None = None) -> dict:
    """Train with the recipe on `threads` threads (None: every core); write model.keras and
    history.json; return the history."""
    threads = configure(threads, recipe.batch_size)  # first: before any TF op runs
    ds = data.load(data_dir)
    make_deterministic(recipe.seed)
    n = min(recipe.limit or len(ds.train_images), len(ds.train_images))
    trainer = Trainer(recipe, nhwc(data.to_float(ds.train_images[:n])), ds.train_labels[:n],
                      shards=threads)
    model = trainer.model
    log = run_epochs("tf", recipe, trainer, n, model.count_params(), threads)
    accuracy = top1_accuracy(predict(model, data.to_float(ds.test_images)), ds.test_labels)
    folder = artifacts / "tf"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "model.keras") as tmp:
        model.save(tmp)
    return write_history(folder, "tf", recipe, log, versions(), ARCHITECTURE,
                         model.count_params(), n, accuracy, model.get_weights(),
                         folder / "model.keras", threads)


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
