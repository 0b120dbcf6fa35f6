"""`python -m convert all`: data, then per framework train and export in processes of their own
(the two frameworks side by side, the cores divided between them), then the cross-framework
and quantization stages, then validation (framework-free, in contained child processes).

Every stage is `python -m convert …` in a fresh process: the pipeline orchestrates, it never
imports a framework. One run at a time per artifacts folder (convert/lock.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from convert.twins.common import pending
from train.core.errors import CRASH_STATUS, STAGE_ENV
from train.core.fileio import append_text, refresh_sha256sums, sha256_file
from train.core.lock import artifacts_lock
from train import data
from train.core.threads import default_threads
from train.recipe import Recipe
from validate.compare.conversion import frameworks_present
from validate.sandbox import Limits
from validate.options import Options

CHECKPOINTS = {"torch": "model.pt", "tf": "model.keras"}
WEB_FILES = ("*", "ort/*", "models/*")  # the web demo's files, for its SHA256SUMS


def already_trained(folder: Path, framework: str, recipe: Recipe) -> bool:
    """Is a model for this exact recipe and dataset already there?"""
    try:
        history = json.loads((folder / "history.json").read_text())
    except (OSError, ValueError):
        return False
    checkpoint = folder / CHECKPOINTS[framework]
    return (isinstance(history, dict) and checkpoint.is_file()
            and history.get("recipe") == asdict(recipe)
            and history.get("dataset_sha256") == data.DATASET_SHA256
            and history.get("checkpoint_sha256") == sha256_file(checkpoint))


@dataclass(frozen=True)
class Stage:
    """One `python -m convert ARGS` process."""

    label: str             # "train torch"
    args: tuple[str, ...]  # arguments after `python -m convert`
    prefix: str = ""       # "[torch] " on lines that do not already name their framework


@dataclass
class StageResult:
    """How a stage ended."""

    label: str
    status: int | None = None  # exit status; None = not run (skipped or stopped)
    seconds: float = 0.0
    note: str = ""


class StageRunner:
    """Runs stages, alone or side by side, with prefixed output and a common stop."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.results: list[StageResult] = []
        self.procs: set[subprocess.Popen] = set()

    def _copy(self, stream, sink, prefix: str) -> None:
        for line in stream:
            if prefix and not line.startswith(prefix.rstrip(" ")):
                line = prefix + line
            with self.lock:
                sink.write(line)
                sink.flush()

    def run(self, stage: Stage) -> StageResult:
        """Run one stage to its end (or until another stage fails); return its result."""
        result = StageResult(stage.label)
        with self.lock:
            self.results.append(result)
            if self.stop.is_set():
                result.note = "not started (another stage failed)"
                return result
            print(f"\n== {stage.label}", flush=True)
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "convert", *stage.args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                bufsize=1, errors="replace",
                                env={**os.environ, STAGE_ENV: "1"},
                                # its own process group: Ctrl-C reaches the pipeline only,
                                # which stops each stage with everything the stage started
                                start_new_session=True)
        with self.lock:
            self.procs.add(proc)
        copiers = [threading.Thread(target=self._copy, args=(proc.stdout, sys.stdout,
                                                            stage.prefix), daemon=True),
                   threading.Thread(target=self._copy, args=(proc.stderr, sys.stderr,
                                                            stage.prefix), daemon=True)]
        for t in copiers:
            t.start()
        try:
            while proc.poll() is None:
                if self.stop.wait(0.2) and proc.poll() is None:
                    _stop(proc)
                    result.note = "stopped (another stage failed)"
        except BaseException:  # Ctrl-C or SIGTERM in this (the main) thread
            self.stop.set()
            _stop(proc)
            raise
        for t in copiers:
            t.join()
        with self.lock:
            self.procs.discard(proc)
        result.seconds = time.perf_counter() - start
        if result.note:
            return result
        result.status = proc.returncode
        if proc.returncode:
            self.stop.set()
        else:
            with self.lock:
                print(f"== {stage.label}: done in {result.seconds:.1f} s", flush=True)
        return result

    def lanes(self, lanes: list[list[Stage]], jobs: int) -> None:
        """Run each lane's stages in order; up to `jobs` lanes at once."""
        if jobs <= 1 or len(lanes) <= 1:
            for lane in lanes:
                for stage in lane:
                    if self.run(stage).status:
                        return
            return
        threads = [threading.Thread(target=self._lane, args=(lane,)) for lane in lanes]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:  # Ctrl-C or SIGTERM: every lane stops its stage, then we go
            self.stop.set()
            for t in threads:
                t.join()
            raise

    def _lane(self, lane: list[Stage]) -> None:
        for stage in lane:
            result = self.run(stage)
            if result.status or result.note:
                return

    def failed(self) -> StageResult | None:
        """The first stage that failed (not the ones stopped because of it)."""
        return next((r for r in self.results if r.status), None)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a stage and every process it started (its process group): every file is written
    atomically, so stopping loses nothing."""
    def signal_group(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    signal_group(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    signal_group(signal.SIGKILL)  # whatever of the group is still there
    proc.wait()


def _twin_sides(artifacts: Path) -> list[str]:
    """The frameworks whose twins stage has something to make; the others are said to be up to
    date (a rerun on the same files: convert.twins.common.pending)."""
    sides = []
    for fw in CHECKPOINTS:
        if any(pending(artifacts, fw)):
            sides.append(fw)
        else:
            print(f"\n== twins {fw}: skipped, every conversion it makes is up to date (made "
                  "from these files by this code and these converters)", flush=True)
    return sides


def plan_threads(frameworks: tuple[str, ...], jobs: int | None,
                 threads: int | None) -> tuple[int, int]:
    """(lanes at once, intra-op threads per stage): the cores divided between the lanes."""
    n = default_threads()
    if jobs is None:
        jobs = min(len(frameworks), n)
    jobs = max(1, min(jobs, len(frameworks)))
    if threads is None:
        threads = max(1, n // jobs)
    return jobs, threads


def _web_demo(artifacts: Path, frameworks: tuple[str, ...], data_folder: Path) -> None:
    """ARTIFACTS/web/: the browser deployment example (onnxruntime-web), with its SHA256SUMS."""
    from validate.runners import RunnerUnavailable
    from validate.runners.browser import write_web_demo

    images, labels = data.load_test(data_folder)
    try:
        web = write_web_demo(artifacts, {fw: artifacts / fw / "lenet5.onnx" for fw in frameworks},
                             images, labels)
    except RunnerUnavailable as exc:
        print(f"\n== web demo: not written ({exc})", flush=True)
        return
    refresh_sha256sums(web, WEB_FILES)
    print(f"\n== web demo: {web} (serve with `python3 -m http.server 8000 --bind 127.0.0.1 -d "
          f"{artifacts}`, open http://127.0.0.1:8000/web/)", flush=True)


def _summary(runner: StageRunner, total: float) -> None:
    print("\nstages (wall time):")
    for r in runner.results:
        state = (f"{r.seconds:7.1f} s" if r.status == 0 else r.note or f"exit {r.status}"
                 + (f" after {r.seconds:.1f} s" if r.seconds else ""))
        print(f"  {r.label:<24} {state}")
    print(f"  {'total':<24} {total:7.1f} s", flush=True)


def _framework_lanes(frameworks: tuple[str, ...], artifacts: Path, recipe: Recipe,
                     force: bool, common: tuple[str, ...], threads: int) -> list[list[Stage]]:
    """Per framework: train (unless already trained with this recipe), export, quantize."""
    recipe_args = ("--epochs", str(recipe.epochs), "--batch-size", str(recipe.batch_size),
                   "--seed", str(recipe.seed), "--threads", str(threads))
    if recipe.limit:
        recipe_args += ("--limit", str(recipe.limit))
    lanes = []
    for fw in frameworks:
        lane = []
        if not force and already_trained(artifacts / fw, fw, recipe):
            print(f"\n== train {fw}: skipped, {artifacts / fw} holds a model trained with "
                  "this recipe (--force trains again)", flush=True)
        else:
            lane.append(Stage(f"train {fw}", ("train", fw, *recipe_args, *common),
                              f"[{fw}] "))
        lane.append(Stage(f"export {fw}", ("export", fw, *common, "--threads", str(threads)),
                          f"[{fw}] "))
        lane.append(Stage(f"quantize {fw}", ("quantize", "--frameworks", fw, *common),
                          f"[{fw}] "))
        lanes.append(lane)
    return lanes


def _failure_status(runner: StageRunner, start: float) -> int | None:
    """The run's exit status if a stage failed (after the summary), else None."""
    failed = runner.failed()
    if not failed:
        return None
    _summary(runner, time.perf_counter() - start)
    if failed.status == 2:  # bad input: the stage has printed its one line
        return 2
    print(f"error: stage '{failed.label}' crashed (exit status {failed.status}); "
          "see its output above", file=sys.stderr)
    return CRASH_STATUS


