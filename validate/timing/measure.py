"""Latency, every runtime and the native model round by round in one time window: the native
model's timing processes started early, then each thread count's runtimes timed in
interleaved rounds (validate.timing.latency)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

from validate import sandbox
from validate.compare.judge import RunnerOutput
from validate.options import Options
from validate.runners import Runner, RunnerFailed, RunnerUnavailable, runner_class
from validate.timing import latency as lat
from validate.timing import native
from validate.timing.latency import thread_counts


# -- latency: every runtime, native included, round by round in one window --------------------
def start_natives(folder: Path, framework: str, opts: Options
                  ) -> tuple[dict[int, native.NativeProcess], str | None]:
    """Start the native model's timing processes (one per thread count: TensorFlow fixes its
    thread pools at start-up) without waiting for them: the framework imports while the
    runtimes run phase 1. Returns them, or the reason the native model cannot be timed."""
    reason = native.availability(framework, folder)
    if reason:
        return {}, reason
    procs: dict[int, native.NativeProcess] = {}
    try:
        for threads in thread_counts():
            procs[threads] = native.NativeProcess(framework, folder, threads,
                                                  lat.cores_for(threads), opts.data_dir).start()
    except native.NativeFailed as exc:
        for p in procs.values():
            p.close()
        return {}, str(exc)
    return procs, None


def _timed_threads(cls: type[Runner]) -> list[int]:
    return thread_counts() if cls.latency_threads is None else list(cls.latency_threads)


def measure_latency(path: Path, outputs: list[RunnerOutput],
                    natives: dict[int, native.NativeProcess],
                    images: np.ndarray | dict[str, np.ndarray], opts: Options,
                    batch_sizes: tuple[int, ...] = lat.BATCH_SIZES) -> tuple[list[dict], dict]:
    """Time the native model and every runner that ran, thread count by thread count, in
    interleaved rounds (validate.timing.latency). Returns the latency rows and the conditions
    (rounds, plan, cores, load average at start and end, errors) for the report."""
    plan = lat.RoundPlan.for_run(opts.quick, opts.latency_rounds)
    conditions: dict = {"rounds": plan.rounds, "plan": plan.as_dict(), "cores": {},
                        "errors": []}
    ready: dict[int, native.NativeProcess] = {}
    for threads, proc in natives.items():  # all of them: a process still starting is noise
        try:
            conditions.setdefault("native_process", proc.wait_ready())
            ready[threads] = proc
        except native.NativeFailed as exc:
            conditions["errors"].append({"runtime": proc.runtime, "threads": threads,
                                         "error": str(exc)})
    origin = time.monotonic()
    conditions["load_average_start"] = lat.load_average()
    rows: list[dict] = []
    for threads in thread_counts():
        with lat.pinned(threads) as cores, contextlib.ExitStack() as stack:
            conditions["cores"][str(threads)] = cores
            subjects: list[lat.Subject] = []
            proc = ready.get(threads)
            if proc is not None:
                subjects.append(lat.Subject(proc.runtime, "cpu", threads, proc.timings,
                                            window=proc.window))
            for out in outputs:
                cls = runner_class(out.key)
                if out.status != "ran" or threads not in _timed_threads(cls):
                    continue
                try:
                    stack.enter_context(sandbox.memory_guard(cls))
                    runner = stack.enter_context(cls(path, threads=threads))
                except (RunnerUnavailable, RunnerFailed) as exc:
                    conditions["errors"].append({"runtime": cls.name, "threads": threads,
                                                 "error": str(exc)})
                    continue
                subjects.append(lat.Subject(cls.runtime or cls.name, cls.provider, threads,
                                            runner.timings, runner=cls.name))
            print(f"[validate] {path.parent.name}: latency, {threads} thread"
                  f"{'s' * (threads > 1)}: {', '.join(s.label for s in subjects)} x batch "
                  f"{'/'.join(map(str, batch_sizes))}, {plan.rounds} interleaved rounds",
                  flush=True)
            lat.measure_rounds(subjects, images, plan, batch_sizes=batch_sizes,
                               failures=(RunnerFailed, native.NativeFailed))
        if proc is not None:
            proc.close()
        for s in subjects:
            rows += lat.rows(s, origin)
            if s.error:
                conditions["errors"].append({"runtime": s.label, "threads": threads,
                                             "error": s.error})
    conditions["load_average_end"] = lat.load_average()
    conditions["seconds"] = round(time.monotonic() - origin, 2)
    return rows, conditions
