"""PyTorch side: the seed's LeNet-5, its training loop, and checkpoint loading.

Imports torch only; never tensorflow (DESIGN.md: one framework per process).
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import io
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from train.core.errors import ArtifactError
from train.core.fileio import write_bytes
from train import data
from train.recipe import EpochLog, Recipe, run_epochs, top1_accuracy, write_history

ARCHITECTURE = ("Conv(1->6, k5, pad 2) ReLU AvgPool2, Conv(6->16, k5) ReLU AvgPool2, "
                "Linear 400->120 ReLU, 120->84 ReLU, 84->10 (logits)")


class LeNet5(nn.Module):
    """The seed's PyTorch LeNet-5: returns logits (61,706 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(), nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def versions() -> dict[str, str]:
    """This framework's versions for history.json and ONNX metadata."""
    return {"torch": torch.__version__, "torchvision": torchvision_version()}


def torchvision_version() -> str:
    """`torchvision.__version__` (with its build's label, e.g. 0.29.1+cu130), read from its
    version.py: importing torchvision pulls in torch._dynamo, 2 s that nothing here uses.
    The installed distribution's version where that file says nothing."""
    spec = importlib.util.find_spec("torchvision")
    path = Path(spec.origin).with_name("version.py") if spec and spec.origin else None
    if path and path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("__version__ ="):
                return str(ast.literal_eval(line.partition("=")[2].strip()))
    return importlib.metadata.version("torchvision")


def set_threads(threads: int | None) -> int:
    """Use `threads` intra-op threads (None: torch's default, every core); return the count."""
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def make_deterministic(seed: int) -> None:
    """Seed every generator and refuse nondeterministic kernels.

    The kernels' switch is set directly: `torch.use_deterministic_algorithms(True)` also sets
    torch.compile's (inductor's) flag, and importing inductor's config for it pulls in
    torch._dynamo and torch._inductor, 2.5 s of every training process. Nothing here compiles.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    torch._C._set_deterministic_algorithms(True)
    assert torch.are_deterministic_algorithms_enabled()


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters())


def to_channels_last(images: torch.Tensor) -> torch.Tensor:
    """NCHW values in channels-last memory: oneDNN's convolutions and pooling run faster so."""
    return images.contiguous(memory_format=torch.channels_last)


class FusedAdam:
    """Adam with torch.optim.Adam(fused=True)'s kernel (`torch._fused_adam_`, one pass over all
    parameters), without that class's per-step Python bookkeeping (grouping the tensors by
    device and dtype, state look-ups, hooks): ~0.18 ms of a 2.3 ms step here. The same update,
    bit for bit (tests/test_train.py checks it against torch.optim.Adam). No weight decay,
    amsgrad or maximize: the recipe uses none."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = list(params)
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format)
                         for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format)
                            for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32) for _ in self.params]
        self.lr, self.betas, self.eps = lr, betas, eps

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        torch._foreach_add_(self.steps, 1)
        torch._fused_adam_(self.params, [p.grad for p in self.params], self.exp_avgs,
                           self.exp_avg_sqs, [], self.steps, lr=self.lr, beta1=self.betas[0],
                           beta2=self.betas[1], weight_decay=0.0, eps=self.eps, amsgrad=False,
                           maximize=False)


def make_optimizer(model: nn.Module, lr: float) -> FusedAdam:
    """Adam (see FusedAdam)."""
    return FusedAdam(model.parameters(), lr=lr)


def train_one_epoch(model: nn.Module, optimizer: FusedAdam, images: torch.Tensor,
                    labels: torch.Tensor, batch_size: int, generator: torch.Generator,
                    log: EpochLog) -> tuple[float, float]:
    """One shuffled pass; returns mean loss and accuracy."""
    model.train()
    order = torch.randperm(len(images), generator=generator)
    # Each step's loss and logits are kept (detached, ~2.4 MB an epoch) and summed once at the
    # end: a .item() per step would synchronise, and running sums cost a few ops per step.
    losses: list[torch.Tensor] = []
    logits_seen: list[torch.Tensor] = []
    for step, start in enumerate(range(0, len(images), batch_size), 1):
        idx = order[start:start + batch_size]
        x, y = images[idx], labels[idx]
        optimizer.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        logits_seen.append(logits.detach())
        if log.tty and step % 50 == 0:
            log.step(step, loss.item())
    sizes = torch.full((len(losses),), float(batch_size), dtype=torch.float64)
    sizes[-1] = len(images) - batch_size * (len(losses) - 1)  # the last batch may be short
    loss_sum = (torch.stack(losses).double() * sizes).sum()
    correct = (torch.cat(logits_seen).argmax(1) == labels[order]).sum()
    return float(loss_sum) / len(images), int(correct) / len(images)


def predict(model: nn.Module, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Softmax probabilities float32 [N, 10] for float32 NCHW images."""
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size])
            out.append(torch.softmax(model(x), dim=1).numpy())
    return np.concatenate(out).astype(np.float32)