def _validate_stage(runner: StageRunner, artifacts: Path, frameworks: tuple[str, ...],
                    options: Options, limits: Limits, data_folder: Path, summary: Path | None,
                    start: float) -> int:
    """Validate and write the reports, then the stage summary; returns the run's exit status."""
    from validate.run import validate_and_report

    print("\n== validate: every runtime, each model in a contained process", flush=True)
    options = dataclasses.replace(options, data_dir=str(data_folder))
    v_start = time.perf_counter()
    status, _ = validate_and_report(artifacts, frameworks, options, limits, artifacts,
                                    summary)
    runner.results.append(StageResult("validate", status, time.perf_counter() - v_start))
    total = time.perf_counter() - start
    _summary(runner, total)
    print(f"\nall stages done in {total:.0f} s; "
          f"{'PASSED' if status == 0 else 'FAILED' if status == 1 else 'bad input'}")
    return status


def run_all(frameworks: tuple[str, ...], recipe: Recipe, data_dir: str | None,
            artifacts: Path, force: bool, quick: bool, options: Options, limits: Limits,
            summary: Path | None = None, jobs: int | None = None,
            threads: int | None = None) -> int:
    """The whole job; returns the exit status (0 passed, 1 failed, 2 bad input, 3 crash)."""
    start = time.perf_counter()
    if summary is not None:
        append_text(summary, "")  # an unwritable --summary is said now, not after the run
    print("== data: checking the four Fashion-MNIST files", flush=True)
    folder = data.ensure_files(data_dir)
    print(f"== data: verified (sha256) in {folder}", flush=True)
    waiting = time.perf_counter()
    with artifacts_lock(artifacts):
        start += time.perf_counter() - waiting  # the wait for another run is not this run's
        jobs, threads = plan_threads(frameworks, jobs, threads)
        print(f"== plan: {len(frameworks)} framework lane(s), {jobs} at once, {threads} "
              f"intra-op thread(s) per stage ({default_threads()} cores)", flush=True)
        common = ("--artifacts", str(artifacts), "--data-dir", str(folder))
        runner = StageRunner()
        runner.lanes(_framework_lanes(frameworks, artifacts, recipe, force, common, threads),
                     jobs)
        # Same weights in the other framework, and every ONNX file back into a framework: one
        # process per framework, side by side (nothing is timed here). Whenever both models
        # are there: a model trained again alone would otherwise be judged on conversions
        # made from its previous weights.
        if not runner.failed() and len(frameworks_present(artifacts)) == len(CHECKPOINTS):
            quick_arg = ("--quick",) if quick else ()
            runner.lanes([[Stage(f"twins {fw}", ("twins", fw, *common, *quick_arg),
                                 f"[{fw}] ")] for fw in _twin_sides(artifacts)], jobs)
        status = _failure_status(runner, start)
        if status is not None:
            return status
        _web_demo(artifacts, frameworks, folder)
        return _validate_stage(runner, artifacts, frameworks, options, limits, folder, summary,
                               start)
