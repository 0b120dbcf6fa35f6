"""Parity and accuracy: small typed results whose truth value is "passed" (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np



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


# A gate tighter than the noise either side inherently has fails healthy models now and then;
# one a thousand times looser than that noise would let a real bug through.
LOOSE_FACTOR = 1000.0


def tolerance_check(tolerance: float, floor: float | None) -> dict:
    """Judge a tolerance against the measured noise floor."""
    if floor is None:
        return {"status": "unknown", "message": "no float64 reference: noise floor not measured"}
    if tolerance < floor:
        return {"status": "flaky", "message": f"tolerance {tolerance:g} is below the measured "
                f"noise floor {floor:.2g}: the gate can fail on a healthy model"}
    if floor > 0 and tolerance > LOOSE_FACTOR * floor:
        return {"status": "loose", "message": f"tolerance {tolerance:g} is more than "
                f"{LOOSE_FACTOR:g}x the noise floor {floor:.2g}: too loose to catch a real bug"}
    if floor == 0:
        return {"status": "ok", "message": "noise floor 0 (bit-exact)"}
    return {"status": "ok", "message": f"tolerance {tolerance / floor:.0f}x the noise floor"}


def outputs_close(actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> dict:
    """Compare one named output with its stored value: |a - e| <= atol + rtol * |e|."""
    if actual.shape != expected.shape:
        return {"passed": False, "reason": f"shape {list(actual.shape)} vs stored "
                f"{list(expected.shape)}", "max_abs_diff": None}
    if expected.dtype.kind in "fc" or actual.dtype.kind in "fc":
        a, e = actual.astype(np.float64), expected.astype(np.float64)
        diff = np.abs(a - e)
        ok = bool(np.all(diff <= atol + rtol * np.abs(e)) and not np.isnan(diff).any())
        max_diff = float(diff.max()) if diff.size else 0.0
    else:
        ok = bool(np.array_equal(actual, expected))
        max_diff = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max()
                         ) if actual.size else 0.0
    return {"passed": ok, "max_abs_diff": max_diff}
