"""Training throughput benchmark: the seed's input pipelines vs the toolkit's, per framework.

`python -m train.bench [--steps N] [--repeats R] [--data-dir DIR]` prints images/s (median of R
runs, each after a burn-in) for four cases, each in its own process:
- torch seed:    torchvision FashionMNIST + per-image PIL ToTensor + DataLoader(shuffle)
- torch toolkit: pre-scaled float32 channels-last tensor, index batches, fused Adam
                 (train.torch_lenet.train_one_epoch)
- tf seed:       keras.datasets.fashion_mnist + model.fit on float64 NumPy arrays
- tf toolkit:    float32 tf.data + steps_per_execution (train.keras_lenet)
Same model, optimizer, loss and batch size in each pair. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train import data

CASES = [("torch", "seed"), ("torch", "toolkit"), ("tf", "seed"), ("tf", "toolkit")]


def _stage_files(folder: Path, tmp: Path) -> None:
    """Lay the verified files out where torchvision and keras.datasets look for them."""
    for sub in ("FashionMNIST/raw", "datasets/fashion-mnist"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
        for name in data.FILES:
            os.symlink((folder / name).resolve(), tmp / sub / name)


def _torch(mode: str, steps: int, repeats: int, tmp: Path) -> list[float]:
    import torch
    from torch.nn import functional as F

    from train.recipe import EpochLog, Recipe
    from train.torch_lenet import (LeNet5, make_deterministic, make_optimizer, to_channels_last,
                                   train_one_epoch)

    make_deterministic(0)
    model = LeNet5()
    n = steps * 32
    rates = []
    if mode == "seed":
        import torchvision
        from torchvision import transforms

        ds = torchvision.datasets.FashionMNIST(str(tmp), train=True, download=True,
                                               transform=transforms.ToTensor())
        loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for r in range(repeats + 1):
            start = time.perf_counter()
            for step, (x, y) in enumerate(loader):
                if step == steps:
                    break
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            if r:  # the first pass is burn-in
                rates.append(n / (time.perf_counter() - start))
    else:
        ds = data.load(tmp / "datasets" / "fashion-mnist")
        model = model.to(memory_format=torch.channels_last)
        opt = make_optimizer(model, 1e-3)
        images = to_channels_last(torch.from_numpy(data.to_float(ds.train_images[:n])))
        labels = torch.from_numpy(ds.train_labels[:n].astype("int64"))
        gen = torch.Generator().manual_seed(0)
        log = EpochLog("torch", Recipe(), steps)
        log.tty = False
        for r in range(repeats + 1):
            start = time.perf_counter()
            train_one_epoch(model, opt, images, labels, 32, gen, log)
            if r:
                rates.append(n / (time.perf_counter() - start))
    return rates


def _tf(mode: str, steps: int, repeats: int, tmp: Path) -> list[float]:
    os.environ["KERAS_HOME"] = str(tmp)
    from train import keras_lenet as kl
    from train.recipe import Recipe

    import keras

    kl.make_deterministic(0)
    n = steps * 32
    recipe = Recipe()
    if mode == "seed":
        (x, y), _ = keras.datasets.fashion_mnist.load_data()
        x = (x[:n] / 255.0).reshape(-1, 28, 28, 1)  # float64, as the seed does
        y = y[:n]
        model = kl.build_model()
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])

        def fit():
            model.fit(x, y, batch_size=32, epochs=1, shuffle=True, verbose=0)
    else:
        ds = data.load(tmp / "datasets" / "fashion-mnist")
        x = kl.nhwc(data.to_float(ds.train_images[:n]))
        y = ds.train_labels[:n].astype("int32")
        model = kl.compile_model(recipe)
        dataset = kl.make_dataset(x, y, recipe)

        def fit():
            model.fit(dataset, epochs=1, shuffle=False, verbose=0)
    rates = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        fit()
        if r:
            rates.append(n / (time.perf_counter() - start))
    return rates


def worker(framework: str, mode: str, steps: int, repeats: int, data_dir: str | None) -> None:
    """Run one case in this process and print its rates as JSON."""
    folder = data.ensure_files(data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        _stage_files(folder, Path(tmp))
        fn = _torch if framework == "torch" else _tf
        print(json.dumps(fn(mode, steps, repeats, Path(tmp))))


def main(argv: list[str] | None = None) -> int:
    """Run every case in its own process and print a table."""
    p = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400, help="timed steps of batch 32 per run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case (median quoted)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(*args.worker, args.steps, args.repeats, args.data_dir)
        return 0
    data.ensure_files(args.data_dir)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    print(f"training throughput, batch 32, {args.steps} steps x {args.repeats} runs "
          f"after one burn-in run; {os.cpu_count()} CPUs")
    medians = {}
    for framework, mode in CASES:
        cmd = [sys.executable, "-m", "train.bench", "--worker", framework, mode,
               "--steps", str(args.steps), "--repeats", str(args.repeats)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            return 1
        rates = json.loads(out.stdout.strip().splitlines()[-1])
        medians[framework, mode] = statistics.median(rates)
        print(f"{framework:6s} {mode:8s} median {medians[framework, mode]:8.0f} images/s  "
              f"(runs: {', '.join(f'{r:.0f}' for r in rates)})", flush=True)
    for framework in ("torch", "tf"):
        ratio = medians[framework, "toolkit"] / medians[framework, "seed"]
        print(f"{framework}: toolkit / seed = {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