class Trainer:
    """The toolkit's training run for one recipe: model, optimizer, data, shuffling."""

    def __init__(self, recipe: Recipe, images_nchw: np.ndarray, labels: np.ndarray) -> None:
        self.recipe = recipe
        self.images = to_channels_last(torch.from_numpy(images_nchw))
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.model = LeNet5().to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, recipe.learning_rate)
        # Reshuffled every epoch from the recipe's seed: the same seed, the same batches.
        self.generator = torch.Generator().manual_seed(recipe.seed)

    def epoch(self, log: EpochLog) -> tuple[float, float]:
        """Train one reshuffled epoch; returns mean loss and accuracy."""
        return train_one_epoch(self.model, self.optimizer, self.images, self.labels,
                               self.recipe.batch_size, self.generator, log)


def train(recipe: Recipe, data_dir: str | None, artifacts: Path,
          threads: int | None = None) -> dict:
    """Train with the recipe on `threads` threads (None: every core); write model.pt and
    history.json; return the history."""
    threads = set_threads(threads)
    ds = data.load(data_dir)
    make_deterministic(recipe.seed)
    n = min(recipe.limit or len(ds.train_images), len(ds.train_images))
    trainer = Trainer(recipe, data.to_float(ds.train_images[:n]), ds.train_labels[:n])
    model = trainer.model
    log = run_epochs("torch", recipe, trainer, n, parameter_count(model), threads)
    accuracy = top1_accuracy(predict(model, data.to_float(ds.test_images)), ds.test_labels)
    folder = artifacts / "torch"
    # Serialised in memory first: torch.save reports a full disk as a RuntimeError of its
    # own, write_bytes as the one-line error it is.
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    write_bytes(folder / "model.pt", buffer.getvalue())
    return write_history(folder, "torch", recipe, log, versions(), ARCHITECTURE,
                         parameter_count(model), n, accuracy,
                         [t.numpy() for t in model.state_dict().values()], folder / "model.pt",
                         threads)


def _load_reason(exc: Exception) -> str:
    """torch.load's own words, short: its advice to load with weights_only=False (which would
    run code from the file) is left out."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:  # not a weights-only pickle: the unpickler's reason
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        return f"not a weights-only checkpoint: {detail[0][:150] if detail else 'unreadable'}"
    first = text.splitlines()[0] if text else type(exc).__name__
    return first.split(". ")[0][:200]


def load_model(path: Path) -> LeNet5:
    """Load a state_dict checkpoint without unpickling code (weights_only=True)."""
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; run `python -m convert train torch` first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = LeNet5()
        model.load_state_dict(state)
    except Exception as exc:  # a corrupt or foreign file: any failure is the file's fault
        raise ArtifactError(f"{path}: not a LeNet-5 state_dict ({_load_reason(exc)})") from None
    return model.eval()
