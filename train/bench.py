"""Training throughput: the seed's code vs the toolkit's, per framework, timed side by side.

`python -m train.bench [--frameworks torch,tf] [--epochs 3] [--threads N] [--limit N]`
times whole training epochs (60,000 images, batch 32, Adam 1e-3) in four cases:

- torch seed:    torchvision FashionMNIST with per-image PIL `ToTensor`, `DataLoader(batch 32,
                 shuffle=True)`, `torch.optim.Adam`, cross-entropy, loss and accuracy summed
                 per step (`.item()`), on train.torch_lenet.LeNet5 (the seed's module).
- torch toolkit: train.torch_lenet.Trainer, what `python -m train torch` runs: the images
                 scaled once into one float32 channels-last tensor, batches gathered by a
                 seeded index permutation, the fused Adam kernel called without
                 torch.optim's per-step bookkeeping, loss and hits summed once per epoch.
- tf seed:       `keras.datasets.fashion_mnist`, pixels / 255.0 as float64 NumPy arrays, the
                 `keras.Sequential` LeNet-5 (train.keras_lenet.build_model) compiled with
                 Adam, sparse categorical cross-entropy and an accuracy metric, and one
                 `model.fit(x, y, batch_size=32, epochs=E, shuffle=True)` call.
- tf toolkit:    train.keras_lenet.Trainer, what `python -m train tf` runs: a compiled
                 tf.function doing 100 steps per call over a seeded index permutation of
                 float32 tensors, one-thread ops, each batch cut into one slice per thread
                 trained side by side, TF's fused Adam kernel, oneDNN capped at AVX2.

Each case lives in its own process (one framework per process), set up once; the parent then
asks the two processes of a framework for one epoch at a time, alternating seed and toolkit
(ABBA order), so that both see the same load on a shared machine. The first epoch of each is
a burn-in (tracing, allocation) and is not counted; the seed's `fit` is paused between
epochs inside its own call (a callback waits for the parent), so it runs as the seed ran it.

Threads: with `--threads N`, each framework gets N threads on both sides (torch:
`set_num_threads(N)`; TF seed: intra- and inter-op pools of N, TF's own default on an N-core
machine; TF toolkit: N slices of each batch, up to 2 for batch 32, on one-thread ops).
Without it, each side runs with its own default: every core.

Printed per case: seconds per epoch (median and every epoch), images/s, CPU seconds per
epoch, threads, and how many cores other processes kept busy meanwhile (from /proc/stat);
per framework: toolkit / seed images/s, from the medians and per round.

`python -m train.bench --pipeline [--epochs 30]` is the whole-job figure: the wall time of
the seed's two trainings back to back (each a fresh process: imports, data, E epochs, test
accuracy) against `python -m convert all --force --epochs E` (data check, both trainings,
exports, validation, report) in a temporary folder.

A benchmark, not a test: quote its output with the load it reports.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # first of all: a clone's first run installs what the rest imports
    from train.core.bootstrap import ensure_environment

    ensure_environment(sys.argv[1:], "train.bench")

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

from train.core.errors import ArgumentParser, cli_call
from train import data
from train.core.contract import FRAMEWORKS
from train.core.threads import check_threads, default_threads, load_average
from train.recipe import EpochLog, Recipe

MODES = ("seed", "toolkit")
TAG = "BENCH "  # marks the worker's own stdout lines (torchvision prints there too)


# --- worker side: one case in this process -------------------------------------------------

def _stage_files(folder: Path, tmp: Path) -> None:
    """Lay the verified files out where torchvision and keras.datasets look for them."""
    for sub in ("FashionMNIST/raw", "datasets/fashion-mnist"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
        for name in data.FILES:
            os.symlink((folder / name).resolve(), tmp / sub / name)


def _say(**fields) -> None:
    print(TAG + json.dumps(fields), flush=True)


def _wait_for_parent() -> None:
    if not sys.stdin.readline():
        raise SystemExit("bench worker: the parent went away")


class _Epochs:
    """Runs epochs on the parent's word and reports each one's wall and CPU seconds."""

    def __init__(self, images: int) -> None:
        self.images, self._wall, self._cpu = images, 0.0, 0.0

    def begin(self) -> None:
        _wait_for_parent()
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def end(self) -> None:
        _say(seconds=time.perf_counter() - self._wall, cpu=time.process_time() - self._cpu,
             images=self.images)


# A case set up in the worker: its epoch reporter, one epoch, and the test accuracy.
_Case = tuple[_Epochs, Callable[[], None], Callable[[], float]]


def _torch_worker(mode: str, recipe: Recipe, threads: int | None, tmp: Path,
                  evaluate: bool) -> None:
    import torch

    from train import torch_lenet as tl

    tl.set_threads(threads)
    case = _torch_seed_case if mode == "seed" else _torch_toolkit_case
    epochs, one_epoch, accuracy = case(recipe, tmp)
    _serve_epochs(recipe, torch.get_num_threads(), epochs, one_epoch,
                  accuracy if evaluate else None)


def _torch_seed_case(recipe: Recipe, tmp: Path) -> _Case:
    """The seed's own PyTorch loop (torchvision dataset and DataLoader, torch.optim.Adam):
    (epochs, one_epoch, accuracy)."""
    import torch
    import torchvision
    from torchvision import transforms

    from train import torch_lenet as tl

    torch.manual_seed(recipe.seed)
    train_set = torchvision.datasets.FashionMNIST(str(tmp), train=True, download=True,
                                                  transform=transforms.ToTensor())
    if recipe.limit:
        train_set = torch.utils.data.Subset(train_set, range(recipe.limit))
    loader = torch.utils.data.DataLoader(train_set, batch_size=recipe.batch_size,
                                         shuffle=True)
    model = tl.LeNet5()
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
    criterion = torch.nn.CrossEntropyLoss()

    def one_epoch() -> None:
        model.train()
        # Per-step loss and accuracy bookkeeping, as fit and the toolkit both keep.
        running_loss, correct = 0.0, 0
        for x, y in loader:
            optimizer.zero_grad()
            logits = model(x)
            loss = criterion(logits, y)
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()

    def accuracy() -> float:
        test_set = torchvision.datasets.FashionMNIST(str(tmp), train=False, download=True,
                                                     transform=transforms.ToTensor())
        model.eval()
        hits = 0
        with torch.no_grad():
            for x, y in torch.utils.data.DataLoader(test_set, batch_size=1000):
                hits += (model(x).argmax(1) == y).sum().item()
        return hits / len(test_set)

    return _Epochs(len(train_set)), one_epoch, accuracy


def _torch_toolkit_case(recipe: Recipe, tmp: Path) -> _Case:
    """The toolkit's PyTorch trainer (train.torch_lenet): (epochs, one_epoch, accuracy)."""
    import numpy as np

    from train import torch_lenet as tl

    ds = data.load(tmp / "datasets" / "fashion-mnist")
    tl.make_deterministic(recipe.seed)
    n = min(recipe.limit or len(ds.train_images), len(ds.train_images))
    trainer = tl.Trainer(recipe, data.to_float(ds.train_images[:n]), ds.train_labels[:n])
    log = _quiet_log("torch", recipe)

    def one_epoch() -> None:
        trainer.epoch(log)

    def accuracy() -> float:
        probs = tl.predict(trainer.model, data.to_float(ds.test_images))
        return float(np.mean(probs.argmax(1) == ds.test_labels))

    return _Epochs(n), one_epoch, accuracy


