"""Latency measurement and statistics (numpy only), shared by every runtime.

Every configuration (runtime x batch size x thread count) is timed in several rounds, and the
rounds of the runtimes being compared alternate in one time window: round r of every runtime
at a batch size runs before round r+1 of any of them, so a machine that slows down for a while
slows every runtime of that round alike. A runtime in another process (a native framework,
Node.js, a browser) times its own calls and reports them. Per configuration the report gives
the median over rounds of each round's p50 (and p90/p99), the min-max spread of the round
p50s, and `noisy` when that spread exceeds 20% of the median; per runtime pair, the speed-up
computed round by round, with its spread, and the ratio of the two fastest rounds.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterator

import numpy as np

from train.core.threads import default_threads

BATCH_SIZES = (1, 32, 256)
DEFAULT_ROUNDS = 5
QUICK_ROUNDS = 3      # --quick: smoke runs
NOISY_SPREAD = 0.20   # (max - min) / median of the round p50s above which a row is "noisy"
METHOD = ("each configuration (runtime x batch size x threads) timed in rounds, the rounds of "
          "all runtimes interleaved in one time window (round r of each before round r+1 of "
          "any; native frameworks in long-lived processes of their own, driven round by round); "
          "warm-up before a runtime's first round and a few untimed calls at the start of each; "
          "per round p50/p90/p99 of single calls, reported as the median over rounds with the "
          "min-max spread of the round p50s (noisy: spread > 20% of the median); speed-ups vs "
          "native computed round by round (median), and fastest round vs fastest round; "
          "images/s = batch / p50; threads pinned (onnxruntime intra-op as stated, inter-op 1) "
          "and each timed process pinned to as many cores as threads where the OS allows; "
          "runtimes in another process are timed inside it")


def thread_counts() -> list[int]:
    """1 thread and every core this process may use (once, on a single-core machine)."""
    return sorted({1, default_threads()})


@dataclass(frozen=True)
class TimingPlan:
    """How long to time one block of calls: `warmup` untimed calls, then at least `min_runs`
    timed calls and `min_seconds`, at most `max_runs`. The WebAssembly runtimes also warm up
    for `warmup_seconds` (default min(1 s, min_seconds)): V8 optimises WebAssembly only once
    it is hot (validate/web/core.mjs)."""

    warmup: int = 20
    min_runs: int = 50
    min_seconds: float = 1.0
    max_runs: int = 2000
    warmup_seconds: float | None = None

    def more(self, done: int, elapsed: float) -> bool:
        """Should another timed call be made?"""
        return done < self.max_runs and (done < self.min_runs or elapsed < self.min_seconds)

    def as_dict(self) -> dict:
        """For the runtimes that time inside their own process (JSON-able)."""
        return asdict(self)


def time_calls(fn: Callable[[], object], plan: TimingPlan,
               clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """`plan.warmup` untimed calls, then milliseconds per call of `fn` until the plan is
    satisfied."""
    for _ in range(plan.warmup):
        fn()
    times: list[float] = []
    start = clock()
    while plan.more(len(times), clock() - start):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1e3)
    return times


@dataclass(frozen=True)
class RoundPlan:
    """How many rounds, and the block of calls each round times: `first` before a runtime's
    first round at a batch size (the warm-up), `later` for the others (a few untimed calls
    refill the caches another runtime emptied)."""

    rounds: int = DEFAULT_ROUNDS
    settle_seconds: float = 0.1    # idle before each multi-threaded block, see measure_rounds
    first: TimingPlan = TimingPlan(warmup=10, min_runs=10, min_seconds=0.12, max_runs=1000,
                                   warmup_seconds=0.5)
    later: TimingPlan = TimingPlan(warmup=2, min_runs=10, min_seconds=0.12, max_runs=1000,
                                   warmup_seconds=0.0)

    @classmethod
    def for_run(cls, quick: bool, rounds: int | None = None) -> "RoundPlan":
        """The full plan (about 0.15 s per block), or a light one for smoke runs; `rounds`
        defaults to DEFAULT_ROUNDS (QUICK_ROUNDS when quick)."""
        if rounds is None:
            rounds = QUICK_ROUNDS if quick else DEFAULT_ROUNDS
        if rounds < 1:
            raise ValueError(f"latency rounds must be at least 1, got {rounds}")
        if not quick:
            return cls(rounds)
        first = TimingPlan(warmup=3, min_runs=5, min_seconds=0.015, max_runs=200,
                           warmup_seconds=0.1)
        return cls(rounds, 0.03, first, replace(first, warmup=1, warmup_seconds=0.0))

    def block(self, round_index: int) -> TimingPlan:
        return self.first if round_index == 0 else self.later

    def as_dict(self) -> dict:
        return {"rounds": self.rounds, "settle_seconds": self.settle_seconds,
                "first": self.first.as_dict(),
                "later": self.later.as_dict()}


@dataclass(frozen=True)
class Latency:
    """One runtime at one batch size and thread count: the old fields of a report row (the
    percentiles are medians over rounds, see `rows`)."""

    runtime: str            # "onnxruntime", "torch", "tensorflow", "onnxruntime-node", …
    provider: str           # execution provider or device
    batch_size: int
    threads: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    images_per_second: float  # batch_size / p50


# -- rounds ------------------------------------------------------------------------------------
@dataclass
class Subject:
    """One runtime at one thread count, ready to be timed: `timings(feeds, plan)` returns
    milliseconds per call; `window()`, when given, returns the (start, end) time.monotonic()
    of the last block as the process that ran it saw it."""

    runtime: str
    provider: str
    threads: int
    timings: Callable[[dict[str, np.ndarray], TimingPlan], list[float]]
    runner: str | None = None          # a runner's report name; None: the native framework
    window: Callable[[], tuple[float, float] | None] | None = None
    error: str = ""                    # why its timing stopped, when it did
    rounds: dict[int, list["Round"]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.runner or self.runtime


@dataclass(frozen=True)
class Round:
    """One block of timed calls."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    runs: int
    start: float    # time.monotonic() when the block began (warm-up included)
    end: float


