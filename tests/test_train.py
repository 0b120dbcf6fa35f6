"""Training: the seed architectures, history.json, determinism, accuracy, framework boundaries."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import ROOT, python, run

FRAMEWORKS = ["torch", "tf"]
CHECKPOINT = {"torch": "model.pt", "tf": "model.keras"}


def _train(framework: str, artifacts, *args: str) -> dict:
    proc = run("train", framework, "--artifacts", str(artifacts), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((artifacts / framework / "history.json").read_text())


@pytest.mark.slow  # trains
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_same_seed_and_thread_count_give_bit_identical_weights(framework, tmp_path):
    small = ("--epochs", "2", "--limit", "650")  # 20 batches of 32 and one of 10, twice
    a = _train(framework, tmp_path / "a", *small, "--threads", "1")
    b = _train(framework, tmp_path / "b", *small, "--threads", "1")
    c = _train(framework, tmp_path / "c", *small, "--threads", "2")
    d = _train(framework, tmp_path / "d", *small, "--threads", "2")
    e = _train(framework, tmp_path / "e", *small, "--seed", "7")
    # The count is read back from the framework after setting it, not echoed from the flag.
    assert [h["threads"] for h in (a, b, c, d)] == [1, 1, 2, 2]
    assert e["threads"] >= 1  # no --threads: the framework's default, every core
    # Same seed, same thread count: the same bits (2 threads: Keras trains two slices of each
    # batch side by side, PyTorch splits each op); another seed: other weights.
    assert a["weights_sha256"] == b["weights_sha256"]
    assert a["epochs"][-1]["loss"] == b["epochs"][-1]["loss"]
    assert c["weights_sha256"] == d["weights_sha256"]
    assert e["weights_sha256"] != a["weights_sha256"]
    # ... and the same training whatever the count: only the rounding differs.
    assert c["epochs"][0]["loss"] == pytest.approx(a["epochs"][0]["loss"], rel=1e-4)
    # Threads are not part of the recipe: a model is not retrained for another thread count.
    assert a["recipe"] == c["recipe"] == {"epochs": 2, "batch_size": 32, "learning_rate": 0.001,
                                          "seed": 42, "limit": 650}
    assert len(a["epochs"]) == 2 and a["train_images"] == 650 and a["seed"] == 42
    assert (tmp_path / "a" / framework / CHECKPOINT[framework]).is_file()
    assert not [p for p in (tmp_path / "a" / framework).iterdir() if p.name.startswith(".")]
    proc = run("train", framework, "--artifacts", str(tmp_path / "f"), *small, "--threads", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --threads must be at least 1, got 0"


@pytest.mark.slow  # trains
def test_bench_compares_seed_and_toolkit_side_by_side():
    proc = run("train.bench", "--epochs", "1", "--limit", "320", "--threads", "1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for framework in FRAMEWORKS:
        for mode in ("seed", "toolkit"):
            [line] = [l for l in lines if l.split()[:2] == [framework, mode]]
            assert "images/s" in line and "1 threads" in line
        [ratio] = [l for l in lines if l.startswith(f"{framework}: toolkit / seed = ")]
        assert float(ratio.split("= ")[1].split("x")[0]) > 0


@pytest.mark.parametrize("args, words", [
    (("--frameworks", "jax"), "--frameworks: unknown jax; choose from torch, tf"),
    (("--steps", "0"), "--steps and --rounds must be at least 1"),
    (("--threads", "0"), "--threads must be at least 1, got 0"),
])
def test_profile_bad_flags_are_one_line(args, words):
    proc = run("train.profile", *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr


@pytest.mark.slow  # trains a few steps
def test_profile_says_where_a_step_goes():
    proc = run("train.profile", "--steps", "4", "--rounds", "1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    # torch: the operators by their own time, the convolutions' kernels among them, and the
    # parts adding up to the profiled total.
    assert "aten::convolution_backward" in out and "aten::mkldnn_convolution" in out
    [parts] = [l for l in out.splitlines() if l.startswith("torch: by part: ")]
    shares = [float(p.split("%")[0].split()[-1]) for p in parts.split("; ")]
    assert len(shares) == 7 and abs(sum(shares) - 100) <= 4  # rounded to whole percents
    # tf: the four compiled loops, each timed, and their differences as parts.
    for part in ("forward", "forward + loss", "forward + backward", "whole step (+ Adam)"):
        [line] = [l for l in out.splitlines() if l.startswith(f"tf:   {part:22s} ")]
        assert float(line.split(" ms (range")[0].split()[-1]) > 0
    assert any(l.startswith("tf: by part: forward ") for l in out.splitlines())
    assert proc.stderr == ""


@pytest.mark.slow  # trains
def test_torch_epoch_matches_torch_optim_adam_bit_for_bit(data_dir):
    """The toolkit's lean Adam and end-of-epoch bookkeeping against the textbook loop:
    torch.optim.Adam(fused=True), the loss and hits summed step by step with .item()."""
    code = f"""
