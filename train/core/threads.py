"""Thread counts: how many cores this process may use, a --threads value checked, and the
machine's load average for benchmarks."""

from __future__ import annotations

import os

from train.core.errors import ToolkitError


def default_threads() -> int:
    """Cores this process may run on: what both frameworks use when no thread count is given."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_threads(threads: int | None) -> int | None:
    """A --threads value, checked: None (every core) or at least 1."""
    if threads is not None and threads < 1:
        raise ToolkitError(f"--threads must be at least 1, got {threads}")
    return threads


def load_average() -> str:
    """'load average 1m 5m 15m' of the machine, for a benchmark's figures."""
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
