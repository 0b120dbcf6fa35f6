"""Writing results: a full disk, a read-only folder or a path that is a file is one line
(exit 2) with nothing partial or temporary left behind; one `convert all` per folder."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import DATA_DIR, ROOT, error_lines, run

FAST = ("--runtimes", "cpu", "--no-latency")


@contextlib.contextmanager
def small_filesystem(path, size_kib: int, read_only: bool = False, fill_from=None):
    """A real tmpfs of `size_kib` at `path` (root only); yields False where mounting is not
    permitted, so that the caller can fall back to a file-size limit."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs",
                              str(path)], capture_output=True).returncode == 0
    try:
        if mounted and fill_from is not None:
            shutil.copytree(fill_from, path, dirs_exist_ok=True)
        if mounted and read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=True)


def _file_size_limit(limit: int):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def _run_limited(limit: int, *args: str) -> subprocess.CompletedProcess:
    """Like conftest.run, in a child whose files may not grow past `limit` bytes."""
    env = {**os.environ, "FASHION_MNIST_DIR": str(DATA_DIR), "LENET5_NO_BOOTSTRAP": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=600, preexec_fn=_file_size_limit(limit))


def _no_temporary_files(folder) -> None:
    leftovers = [p for p in folder.rglob("*") if p.name.startswith(".") and p.name != ".lock"]
    assert not leftovers, leftovers


def test_a_full_disk_while_writing_the_report(quick_artifacts, tmp_path):
    out = tmp_path / "small"
    with small_filesystem(out, 16) as mounted:
        if mounted:
            proc = run("validate", str(quick_artifacts), "--quick", *FAST, "--output", str(out))
            reason = "no space left on device"
        else:
            out.mkdir(exist_ok=True)
            proc = _run_limited(16 * 1024, "validate", str(quick_artifacts), "--quick", *FAST,
                                "--output", str(out))
            reason = "file too large (a file-size limit)"
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert error_lines(proc) == [f"error: {out / 'report.json'}: cannot write it: {reason}"]
        assert not (out / "report.json").exists()
        _no_temporary_files(out)


@pytest.mark.parametrize("framework,checkpoint", [("torch", "model.pt"), ("tf", "model.keras")])
def test_a_full_disk_while_exporting(quick_artifacts, tmp_path, framework, checkpoint):
    src = tmp_path / "src"
    src.mkdir()
    for name in (checkpoint, "history.json"):
        shutil.copy(quick_artifacts / framework / name, src / name)
    room = sum(p.stat().st_size for p in src.iterdir()) // 1024 + 96
    artifacts = tmp_path / "art"
    with small_filesystem(artifacts / framework, room, fill_from=src) as mounted:
        if not mounted:
            shutil.copytree(src, artifacts / framework, dirs_exist_ok=True)
            proc = _run_limited(96 * 1024, "convert", "export", framework, "--artifacts",
                                str(artifacts))
            reason = "file too large (a file-size limit)"
        else:
            proc = run("convert", "export", framework, "--artifacts", str(artifacts))
            reason = "no space left on device"
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = error_lines(proc)
        assert len(lines) == 1 and lines[0].startswith(f"error: {artifacts / framework}/")
        assert lines[0].endswith(f": cannot write it: {reason}"), lines
        assert not (artifacts / framework / "lenet5.onnx").exists()  # written last, never half
        _no_temporary_files(artifacts / framework)


def test_a_read_only_folder(quick_artifacts, tmp_path):
    out = tmp_path / "ro"
    with small_filesystem(out, 64, read_only=True) as mounted:
        if not mounted:
            if os.geteuid() == 0:
                pytest.skip("root without mount: permission bits cannot make a folder read-only")
            out.chmod(0o555)
        proc = run("validate", str(quick_artifacts), "--quick", *FAST, "--output", str(out))
        reason = "read-only file system" if mounted else "permission denied"
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert error_lines(proc) == [f"error: {out / 'report.json'}: cannot write it: {reason}"]


def test_an_output_path_that_is_a_file(quick_artifacts, tmp_path):
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    proc = run("validate", str(quick_artifacts), "--quick", *FAST, "--output", str(a_file))
    assert proc.returncode == 2
    assert error_lines(proc) == [f"error: {a_file}: cannot write report.json there: not a folder"]
    assert "[validate]" not in proc.stdout  # said before the validation, not after it
    proc = run("validate", str(quick_artifacts), "--quick", *FAST, "--summary",
               str(a_file / "summary.md"))
    assert proc.returncode == 2 and "[validate]" not in proc.stdout
    assert error_lines(proc) == [f"error: {a_file}: cannot write summary.md there: not a folder"]
    proc = run("convert", "all", "--quick", "--artifacts", str(a_file))
    assert proc.returncode == 2
    assert error_lines(proc) == [f"error: {a_file}: not a folder"]
    assert a_file.read_text() == "x"


