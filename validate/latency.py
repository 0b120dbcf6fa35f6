"""Latency measurement and statistics (numpy only), shared by every runtime."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

BATCH_SIZES = (1, 32, 256)


def thread_counts() -> list[int]:
    """1 thread and all cores (once, on a single-core machine)."""
    return sorted({1, os.cpu_count() or 1})


@dataclass(frozen=True)
class Latency:
    """One runtime at one batch size and thread count."""

    runtime: str            # "onnxruntime", "torch", "tensorflow"
    provider: str           # execution provider or device
    batch_size: int
    threads: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    images_per_second: float  # batch_size / p50


def measure(fn: Callable[[], object], *, runtime: str, provider: str, batch_size: int,
            threads: int, quick: bool = False) -> Latency:
    """Warm up, then time `fn` until both a minimum count and a minimum duration are reached."""
    warmup, min_runs, min_seconds, max_runs = (5, 20, 0.1, 200) if quick else (20, 50, 1.0, 2000)
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs
                                     or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    return Latency(runtime, provider, batch_size, threads, len(times), round(p50, 4),
                   round(p90, 4), round(p99, 4), round(batch_size / (p50 / 1e3), 1))