def _round(times: list[float], start: float, end: float) -> Round:
    ms = np.asarray(times, dtype=np.float64)
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    return Round(p50, p90, p99, len(ms), start, end)


def measure_rounds(subjects: list[Subject], images: np.ndarray | dict[str, np.ndarray],
                   plan: RoundPlan,
                   batch_sizes: tuple[int, ...] = BATCH_SIZES,
                   failures: tuple[type[BaseException], ...] = (),
                   progress: Callable[[str], None] | None = None) -> None:
    """Time every subject at every batch size for `plan.rounds` rounds, interleaved: within a
    round, batch size by batch size, each subject in turn (in reverse order on odd rounds, so
    that no runtime always follows the same one). Before each block of a multi-threaded
    runtime the machine is left idle for `plan.settle_seconds`: the thread pools of the runtime
    timed just before spin-wait for a while after their last call, and a block that starts
    meanwhile finds one core taken (measured here: onnxruntime at batch 256 on 2 threads ran
    at its 1-thread speed in about one block in three without the pause, in none with 0.1 s).
    Fills each subject's `rounds`. An exception of a type in `failures` stops that subject
    (its `error` says why); the others go on. `images`: LeNet-5's images, or a model's named
    inputs (a dict), of which the first `b` rows make a batch of `b`."""
    named = images if isinstance(images, dict) else {"image": images}
    feeds = {b: {k: np.ascontiguousarray(v[:b]) for k, v in named.items()} for b in batch_sizes}
    for r in range(plan.rounds):
        order = subjects if r % 2 == 0 else subjects[::-1]
        for b in batch_sizes:
            for s in order:
                if s.error:
                    continue
                if s.threads > 1:
                    time.sleep(plan.settle_seconds)
                start = time.monotonic()
                try:
                    times = s.timings(feeds[b], plan.block(r))
                except failures as exc:
                    s.error = str(exc) or type(exc).__name__
                    continue
                end = time.monotonic()
                seen = s.window() if s.window else None
                s.rounds.setdefault(b, []).append(_round(times, *(seen or (start, end))))
        if progress:
            progress(f"latency round {r + 1}/{plan.rounds} done")


def spread(values: list[float]) -> tuple[float, float, float, float]:
    """(median, min, max, (max - min) / median)."""
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return med, lo, hi, ((hi - lo) / med if med > 0 else 0.0)


