"""onnxruntime runners: one contract (`name`, `run(images) -> probabilities`) per provider.

The loader (session options, provider selection and confirmation) is kept apart from running.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from convert.errors import ArtifactError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class ProviderUnavailable(Exception):
    """The requested execution provider cannot run here; the message says why."""


@dataclass(frozen=True)
class ProviderStatus:
    """Whether an execution provider can be used, and why not."""

    provider: str
    available: bool
    reason: str = ""


def cuda_status() -> ProviderStatus:
    """Is the CUDA execution provider offered by this onnxruntime build?"""
    offered = ort.get_available_providers()
    if CUDA not in offered:
        return ProviderStatus(CUDA, False, f"onnxruntime {ort.__version__} offers "
                              f"{', '.join(offered)} only (a CPU build, or no CUDA libraries)")
    return ProviderStatus(CUDA, True)


def session_options(threads: int) -> ort.SessionOptions:
    """Graph optimisations on, thread count pinned (unpinned pools show ~100x tails here)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


class OnnxRunner:
    """One onnxruntime session on one provider; use as a context manager."""

    def __init__(self, path: Path, provider: str = CPU, threads: int | None = None) -> None:
        self.path, self.provider = Path(path), provider
        self.threads = threads or os.cpu_count() or 1
        self.name = f"onnxruntime/{provider.removesuffix('ExecutionProvider').lower()}"
        self.session: ort.InferenceSession | None = None

    def __enter__(self) -> "OnnxRunner":
        if self.provider == CUDA:
            status = cuda_status()
            if not status.available:
                raise ProviderUnavailable(status.reason)
            # TF32 off: parity is judged against float32 references.
            providers = [(CUDA, {"use_tf32": 0}), CPU]
        else:
            providers = [CPU]
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(self.threads),
                                                providers=providers)
        except Exception as exc:
            if self.provider == CUDA:
                raise ProviderUnavailable(f"session creation failed: {exc}") from None
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else repr(exc)
            raise ArtifactError(f"{self.path}: onnxruntime cannot load it ({reason})") from None
        active = self.session.get_providers()
        # Never a silent fallback: the first provider in use must be the one asked for.
        if active[0] != self.provider:
            raise ProviderUnavailable(f"onnxruntime fell back to {active[0]} "
                                      f"(providers in use: {active})")
        self.input_name = self.session.get_inputs()[0].name
        return self

    def __exit__(self, *exc) -> None:
        self.session = None

    def run(self, images: np.ndarray) -> np.ndarray:
        """float32 NCHW images -> probabilities [N, 10]."""
        return self.session.run(["probabilities"], {self.input_name: images})[0]
