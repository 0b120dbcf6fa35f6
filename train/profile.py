"""Where a training step's time goes: `python -m train.profile [--frameworks torch,tf]
[--threads 1] [--steps 100] [--rounds 5]`.

The toolkit's own training step (what `python -m train` runs), on real Fashion-MNIST batches
of the recipe's size (32), each framework in a process of its own:

- torch: the step (train.torch_lenet: channels-last images, FusedAdam) timed without a
  profiler (median over rounds), then once under torch.profiler: each operator's own CPU time
  per step, largest first, and the shares of the model's kernels (convolutions, pooling,
  dense, ReLU, Adam) and of the rest (dispatch, autograd, copies, Python).
- tf: the compiled loop cut into its parts, each timed as a compiled loop of `steps` steps on
  one slice of 32 (train.keras_lenet's ops and fused Adam): forward; forward + loss;
  forward + backward; the whole step. The differences are what each part costs.

A profile, not a test: quote its output with the load it reports (`/proc/loadavg`).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # first of all: a clone's first run installs what the rest imports
    from train.core.bootstrap import ensure_environment

    ensure_environment(sys.argv[1:], "train.profile")

import argparse
import os
import re
import statistics
import subprocess
import time
from typing import Callable

from train.core.errors import ArgumentParser, cli_call
from train.core.contract import FRAMEWORKS
from train.core.threads import check_threads, load_average
from train import data
from train.quiet import quiet_stderr

BATCH = 32
IMAGES = 3200  # real training images the profiled steps cycle through

# What torch.profiler's tracer (kineto) writes on stderr at every start and stop, GPU or none.
KINETO_CHATTER = re.compile(r"^(USDT|ERROR|WARNING|INFO):\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \d+:\d+ "
                            r"\S+\.cpp:\d+\] ")

# torch operators by the part of the model they are (self CPU time per step).
TORCH_PARTS = {
    "convolution backward": ("aten::convolution_backward",),
    "convolution forward": ("aten::mkldnn_convolution", "aten::_convolution",
                            "aten::convolution", "aten::conv2d"),
    "pooling": ("aten::avg_pool2d", "aten::avg_pool2d_backward"),
    "dense": ("aten::mm", "aten::addmm", "aten::linear"),
    "ReLU": ("aten::relu", "aten::clamp_min", "aten::threshold_backward"),
    "Adam": ("aten::_fused_adam_", "aten::_foreach_add_"),
}


def _rounds(run: Callable[[], None], steps: int, rounds: int) -> list[float]:
    """ms per step of `run` (which does `steps` steps), one figure per round, after a warm-up."""
    run()
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        out.append((time.perf_counter() - start) / steps * 1e3)
    return out


def _figure(ms: list[float]) -> str:
    return f"{statistics.median(ms):.3f} ms (range {min(ms):.3f}-{max(ms):.3f})"


def _torch(threads: int, steps: int, rounds: int, data_dir: str | None) -> None:
    import torch
    from torch.nn import functional as F
    from torch.profiler import ProfilerActivity, profile

    from train import torch_lenet as tl
    from train.recipe import Recipe

    threads = tl.set_threads(threads)
    tl.make_deterministic(42)
    ds = data.load(data_dir)
    trainer = tl.Trainer(Recipe(), data.to_float(ds.train_images[:IMAGES]),
                         ds.train_labels[:IMAGES])
    model, optimizer = trainer.model, trainer.optimizer
    model.train()

    order = torch.randperm(IMAGES, generator=trainer.generator)

    def run() -> None:  # the step of train_one_epoch: a gathered batch, forward, backward, Adam
        for s in range(steps):
            start = (s * BATCH) % (IMAGES - BATCH + 1)
            idx = order[start:start + BATCH]
            x, y = trainer.images[idx], trainer.labels[idx]
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

    wall = _rounds(run, steps, rounds)
    with quiet_stderr(KINETO_CHATTER), profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    ops = sorted(((e.key, e.self_cpu_time_total / steps / 1e3, e.count // steps)
                  for e in prof.key_averages()), key=lambda r: -r[1])
    total = sum(ms for _, ms, _ in ops)
    print(f"torch {torch.__version__}, {threads} thread(s), batch {BATCH}: step "
          f"{_figure(wall)} without the profiler, median of {rounds} rounds of {steps} steps")
    print(f"torch: under the profiler, {total:.3f} ms of operators' own CPU time per step")
    for name, ms, calls in ops[:12]:
        print(f"torch:   {name:38s} {ms:7.3f} ms  {100 * ms / total:5.1f}%  {calls} call(s)")
    parts = {part: sum(ms for n, ms, _ in ops if n in names)
             for part, names in TORCH_PARTS.items()}
    parts["rest (dispatch, autograd, copies, views)"] = total - sum(parts.values())
    print("torch: by part: " + "; ".join(f"{part} {100 * ms / total:.0f}% ({ms:.3f} ms)"
                                         for part, ms in parts.items()))


def _tf(threads: int, steps: int, rounds: int, data_dir: str | None) -> None:
    from train.quiet import import_tensorflow

    import_tensorflow()  # without its start-up chatter on stderr
    from train import keras_lenet as kl

    kl.configure(threads, BATCH)  # before TF's first op
    import numpy as np
    import tensorflow as tf
    import keras

    ds = data.load(data_dir)
    images = tf.constant(kl.nhwc(data.to_float(ds.train_images[:IMAGES])))
    labels = tf.constant(ds.train_labels[:IMAGES].astype(np.int32))
    kl.make_deterministic(42)
    model = kl.build_model()
    optimizer = kl.FusedAdam(model.trainable_variables, 1e-3)
    variables = model.trainable_variables

    def loss_of(x, y, probs):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probs))

    def forward(x, y):
        return tf.reduce_sum(model(x, training=True))

    def forward_loss(x, y):
        return loss_of(x, y, model(x, training=True))

    def forward_backward(x, y):
        with tf.GradientTape() as tape:
            loss = loss_of(x, y, model(x, training=True))
        return tf.add_n([tf.reduce_sum(g) for g in tape.gradient(loss, variables)])

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_of(x, y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, variables))
        return loss

    def compiled(body):
        @tf.function
        def loop():  # every result feeds the sum, so that no part is pruned away
            total = tf.constant(0.0)
            for s in tf.range(steps):
                start = (s * BATCH) % (IMAGES - BATCH + 1)
                total += body(images[start:start + BATCH], labels[start:start + BATCH])
            return total
        return lambda: loop().numpy()

    parts = {"forward": forward, "forward + loss": forward_loss,
             "forward + backward": forward_backward, "whole step (+ Adam)": step}
    loops = {name: compiled(body) for name, body in parts.items()}
    times: dict[str, list[float]] = {name: [] for name in parts}
    for fn in loops.values():
        fn()  # trace and warm up
    for _ in range(rounds):  # the parts interleaved, round by round: the same load for each
        for name, fn in loops.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    print(f"tf {tf.__version__}, ops on one thread, {threads} inter-op thread(s), one slice of "
          f"{BATCH}: compiled loops of {steps} steps, median of {rounds} rounds")
    for name, ms in times.items():
        print(f"tf:   {name:22s} {_figure(ms)} per step")
    med = {name: statistics.median(ms) for name, ms in times.items()}
    whole = med["whole step (+ Adam)"]
    shares = {"forward": med["forward"],
              "loss": med["forward + loss"] - med["forward"],
              "backward": med["forward + backward"] - med["forward + loss"],
              "Adam and the rest": whole - med["forward + backward"]}
    print("tf: by part: " + "; ".join(f"{k} {100 * v / whole:.0f}% ({v:.3f} ms)"
                                      for k, v in shares.items()))


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m train.profile",
                       description="Where the toolkit's training step spends its time.")
    p.add_argument("--frameworks", default="torch,tf",
                   help="comma-separated: torch, tf (default: both)")
    p.add_argument("--threads", type=int, default=1, help="threads per framework (default 1)")
    p.add_argument("--steps", type=int, default=100, help="steps per round (default 100)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--data-dir", default=None,
                   help="folder of the four Fashion-MNIST files (else $FASHION_MNIST_DIR)")
    p.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return cli_call(lambda: _main(args, p))


def _main(args, p) -> int:
    check_threads(args.threads)
    if args.steps < 1 or args.rounds < 1:
        p.error("--steps and --rounds must be at least 1")
    if args.worker:
        (_torch if args.worker == "torch" else _tf)(args.threads, args.steps, args.rounds,
                                                     args.data_dir)
        return 0
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown or not frameworks:
        p.error(f"--frameworks: unknown {', '.join(unknown) or '(none)'}; "
                f"choose from {', '.join(FRAMEWORKS)}")
    data.load(args.data_dir)  # verified once here, with its one-line error if it is wrong
    print(f"training step profile; {load_average()}", flush=True)
    for framework in frameworks:  # one framework per process
        cmd = [sys.executable, "-m", "train.profile", "--worker", framework,
               "--threads", str(args.threads), "--steps", str(args.steps),
               "--rounds", str(args.rounds)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        proc = subprocess.run(cmd, env={**os.environ, "LENET5_NO_BOOTSTRAP": "1"})
        if proc.returncode:
            return proc.returncode
    print(load_average())
    return 0


if __name__ == "__main__":
    sys.exit(main())