def rows(subject: Subject, origin: float) -> list[dict]:
    """The report's latency rows of one subject: the old fields (p50/p90/p99 now medians over
    rounds) plus the rounds, the spread and the noisy flag; `origin` is the time.monotonic()
    the round windows are given relative to."""
    out = []
    for batch, rounds in subject.rounds.items():
        p50, lo, hi, rel = spread([r.p50_ms for r in rounds])
        p90 = statistics.median(r.p90_ms for r in rounds)
        p99 = statistics.median(r.p99_ms for r in rounds)
        row = asdict(Latency(subject.runtime, subject.provider, batch, subject.threads,
                             sum(r.runs for r in rounds), round(p50, 4), round(p90, 4),
                             round(p99, 4),
                             round(batch / (p50 / 1e3), 1) if p50 > 0 else 0.0))
        row |= {"rounds": len(rounds),
                "round_p50_ms": [round(r.p50_ms, 4) for r in rounds],
                "round_p90_ms": [round(r.p90_ms, 4) for r in rounds],
                "round_p99_ms": [round(r.p99_ms, 4) for r in rounds],
                "p50_min_ms": round(lo, 4), "p50_max_ms": round(hi, 4),
                "spread": round(rel, 4), "noisy": rel > NOISY_SPREAD,
                "round_windows": [[round(r.start - origin, 4), round(r.end - origin, 4)]
                                  for r in rounds]}
        if subject.runner:
            row["runner"] = subject.runner
        out.append(row)
    return out


def speedups(latency_rows: list[dict]) -> list[dict]:
    """Per runtime and configuration, the speed-up over the native framework (native p50 /
    runtime p50, > 1: the runtime is faster), computed round by round (round r of both ran in
    the same window), with its median, min-max spread and noisy flag; and `speedup_best`, the
    native's fastest round p50 / the runtime's fastest round p50, both over the paired rounds.

    Why both: a shared virtual machine can switch, for seconds at a time, into a state where
    its second core gives a fraction of its speed (two vCPUs on one physical core, say); calls
    that hand work between threads slow down in it, a runtime that does more of that (or spins
    while it waits) more than one that does less, so the round ratio differs by state and its
    median follows whichever state most rounds fell in. The fastest rounds are those of the
    undisturbed machine for both, so their ratio is the same from run to run whenever each
    runtime had one such round."""
    native = {(r["batch_size"], r["threads"]): r for r in latency_rows
              if "runner" not in r and r.get("round_p50_ms")}
    out = []
    for r in latency_rows:
        base = native.get((r["batch_size"], r["threads"]))
        if "runner" not in r or base is None or not r.get("round_p50_ms"):
            continue
        # Round r with round r (a subject that stopped early has fewer rounds: the pairs end
        # there); a p50 of 0 (a clock too coarse for the call) gives no ratio.
        pairs = [(n, x) for n, x in zip(base["round_p50_ms"], r["round_p50_ms"])
                 if n > 0 and x > 0]
        if not pairs:
            continue
        ratios = [n / x for n, x in pairs]
        med, lo, hi, rel = spread(ratios)
        best = min(n for n, _ in pairs) / min(x for _, x in pairs)
        out.append({"baseline": base["runtime"], "runner": r["runner"], "runtime": r["runtime"],
                    "provider": r["provider"], "batch_size": r["batch_size"],
                    "threads": r["threads"], "speedup": round(med, 4),
                    "speedup_min": round(lo, 4), "speedup_max": round(hi, 4),
                    "spread": round(rel, 4), "noisy": rel > NOISY_SPREAD,
                    "round_speedups": [round(x, 4) for x in ratios],
                    "speedup_best": round(best, 4), "rounds": len(pairs)})
    return out


# -- conditions --------------------------------------------------------------------------------
def allowed_cores() -> list[int] | None:
    """The cores this process may run on, or None where the OS does not say."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return sorted(os.sched_getaffinity(0))


def cores_for(threads: int) -> list[int] | None:
    """The cores a process timed at `threads` threads is pinned to: the first `threads` of
    the allowed ones."""
    cores = allowed_cores()
    return None if cores is None else cores[:max(1, threads)]


@contextlib.contextmanager
def pinned(threads: int) -> Iterator[list[int] | None]:
    """Pin the calling thread (and the threads and processes it starts meanwhile) to
    `cores_for(threads)`; yields those cores, or None where the OS does not allow it."""
    cores = cores_for(threads)
    before = allowed_cores()
    if cores is None or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    try:
        os.sched_setaffinity(0, cores)
    except OSError:
        yield None
        return
    try:
        yield cores
    finally:
        os.sched_setaffinity(0, before)


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages, where the OS has them."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None
