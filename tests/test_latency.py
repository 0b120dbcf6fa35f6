"""Latency in rounds: the native model in a process of its own, driven round by round beside
onnxruntime in one time window; the statistics; the report's median and spread."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DATA_DIR, error_lines, python, run
from validate.timing import latency as lat

FRAMEWORKS = ["torch", "tf"]

# Drives the native server and onnxruntime for two rounds from a framework-free process and
# reports every block's window and what that process imported.
DRIVE = """
import json, sys
from pathlib import Path
from validate.timing import latency as lat
from validate.timing.native import NativeProcess
from validate.runners.ort import CpuRunner
from train import data

folder = Path({folder!r})
images = data.to_float(data.load_test({data!r})[0][:256])
plan = lat.RoundPlan.for_run(True, 2)
with lat.pinned(1), NativeProcess({framework!r}, folder, 1, lat.cores_for(1), {data!r}) as proc, \\
        CpuRunner(folder / "lenet5.onnx", threads=1) as ort:
    hello = proc.wait_ready()
    subjects = [lat.Subject(proc.runtime, "cpu", 1, proc.timings, window=proc.window),
                lat.Subject("onnxruntime", "CPUExecutionProvider", 1, ort.timings,
                            runner="onnxruntime-cpu")]
    lat.measure_rounds(subjects, images, plan, batch_sizes=(1, 32))
rows = [r for s in subjects for r in lat.rows(s, 0.0)]
print(json.dumps({{"hello": hello, "rows": rows, "errors": [s.error for s in subjects],
                  "modules": sorted(m for m in ("torch", "tensorflow", "keras", "tf2onnx")
                                    if m in sys.modules)}}))