import torch
from torch.nn import functional as F
from train import data
from train.recipe import EpochLog, Recipe
from train.torch_lenet import LeNet5, Trainer, make_deterministic, to_channels_last
torch.set_num_threads(1)
ds = data.load({str(data_dir)!r})
n = 650  # 20 batches of 32 and a short one of 10
images, labels = data.to_float(ds.train_images[:n]), ds.train_labels[:n]
recipe = Recipe(epochs=2)
make_deterministic(recipe.seed)
trainer = Trainer(recipe, images, labels)
log = EpochLog("torch", recipe, 21)
toolkit = [trainer.epoch(log) for _ in range(2)]

make_deterministic(recipe.seed)
model = LeNet5().to(memory_format=torch.channels_last)
optimizer = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate, fused=True)
generator = torch.Generator().manual_seed(recipe.seed)
x_all, y_all = to_channels_last(torch.from_numpy(images)), torch.from_numpy(labels.astype("int64"))
textbook = []
for _ in range(2):
    order = torch.randperm(n, generator=generator)
    loss_sum, hits = 0.0, 0
    for start in range(0, n, 32):
        idx = order[start:start + 32]
        optimizer.zero_grad()
        logits = model(x_all[idx])
        loss = F.cross_entropy(logits, y_all[idx])
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(idx)
        hits += int((logits.argmax(1) == y_all[idx]).sum())
    textbook.append((loss_sum / n, hits / n))
ours, theirs = trainer.model.state_dict(), model.state_dict()
assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "weights differ"
for (loss_a, acc_a), (loss_b, acc_b) in zip(toolkit, textbook):
    assert abs(loss_a - loss_b) < 1e-12 * loss_b and acc_a == acc_b, (toolkit, textbook)
print("ok", toolkit)
"""
    proc = python(code)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.mark.slow  # trains
@pytest.mark.parametrize("framework,parameters", [("torch", 61706), ("tf", 107786)])
def test_one_full_epoch_reaches_80_percent(framework, parameters, tmp_path):
    h = _train(framework, tmp_path, "--epochs", "1", "--threads", "1")  # 2 spin on a busy machine
    assert h["parameters"] == parameters
    assert h["train_images"] == 60000
    assert 0.80 <= h["test_accuracy"] <= 1.0
    assert h["images_per_second"] > 0 and h["seconds"] > 0
    versions = h["versions"]
    assert ("torch" in versions) == (framework == "torch")
    assert ("tensorflow" in versions) == (framework == "tf")
    assert h["epochs"][0]["epoch"] == 1 and 0 < h["epochs"][0]["accuracy"] <= 1


@pytest.mark.parametrize("module,forbidden", [
    ("train.torch_lenet", ("tensorflow", "keras", "tf2onnx")),
    ("convert.export.from_torch", ("tensorflow", "keras", "tf2onnx")),
    ("train.keras_lenet", ("torch", "torchvision")),
    ("convert.export.from_tf", ("torch", "torchvision")),
])
def test_framework_boundaries(module, forbidden):
    """No other framework comes in; and TensorFlow, where it does, runs its oneDNN kernels
    (train.quiet: TF leaves them off on CPUs without AVX-512 VNNI/BF16 or AMX)."""
    proc = python(f"import importlib, sys\nimportlib.import_module({module!r})\n"
                  f"print(sorted(m for m in {list(forbidden)!r} if m in sys.modules))\n"
                  "if 'tensorflow' in sys.modules:\n"
                  "    from tensorflow.python.util import _pywrap_util_port\n"
                  "    print('oneDNN', _pywrap_util_port.IsMklEnabled())\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "[]" in lines
    tf_module = "tensorflow" not in forbidden
    assert ("oneDNN True" in lines) == tf_module, lines


def test_tensorflow_environment_keeps_what_the_user_set(monkeypatch):
    from train.quiet import tensorflow_environment

    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    tensorflow_environment()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0" and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    tensorflow_environment()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"


FRAMEWORKS_AND_CONVERTERS = ("torch", "torchvision", "tensorflow", "keras", "tf2onnx", "onnx2tf",
                             "onnx2torch")
# every module of the shared core and of validate/, and convert's framework-free ones
FRAMEWORK_FREE = tuple(sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for folder in ("train/core", "validate") for p in (ROOT / folder).rglob("*.py"))) + (
    "train.data", "train.command", "convert.cli", "convert.pipeline", "convert.quantize")


def test_framework_free_modules_import_no_framework():
    """Each module in turn, in one interpreter: the first one that pulls a framework in is
    named."""
    proc = python("import importlib, json, sys\n"
                  f"for module in {list(FRAMEWORK_FREE)!r}:\n"
                  "    importlib.import_module(module)\n"
                  f"    bad = sorted(m for m in {list(FRAMEWORKS_AND_CONVERTERS)!r} "
                  "if m in sys.modules)\n"
                  "    print(json.dumps([module, bad]))\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
    assert [m for m, _ in results] == list(FRAMEWORK_FREE)
    assert [(m, bad) for m, bad in results if bad] == []


def test_bad_flags_are_one_line_exit_2(tmp_path):
    proc = run("train", "torch", "--epochs", "0", "--artifacts", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --epochs must be at least 1, got 0"
