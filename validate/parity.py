"""Parity and accuracy: small typed results whose truth value is "passed" (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convert.errors import ToolkitError


@dataclass(frozen=True)
class Tolerances:
    """Pass/fail limits for parity against the native references."""

    atol: float = 1e-5           # max |probability difference| on the CPU provider
    cuda_atol: float = 1e-4      # the same on CUDA (different kernels, TF32 off)
    min_agreement: float = 1.0   # top-1 agreement required (1.0 = no flips)

    def __post_init__(self) -> None:
        if not (self.atol >= 0 and self.cuda_atol >= 0):
            raise ToolkitError(f"--atol and --cuda-atol must be >= 0, got {self.atol:g} and "
                               f"{self.cuda_atol:g}")
        if not 0 <= self.min_agreement <= 1:
            raise ToolkitError(f"--min-agreement must be within 0..1, got {self.min_agreement:g}")


@dataclass(frozen=True)
class Parity:
    """onnxruntime vs native on one provider."""

    provider: str
    images: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    flip_count: int
    flips: list[int]             # indices of every image whose top-1 class differs
    accuracy_native: float
    accuracy_onnxruntime: float
    atol: float
    min_agreement: float
    passed: bool

    def __bool__(self) -> bool:
        return self.passed

    def failure(self) -> str:
        """One clause naming the failing figures."""
        parts = []
        if not self.max_abs_diff <= self.atol:
            parts.append(f"max |diff| {self.max_abs_diff:.3g} > {self.atol:g}")
        if self.top1_agreement < self.min_agreement:
            parts.append(f"top-1 agreement {self.top1_agreement:.4%} < "
                         f"{self.min_agreement:.4%} ({self.flip_count} flips)")
        if self.accuracy_native != self.accuracy_onnxruntime:
            parts.append(f"accuracy {self.accuracy_onnxruntime:.4f} vs native "
                         f"{self.accuracy_native:.4f}")
        return "; ".join(parts)


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in 0..1."""
    return float((probabilities.argmax(1) == labels).mean())


def per_class_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> list[float]:
    """Top-1 accuracy of each class 0..9."""
    pred = probabilities.argmax(1)
    return [float((pred[labels == c] == c).mean()) for c in range(10)]


def compare(actual: np.ndarray, reference: np.ndarray, labels: np.ndarray, provider: str,
            atol: float, min_agreement: float) -> Parity:
    """Compare onnxruntime probabilities with the native reference."""
    if actual.shape != reference.shape:
        raise ValueError(f"shape {actual.shape} vs reference {reference.shape}")
    diff = np.abs(actual.astype(np.float64) - reference.astype(np.float64))
    # NaN never passes: max() propagates it and the comparisons below are False.
    max_diff = float(diff.max())
    flips = np.flatnonzero(actual.argmax(1) != reference.argmax(1))
    agreement = 1.0 - len(flips) / len(actual)
    acc_native, acc_ort = accuracy(reference, labels), accuracy(actual, labels)
    passed = bool(max_diff <= atol and agreement >= min_agreement and acc_native == acc_ort)
    return Parity(provider, len(actual), max_diff, float(diff.mean()), agreement, len(flips),
                  flips.tolist(), acc_native, acc_ort, atol, min_agreement,
                  passed)