def _serve_epochs(recipe: Recipe, threads: int, epochs: _Epochs, one_epoch: Callable[[], None],
                  accuracy: Callable[[], float] | None) -> None:
    """Say ready, run each epoch when the parent asks for it, then the test accuracy (None:
    not asked for)."""
    _say(ready=True, threads=threads)
    for _ in range(recipe.epochs):
        epochs.begin()
        one_epoch()
        epochs.end()
    if accuracy is not None:
        _say(test_accuracy=accuracy())


def _tf_worker(mode: str, recipe: Recipe, threads: int | None, tmp: Path,
               evaluate: bool) -> None:
    os.environ["KERAS_HOME"] = str(tmp)
    import numpy as np

    from train import keras_lenet as kl

    import keras
    import tensorflow as tf

    if mode == "seed":
        if threads is not None:  # TF's default pools for an N-core machine; else its defaults
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        keras.utils.set_random_seed(recipe.seed)
        (x, y), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
        x = (x / 255.0).reshape(-1, 28, 28, 1)  # float64, as the seed did
        if recipe.limit:
            x, y = x[:recipe.limit], y[:recipe.limit]
        model = kl.build_model()
        model.compile(optimizer=keras.optimizers.Adam(recipe.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        epochs = _Epochs(len(x))

        class Gate(keras.callbacks.Callback):
            """Holds fit at each epoch's start until the parent asks for the epoch."""

            def on_epoch_begin(self, epoch, logs=None):
                epochs.begin()

            def on_epoch_end(self, epoch, logs=None):
                epochs.end()

        _say(ready=True, threads=tf.config.threading.get_intra_op_parallelism_threads()
             or default_threads())
        model.fit(x, y, batch_size=recipe.batch_size, epochs=recipe.epochs, shuffle=True,
                  verbose=0, callbacks=[Gate()])
        if evaluate:
            x_test = (x_test / 255.0).reshape(-1, 28, 28, 1)
            _say(test_accuracy=float(model.evaluate(x_test, y_test, verbose=0)[1]))
        return
    used = kl.configure(threads, recipe.batch_size)
    ds = data.load(tmp / "datasets" / "fashion-mnist")
    kl.make_deterministic(recipe.seed)
    n = min(recipe.limit or len(ds.train_images), len(ds.train_images))
    trainer = kl.Trainer(recipe, kl.nhwc(data.to_float(ds.train_images[:n])), ds.train_labels[:n],
                         shards=used)
    log = _quiet_log("tf", recipe)

    def accuracy() -> float:
        probs = kl.predict(trainer.model, data.to_float(ds.test_images))
        return float(np.mean(probs.argmax(1) == ds.test_labels))

    _serve_epochs(recipe, used, _Epochs(n), lambda: trainer.epoch(log),
                  accuracy if evaluate else None)


def _quiet_log(framework: str, recipe: Recipe) -> EpochLog:
    log = EpochLog(framework, recipe, 0)
    log.tty = False  # no progress line: the worker's stdout is the parent's pipe
    return log


def worker(framework: str, mode: str, recipe: Recipe, threads: int | None,
           data_dir: str | None, evaluate: bool) -> None:
    """Run one case in this process: set up, say ready, then one epoch per line on stdin."""
    folder = data.ensure_files(data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        _stage_files(folder, Path(tmp))
        fn = _torch_worker if framework == "torch" else _tf_worker
        fn(mode, recipe, threads, Path(tmp), evaluate)


# --- parent side ----------------------------------------------------------------------------

class Case:
    """One worker process: the parent asks it for epochs one at a time."""

    def __init__(self, framework: str, mode: str, epochs: int, threads: int | None,
                 limit: int | None, data_dir: str | None, evaluate: bool = False) -> None:
        self.framework, self.mode = framework, mode
        cmd = [sys.executable, "-m", "train.bench", "--worker", framework, mode,
               "--epochs", str(epochs)]
        for flag, value in (("--threads", threads), ("--limit", limit),
                            ("--data-dir", data_dir)):
            if value is not None:
                cmd += [flag, str(value)]
        if evaluate:
            cmd.append("--evaluate")
        self.stderr = tempfile.TemporaryFile("w+")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, env=env)
        self.seconds: list[float] = []
        self.cpu: list[float] = []
        self.others: list[float] = []  # cores busy with other processes during each epoch
        self.images = 0
        self.threads = self._read()["threads"]

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        self.proc.wait()
        raise self._failed()

    def _failed(self) -> RuntimeError:
        """The worker's exit status and the end of its stderr."""
        self.stderr.seek(0)
        return RuntimeError(f"bench worker {self.framework} {self.mode} exited "
                            f"{self.proc.returncode}:\n{self.stderr.read()[-3000:]}")

    def epoch(self, keep: bool = True) -> float:
        """Run one epoch in the worker; return its wall seconds."""
        before = _cpu_ticks()
        self.proc.stdin.write("epoch\n")
        self.proc.stdin.flush()
        out = self._read()
        after = _cpu_ticks()
        if keep:
            self.seconds.append(out["seconds"])
            self.cpu.append(out["cpu"])
            if before and after and after[1] > before[1]:
                busy = (os.cpu_count() or 1) * (after[0] - before[0]) / (after[1] - before[1])
                self.others.append(max(0.0, busy - out["cpu"] / out["seconds"]))
        self.images = out["images"]
        return out["seconds"]

    def finish(self) -> dict:
        """Wait for the worker to end; return its last report (test accuracy, if asked)."""
        self.proc.stdin.close()
        out = {}
        for line in self.proc.stdout:
            if line.startswith(TAG):
                out = json.loads(line[len(TAG):])
        if self.proc.wait():
            raise self._failed()
        return out

    def line(self) -> str:
        """seconds and images/s per epoch (median), CPU seconds, threads, every epoch."""
        med = statistics.median(self.seconds)
        others = f"; others busy {statistics.mean(self.others):.1f} cores" if self.others else ""
        return (f"{self.framework:5s} {self.mode:7s} {med:6.2f} s/epoch "
                f"{self.images / med:7.0f} images/s  cpu {statistics.median(self.cpu):5.2f} "
                f"s/epoch  {self.threads} threads  (epochs: "
                f"{' '.join(f'{s:.2f}' for s in self.seconds)}{others})")


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole machine so far (Linux), else None."""
    try:
        with open("/proc/stat") as handle:
            ticks = [int(t) for t in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # minus idle and iowait


def compare(frameworks: tuple[str, ...], epochs: int, threads: int | None, limit: int | None,
            data_dir: str | None) -> dict[str, float]:
    """Time seed and toolkit epochs alternately per framework; print; return the ratios."""
    print(f"training throughput, batch 32, {epochs} timed epochs per case after one burn-in "
          f"epoch, seed and toolkit alternating; threads: {threads or 'framework default'}; "
          f"{os.cpu_count()} CPUs; {load_average()}", flush=True)
    ratios = {}
    for fw in frameworks:
        cases = {mode: Case(fw, mode, epochs + 1, threads, limit, data_dir) for mode in MODES}
        for mode in MODES:  # burn-in
            cases[mode].epoch(keep=False)
        paired = []
        for r in range(epochs):
            order = MODES if r % 2 == 0 else MODES[::-1]
            took = {mode: cases[mode].epoch() for mode in order}
            paired.append(took["seed"] / took["toolkit"])
        for mode in MODES:
            cases[mode].finish()
            print(cases[mode].line(), flush=True)
        seed, toolkit = (statistics.median(cases[m].seconds) for m in MODES)
        ratios[fw] = seed / toolkit
        print(f"{fw}: toolkit / seed = {ratios[fw]:.2f}x images/s (per round: "
              f"{' '.join(f'{p:.2f}' for p in paired)})", flush=True)
    print(load_average())
    return ratios


def pipeline(epochs: int, data_dir: str | None) -> float:
    """Time the seed's two trainings back to back against `python -m convert all`."""
    folder = data.ensure_files(data_dir)
    print(f"whole job, {epochs} epochs per framework; {os.cpu_count()} CPUs; {load_average()}",
          flush=True)
    seed_total, parts = 0.0, []
    for fw in FRAMEWORKS:
        start = time.perf_counter()
        case = Case(fw, "seed", epochs, None, None, str(folder), evaluate=True)
        for _ in range(epochs):
            case.epoch()
        accuracy = case.finish()["test_accuracy"]
        took = time.perf_counter() - start
        seed_total += took
        parts.append(f"{fw} {took:.0f} s, test accuracy {accuracy:.4f}")
        print(f"seed {fw}: {took:.1f} s (process start to exit; epochs "
              f"{' '.join(f'{s:.1f}' for s in case.seconds)})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "convert", "all", "--force", "--epochs", str(epochs),
               "--artifacts", str(Path(tmp) / "artifacts"), "--data-dir", str(folder)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "LENET5_NO_BOOTSTRAP": "1",
                                   "TF_CPP_MIN_LOG_LEVEL": "3"})
        toolkit = time.perf_counter() - start
        if proc.returncode not in (0, 1):  # 1: parity failed; the timing still stands
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n"
                               f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        accuracies = []
        for fw in FRAMEWORKS:
            history = json.loads((Path(tmp) / "artifacts" / fw / "history.json").read_text())
            accuracies.append(f"{fw} {history['test_accuracy']:.4f}")
    print(f"seed, two trainings back to back: {seed_total:.1f} s ({'; '.join(parts)})")
    print(f"toolkit, python -m convert all --epochs {epochs} (trainings, exports, validation): "
          f"{toolkit:.1f} s (exit {proc.returncode}; test accuracy {', '.join(accuracies)})")
    print(f"seed / toolkit wall time = {seed_total / toolkit:.2f}x; {load_average()}")
    return seed_total / toolkit


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the comparison (or the whole-job figure) and print it."""
    p = ArgumentParser(prog="python -m train.bench", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                   help="comma-separated subset of torch,tf (default both)")
    p.add_argument("--epochs", type=int, default=None,
                   help="timed epochs per case (default 3); with --pipeline, epochs per "
                        "training (default 30)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both seed and toolkit (default: each framework's own "
                        "default, every core)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="train on the first N images only (smoke runs)")
    p.add_argument("--pipeline", action="store_true",
                   help="time `python -m convert all` against the seed's two trainings")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "MODE"), help=argparse.SUPPRESS)
    p.add_argument("--evaluate", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    frameworks = tuple(f for f in args.frameworks.split(",") if f)
    if not frameworks or set(frameworks) - set(FRAMEWORKS):
        p.error(f"--frameworks: a comma-separated subset of {','.join(FRAMEWORKS)}")

    def body() -> int:
        check_threads(args.threads)
        if args.worker:
            recipe = Recipe(epochs=args.epochs, limit=args.limit)
            worker(*args.worker, recipe, args.threads, args.data_dir, args.evaluate)
        elif args.pipeline:
            pipeline(Recipe(epochs=Recipe().epochs if args.epochs is None else args.epochs).epochs,
                     args.data_dir)
        else:
            epochs = 3 if args.epochs is None else args.epochs
            Recipe(epochs=epochs, limit=args.limit)  # checks both flags
            data.ensure_files(args.data_dir)
            compare(frameworks, epochs, args.threads, args.limit, args.data_dir)
        return 0

    return cli_call(body)


if __name__ == "__main__":
    sys.exit(main())
