"""Latency measurement and statistics (numpy only), shared by every runtime."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

BATCH_SIZES = (1, 32, 256)
METHOD = ("warm-up, then timed runs until a minimum count and duration; p50/p90/p99 of single "
          "calls; images/s = batch / p50; threads pinned (onnxruntime intra-op as stated, "
          "inter-op 1); runtimes in another process are timed inside that process")


def thread_counts() -> list[int]:
    """1 thread and all cores (once, on a single-core machine)."""
    return sorted({1, os.cpu_count() or 1})


@dataclass(frozen=True)
class TimingPlan:
    """How long to time one case: warm-up calls, then at least `min_runs` calls and
    `min_seconds`, at most `max_runs`."""

    warmup: int = 20
    min_runs: int = 50
    min_seconds: float = 1.0
    max_runs: int = 2000

    @classmethod
    def for_run(cls, quick: bool) -> "TimingPlan":
        """The full plan, or a light one for smoke runs."""
        return cls(5, 20, 0.1, 200) if quick else cls()

    def more(self, done: int, elapsed: float) -> bool:
        """Should another timed call be made?"""
        return done < self.max_runs and (done < self.min_runs or elapsed < self.min_seconds)

    def as_dict(self) -> dict:
        """For the JavaScript runners, which time inside their own process."""
        return asdict(self)


@dataclass(frozen=True)
class Latency:
    """One runtime at one batch size and thread count."""

    runtime: str            # "onnxruntime", "torch", "tensorflow", "onnxruntime-node", …
    provider: str           # execution provider or device
    batch_size: int
    threads: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    images_per_second: float  # batch_size / p50


def summarize(times_ms: list[float], *, runtime: str, provider: str, batch_size: int,
              threads: int) -> Latency:
    """Percentiles of per-call times in milliseconds."""
    ms = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    return Latency(runtime, provider, batch_size, threads, len(ms), round(p50, 4),
                   round(p90, 4), round(p99, 4), round(batch_size / (p50 / 1e3), 1))


def measure(fn: Callable[[], object], *, runtime: str, provider: str, batch_size: int,
            threads: int, quick: bool = False) -> Latency:
    """Warm up, then time `fn` until both a minimum count and a minimum duration are reached."""
    plan = TimingPlan.for_run(quick)
    for _ in range(plan.warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while plan.more(len(times), time.perf_counter() - start):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize(times, runtime=runtime, provider=provider, batch_size=batch_size,
                     threads=threads)