"""


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_native_rounds_interleave_with_onnxruntime_and_the_framework_stays_out(
        quick_artifacts, framework):
    code = DRIVE.format(folder=str(quick_artifacts / framework), data=str(DATA_DIR),
                        framework=framework)
    proc = python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["modules"] == []  # the framework ran only in the native process
    native_name = "torch" if framework == "torch" else "tensorflow"
    assert out["hello"]["runtime"] == native_name and out["hello"]["pid"] > 0
    assert out["errors"] == ["", ""]
    rows = {(r.get("runner", r["runtime"]), r["batch_size"]): r for r in out["rows"]}
    assert set(rows) == {(n, b) for n in (native_name, "onnxruntime-cpu") for b in (1, 32)}
    for batch in (1, 32):
        native, ort = rows[(native_name, batch)], rows[("onnxruntime-cpu", batch)]
        assert native["rounds"] == ort["rounds"] == 2
        # The native windows are the child's own clock readings (time.monotonic is
        # system-wide): round by round, every block ends before the next one starts.
        blocks = sorted([(w[0], w[1], "native") for w in native["round_windows"]]
                        + [(w[0], w[1], "ort") for w in ort["round_windows"]])
        assert all(a[1] <= b[0] for a, b in zip(blocks, blocks[1:])), blocks
        kinds = [k for _, _, k in blocks]
        assert kinds.count("native") == kinds.count("ort") == 2
        assert kinds[:2] in (["native", "ort"], ["ort", "native"])  # round 1: one of each
        assert kinds[2:] in (["native", "ort"], ["ort", "native"])  # then round 2
        assert all(p > 0 for p in native["round_p50_ms"] + ort["round_p50_ms"])


def test_round_statistics_and_speedups():
    s_native = lat.Subject("torch", "cpu", 1, timings=None)
    s_ort = lat.Subject("onnxruntime", "cpu", 1, timings=None, runner="onnxruntime-cpu")
    for i, (n, o) in enumerate([(4.0, 2.0), (4.4, 2.0), (8.0, 4.0), (4.2, 2.1), (4.0, 1.0)]):
        s_native.rounds.setdefault(256, []).append(lat.Round(n, n, n, 10, 2 * i, 2 * i + 1))
        s_ort.rounds.setdefault(256, []).append(lat.Round(o, o, o, 10, 2 * i + 1, 2 * i + 2))
    rows = lat.rows(s_native, 0.0) + lat.rows(s_ort, 0.0)
    native, ort = rows
    assert native["p50_ms"] == 4.2 and native["p50_min_ms"] == 4.0 and native["p50_max_ms"] == 8.0
    assert native["spread"] == pytest.approx((8.0 - 4.0) / 4.2, abs=1e-4) and native["noisy"]
    assert native["images_per_second"] == pytest.approx(256 / 4.2e-3, rel=1e-4)
    assert "runner" not in native and ort["runner"] == "onnxruntime-cpu"
    (speed,) = lat.speedups(rows)
    # Round by round: 2, 2.2, 2, 2, 4 -> median 2, although the medians' ratio is 4.2/2 = 2.1.
    assert speed["round_speedups"] == [2.0, 2.2, 2.0, 2.0, 4.0]
    assert speed["speedup"] == 2.0 and speed["speedup_max"] == 4.0 and speed["noisy"]
    assert speed["speedup_best"] == 4.0  # fastest native round 4.0 / fastest runtime round 1.0
    assert speed["rounds"] == 5
    # A runtime that stopped after two rounds is paired with the native's first two only.
    s_ort.rounds[256] = s_ort.rounds[256][:2]
    (short,) = lat.speedups(lat.rows(s_native, 0.0) + lat.rows(s_ort, 0.0))
    assert short["rounds"] == 2 and short["round_speedups"] == [2.0, 2.2]
    assert short["speedup_best"] == 2.0  # min(4.0, 4.4) / min(2.0, 2.0)


def test_every_latency_row_of_the_report_shows_median_and_spread(quick_artifacts):
    report = json.loads((quick_artifacts / "report.json").read_text())
    md = (quick_artifacts / "report.md").read_text()
    section = md.split("## Latency", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines()
             if line.startswith("| ") and "| model |" not in line and "---" not in line]
    rows = [r for m in report["models"].values() for r in m["latency"]]
    speedups = [s for m in report["models"].values() for s in m["speedups"]]
    assert len(table) == len(rows) + len(speedups)
    for line, row in zip(table, rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[5] == f"{row['p50_ms']:.3f}"
        assert cells[6] == f"{row['p50_min_ms']:.3f}-{row['p50_max_ms']:.3f}"
        assert cells[7].endswith("NOISY") == row["noisy"]
    for line, s in zip(table[len(rows):], speedups):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[5] == f"{s['speedup']:.2f}x" and cells[8] == f"{s['speedup_best']:.2f}x"
        assert cells[9] == str(s["rounds"]) == str(len(s["round_speedups"]))
    assert "rounds per configuration" in section and "load average" in section
    assert "interleaved" in report["latency_method"]


def test_latency_rounds_must_be_a_positive_number(tmp_path):
    proc = run("validate", str(tmp_path), "--latency-rounds", "0")
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert lines and "--latency-rounds" in lines[-1] and "1 to 100" in lines[-1]


def test_a_hung_native_process_is_stopped_and_named(quick_artifacts, monkeypatch):
    import os
    import signal

    import numpy as np

    from validate.timing import native

    monkeypatch.setattr(native, "REPLY_SECONDS", 2.0)
    proc = native.NativeProcess("torch", quick_artifacts / "torch", 1, None, str(DATA_DIR))
    with proc:
        proc.wait_ready()
        os.kill(proc.proc.pid, signal.SIGSTOP)  # alive, but never answers
        feeds = {"image": np.zeros((1, 1, 28, 28), np.float32)}
        with pytest.raises(native.NativeFailed, match="gave no answer in 2 s"):
            proc.timings(feeds, lat.RoundPlan.for_run(True).first)
        assert proc.proc.poll() is not None  # and it was stopped, not left behind


def test_the_native_models_memory_is_not_the_onnx_models(quick_artifacts, tmp_path):
    # Two native processes of about 0.6 GB each: 900 MiB would stop the model if they counted.
    proc = run("validate", str(quick_artifacts), "--frameworks", "torch", "--runtimes", "cpu",
               "--latency-rounds", "1", "--max-memory", "900", "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((tmp_path / "report.json").read_text())["models"]["torch"]
    assert {(r["batch_size"], r["threads"]) for r in m["latency"] if "runner" not in r}
    assert m["latency_conditions"]["native"].startswith("measured side by side")
    assert all(r["rounds"] == 1 for r in m["precision"]["fp32"]["latency"])  # --latency-rounds


def test_a_native_model_that_cannot_run_costs_only_its_latency(artifacts_copy):
    (artifacts_copy / "torch" / "model.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    proc = run("validate", str(artifacts_copy), "--frameworks", "torch", "--runtimes", "cpu",
               "--latency-rounds", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((artifacts_copy / "report.json").read_text())["models"]["torch"]
    assert not [r for r in m["latency"] if "runner" not in r]
    status = m["latency_conditions"]["native"]
    assert status.startswith("not measured: ") and "not a LeNet-5 state_dict" in status
    assert "weights_only" not in status  # torch's advice to unpickle code is not passed on
    assert f"native: {status}" in (artifacts_copy / "report.md").read_text()


def test_no_latency_times_nothing_not_even_the_quantized_models(quick_artifacts, tmp_path):
    proc = run("validate", str(quick_artifacts), "--frameworks", "torch", "--runtimes", "cpu",
               "--no-latency", "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((tmp_path / "report.json").read_text())["models"]["torch"]
    assert m["latency"] == [] and "speedups" not in m
    section = (tmp_path / "report.md").read_text().split("## Latency", 1)[1].split("\n## ")[0]
    assert section.strip().startswith("No latency measured: --no-latency")  # not an empty table
    assert m["precision"]["passed"]
    assert not [p for p in ("fp32", "int8", "fp16") if "latency" in m["precision"][p]]


def test_sigterm_stops_the_validator_and_every_process_it_started(quick_artifacts, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from tests.conftest import ROOT

    env = {**os.environ, "FASHION_MNIST_DIR": str(DATA_DIR), "LENET5_NO_BOOTSTRAP": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "validate", str(quick_artifacts),
                             "--frameworks", "torch", "--output", str(tmp_path)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def cmdline(p: psutil.Process) -> str:
        try:
            return " ".join(p.cmdline())
        except psutil.Error:
            return ""

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the native servers are up
        kids = psutil.Process(proc.pid).children(recursive=True)
        if any("convert.native_server" in cmdline(k) for k in kids):
            break
        time.sleep(0.2)
    kids = psutil.Process(proc.pid).children(recursive=True)
    assert kids
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines()[-1] == "terminated (SIGTERM)"
    gone, alive = psutil.wait_procs(kids, timeout=15)
    assert not alive, [cmdline(k) for k in alive]
    assert not (tmp_path / "report.json").exists()  # nothing half-written