def test_two_runs_on_one_folder_take_turns_and_skip_training(quick_artifacts, tmp_path):
    """Two reruns of the quick recipe on one folder, PyTorch alone: the second waits for the
    first; both skip the training (the model is the one trained for that recipe) and export,
    convert and validate again."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(quick_artifacts, artifacts)
    checkpoint = (artifacts / "torch" / "model.pt").read_bytes()
    env = {**os.environ, "FASHION_MNIST_DIR": str(DATA_DIR), "LENET5_NO_BOOTSTRAP": "1"}
    cmd = [sys.executable, "-m", "convert", "all", "--quick", "--frameworks", "torch",
           "--artifacts", str(artifacts), *FAST]
    events: list[tuple[float, str, str]] = []

    def follow(name: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            events.append((time.monotonic(), name, line.rstrip("\n")))
        proc.wait()
        events.append((time.monotonic(), name, "<exit>"))

    first = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    t1 = threading.Thread(target=follow, args=("first", first))
    t1.start()
    while not any(n == "first" and line.startswith("== plan") for _, n, line in events):
        assert first.poll() is None, events
        time.sleep(0.1)
    second = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    t2 = threading.Thread(target=follow, args=("second", second))
    t2.start()
    t1.join(600)
    t2.join(600)
    assert first.returncode == 0 and second.returncode == 0, events
    second_lines = [line for _, n, line in events if n == "second"]
    assert any(line.startswith(f"== waiting: another `convert all` (pid {first.pid})")
               for line in second_lines), second_lines
    # The first prints its last line before it lets go of the folder; the second starts work
    # only after that.
    first_done = next(t for t, n, line in events
                      if n == "first" and line.startswith("all stages done"))
    second_work = next(t for t, n, line in events if n == "second" and line.startswith("== plan"))
    assert second_work >= first_done
    for name in ("first", "second"):
        lines = [line for _, n, line in events if n == name]
        assert any(line.startswith("== train torch: skipped") for line in lines), lines
        # The same files, code and converters: no conversion is made again.
        assert any(line.startswith("== twins torch: skipped") for line in lines), lines
        assert any(line.startswith("== twins tf: skipped") for line in lines), lines
    assert (artifacts / "torch" / "model.pt").read_bytes() == checkpoint
    report = json.loads((artifacts / "report.json").read_text())
    assert set(report["models"]) == {"torch"} and report["passed"]


def _wait_for_line(proc: subprocess.Popen, prefix: str, seen: list[str]) -> None:
    """Read `proc`'s stdout until a line starts with `prefix` (fails if it exits first)."""
    for line in proc.stdout:
        seen.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return
    raise AssertionError(f"no line starting {prefix!r}: {seen}")


def test_single_commands_and_convert_all_wait_for_each_other(quick_artifacts, tmp_path):
    from train.core.lock import artifacts_lock, shared_lock

    artifacts = tmp_path / "artifacts"
    shutil.copytree(quick_artifacts, artifacts)
    int8 = artifacts / "torch" / "lenet5.int8.onnx"
    before = int8.stat().st_mtime_ns
    env = {**os.environ, "FASHION_MNIST_DIR": str(DATA_DIR), "LENET5_NO_BOOTSTRAP": "1"}
    seen: list[str] = []
    # A single command waits while a `convert all` (here: this process) holds the folder ...
    with artifacts_lock(artifacts):
        proc = subprocess.Popen([sys.executable, "-m", "convert", "quantize", "--frameworks",
                                 "torch", "--artifacts", str(artifacts)], cwd=ROOT, env=env,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _wait_for_line(proc, f"== waiting: `convert all` (pid {os.getpid()}) is using "
                             f"{artifacts}; quantize starts when it has finished", seen)
        time.sleep(1)
        assert proc.poll() is None and int8.stat().st_mtime_ns == before  # nothing written
    out, _ = proc.communicate(timeout=300)  # ... and does its work once the folder is free
    assert proc.returncode == 0, seen + [out]
    assert int8.stat().st_mtime_ns != before
    # A `convert all` waits while a single command holds it, and starts when it lets go.
    with shared_lock(artifacts, "a test"):
        pipeline = subprocess.Popen([sys.executable, "-m", "convert", "all", "--quick",
                                     "--frameworks", "torch", "--artifacts", str(artifacts),
                                     *FAST], cwd=ROOT, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _wait_for_line(pipeline, f"== waiting: another command is using {artifacts}", seen)
        time.sleep(1)
        assert pipeline.poll() is None
    try:
        _wait_for_line(pipeline, "== plan", seen)
    finally:
        pipeline.terminate()
        pipeline.communicate(timeout=60)


@pytest.mark.slow  # trains
@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_a_full_disk_while_saving_a_trained_model(framework, tmp_path):
    artifacts = tmp_path / "art"
    args = ("train", framework, "--epochs", "1", "--limit", "320", "--artifacts",
            str(artifacts))
    with small_filesystem(artifacts, 64) as mounted:
        if mounted:
            proc = run(*args)
            reason = "no space left on device"
        else:
            proc = _run_limited(64 * 1024, *args)
            reason = "file too large (a file-size limit)"
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = error_lines(proc)
        checkpoint = {"torch": "model.pt", "tf": "model.keras"}[framework]
        assert lines == [f"error: {artifacts / framework / checkpoint}: cannot write it: "
                         f"{reason}"], lines
        assert not (artifacts / framework / "history.json").exists()
        _no_temporary_files(artifacts)


def test_report_md_says_why_a_model_failed(artifacts_copy):
    """A gate failing outside the tables (here SHA256SUMS) is named in report.md, as on
    stderr; and a threshold is printed as given, not rounded up."""
    sums = artifacts_copy / "torch" / "SHA256SUMS"
    sums.write_text("".join("0" * 64 + line[64:] if line.endswith(" lenet5.onnx\n") else line
                            for line in sums.read_text().splitlines(keepends=True)))
    proc = run("validate", str(artifacts_copy), "--frameworks", "torch", "--min-agreement",
               "0.999", *FAST)
    assert proc.returncode == 1, proc.stderr[-2000:]
    md = (artifacts_copy / "report.md").read_text()
    lines = error_lines(proc)
    assert lines and any("SHA256SUMS" in line for line in lines)
    assert "**Failures**" in md and all(f"- {line}" in md for line in lines)
    assert "top-1 agreement >= 99.9%" in md
