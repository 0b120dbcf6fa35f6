"""onnxruntime in this process: the CPU execution provider, and CUDA where it is offered.

CUDA is selected explicitly and confirmed with `session.get_providers()`; a session that
would fall back to the CPU is refused, never used silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from validate.runners.base import Runner, RunnerFailed, RunnerUnavailable, tidy

# Errors reach the user through the verdict, in one line each; onnxruntime's own log lines
# would repeat them on stderr.
ort.set_default_logger_severity(4)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class ProviderUnavailable(RunnerUnavailable):
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
                              f"{', '.join(offered)} only (a CPU build, or no CUDA libraries; "
                              "install onnxruntime-gpu on a CUDA machine)")
    return ProviderStatus(CUDA, True)


def session_options(threads: int) -> ort.SessionOptions:
    """Graph optimisations on, thread count pinned (unpinned pools show ~100x tails here)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 4  # errors reach the verdict; no duplicate log lines
    return opts


def one_line(exc: BaseException, limit: int = 240) -> str:
    """An exception's message as one readable line (or its type)."""
    return tidy(str(exc), limit) if str(exc).strip() else type(exc).__name__


class OnnxRunner(Runner):
    """One onnxruntime session on one provider."""

    key = "cpu"
    name = "onnxruntime-cpu"
    runtime = "onnxruntime"
    provider = CPU
    tolerance = 1e-5
    description = "onnxruntime (Python), CPU execution provider"
    intermediates = True
    default_batch = 1000  # whole-test-set runs in chunks: one 10,000-image call peaks at ~0.5 GB

    def __init__(self, model: Path | bytes, provider: str = CPU, threads: int | None = None,
                 ) -> None:
        super().__init__(model, threads or os.cpu_count() or 1)
        self.provider = provider
        self.session: ort.InferenceSession | None = None

    @property
    def path(self) -> Path | None:
        """The model file, when the runner was given one."""
        return None if isinstance(self.model, bytes) else self.model

    def load(self) -> None:
        if self.provider == CUDA:
            status = cuda_status()
            if not status.available:
                raise ProviderUnavailable(status.reason)
            # TF32 off: parity is judged against float32 references.
            providers = [(CUDA, {"use_tf32": 0}), CPU]
        else:
            providers = [CPU]
        source = self.model if isinstance(self.model, bytes) else str(self.model)
        try:
            self.session = ort.InferenceSession(source, session_options(self.threads),
                                                providers=providers)
        except Exception as exc:
            if self.provider == CUDA and "CUDA" in str(exc):
                raise ProviderUnavailable(f"session creation failed: {one_line(exc)}") from None
            raise RunnerFailed(f"onnxruntime cannot load it ({one_line(exc)})", str(exc)) from None
        active = self.session.get_providers()
        # Never a silent fallback: the first provider in use must be the one asked for.
        if active[0] != self.provider:
            raise ProviderUnavailable(f"onnxruntime fell back to {active[0]} "
                                      f"(providers in use: {active})")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def close(self) -> None:
        self.session = None

    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None
             ) -> dict[str, np.ndarray]:
        names = outputs or self.output_names
        try:
            values = self.session.run(names, feeds)
        except Exception as exc:
            raise RunnerFailed(f"onnxruntime failed to run it ({one_line(exc)})", str(exc)) from None
        return dict(zip(names, values))


class CpuRunner(OnnxRunner):
    """onnxruntime, CPU execution provider."""

    def __init__(self, model: Path | bytes, threads: int = 1) -> None:
        super().__init__(model, CPU, threads)


class CudaRunner(OnnxRunner):
    """onnxruntime, CUDA execution provider (TF32 off), confirmed in use."""

    key = "cuda"
    name = "onnxruntime-cuda"
    provider = CUDA
    tolerance = 1e-4  # different kernels (cuDNN); TF32 off
    description = "onnxruntime (Python), CUDA execution provider, TF32 off"

    def __init__(self, model: Path | bytes, threads: int = 1) -> None:
        super().__init__(model, CUDA, threads)

    @classmethod
    def availability(cls) -> str | None:
        status = cuda_status()
        return None if status.available else status.reason
