"""The validator: parity maths, the report, planted faults, and its one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import error_lines, run

FAST = ("--runtimes", "cpu", "--no-latency")  # for tests about something other than runtimes
from validate.compare import parity
from validate.runners import CUDA, OnnxRunner, ProviderUnavailable, cuda_status


def test_compare_counts_flips_and_differences():
    rng = np.random.default_rng(0)
    ref = rng.dirichlet(np.ones(10), size=50).astype(np.float32)
    labels = ref.argmax(1)
    same = parity.compare(ref.copy(), ref, labels, "cpu", 1e-5, 1.0)
    assert same and same.max_abs_diff == 0 and same.flips == [] and same.accuracy_native == 1.0
    moved = ref.copy()
    moved[7] = np.roll(moved[7], 1)  # image 7 now predicts another class
    bad = parity.compare(moved, ref, labels, "cpu", 1e-5, 1.0)
    assert not bad and bad.flips == [7] and bad.top1_agreement == pytest.approx(0.98)
    assert "top-1 agreement" in bad.failure() and "max |diff|" in bad.failure()
    loose = parity.compare(moved, ref, labels, "cpu", 1.0, 0.9)
    assert not loose  # agreement and diff within limits, but accuracy changed
    nan = ref.copy()
    nan[0, 0] = np.nan
    assert not parity.compare(nan, ref, labels, "cpu", 1e-5, 1.0)


def test_cuda_is_confirmed_or_reported_unavailable(quick_artifacts):
    status = cuda_status()
    path = quick_artifacts / "torch" / "lenet5.onnx"
    if status.available:  # a CUDA build on a GPU machine: the session must really use CUDA
        with OnnxRunner(path, CUDA) as runner:
            assert runner.session.get_providers()[0] == CUDA
        return
    assert "CPUExecutionProvider" in status.reason and "CUDA" not in status.reason.split("(")[0]
    with pytest.raises(ProviderUnavailable, match="offers"):
        with OnnxRunner(path, CUDA):
            pass


def test_report_holds_the_contracted_fields(quick_artifacts):
    report = json.loads((quick_artifacts / "report.json").read_text())
    assert report["schema_version"] == 3 and report["passed"] is True
    env = report["environment"]
    assert "CPUExecutionProvider" in env["providers_available"] and env["onnxruntime"]
    for fw in ("torch", "tf"):
        m = report["models"][fw]
        path = Path(m["facts"]["path"])  # absolute: the report is read from other folders
        assert path.is_absolute() and path.is_file()
        assert path.parts[-2:] == Path(m["facts"]["file"]).parts[-2:]
        assert m["parity"]["passed"] and m["parity"]["max_abs_diff"] <= 1e-5
        assert m["parity"]["top1_agreement"] == 1.0 and m["parity"]["flips"] == []
        assert m["accuracy"]["native"] == m["accuracy"]["onnxruntime"]
        assert len(m["accuracy"]["per_class"]["onnxruntime"]) == 10
        if not env["cuda"]["available"]:
            assert m["parity_cuda"]["status"] == "unavailable" and m["parity_cuda"]["reason"]
        keys = {"runtime", "provider", "batch_size", "threads", "p50_ms", "p90_ms", "p99_ms",
                "images_per_second"}
        assert all(keys <= set(row) for row in m["latency"])
        ort_rows = {(r["batch_size"], r["threads"]) for r in m["latency"]
                    if r["runtime"] == "onnxruntime" and r["provider"] == "CPUExecutionProvider"}
        cores = env["cpu_count"]
        assert ort_rows == {(b, t) for b in (1, 32, 256) for t in {1, cores}}
        native = {r["runtime"] for r in m["latency"] if "runner" not in r}
        assert native == {"torch" if fw == "torch" else "tensorflow"}
        # Native timed beside onnxruntime, round by round, at every batch size and thread count.
        assert {(r["batch_size"], r["threads"]) for r in m["latency"] if "runner" not in r} == {
            (b, t) for b in (1, 32, 256) for t in {1, cores}}
        for row in m["latency"]:
            assert row["rounds"] == 3 == len(row["round_p50_ms"]) == len(row["round_windows"])
            assert row["p50_min_ms"] <= row["p50_ms"] <= row["p50_max_ms"]
            assert row["noisy"] == (row["spread"] > 0.2)
        speed = {(s["runner"], s["batch_size"], s["threads"]): s for s in m["speedups"]}
        assert {("onnxruntime-cpu", b, t) for b in (1, 32, 256) for t in {1, cores}} <= set(speed)
        assert all(s["speedup_min"] <= s["speedup"] <= s["speedup_max"] for s in speed.values())
        rows = {(r.get("runner"), r["batch_size"], r["threads"]): r for r in m["latency"]}
        for (runner, b, t), s in speed.items():  # the fastest native round / the runtime's
            native = rows[(None, b, t)]["p50_min_ms"]
            assert s["speedup_best"] == pytest.approx(native / rows[(runner, b, t)]["p50_min_ms"],
                                                      rel=5e-3)
        cond = m["latency_conditions"]
        assert cond["rounds"] == 3 and cond["errors"] == []  # --quick: 3 rounds
        assert "side by side" in cond["native"]
        assert len(cond["load_average_start"] or [0, 0, 0]) == 3
        # Every runtime: parity fields and its tolerance, or the reason it could not run.
        for name, r in m["runtimes"].items():
            assert r["status"] in ("passed", "unavailable"), (name, r)
            if r["status"] == "unavailable":
                assert r["reason"]
                continue
            assert r["max_abs_diff"] <= r["tolerance"] and r["flip_count"] == 0
            assert r["invariance"]["passed"] and r["invariance"]["rerun_identical"]
            assert r["vs_exact_max_abs_diff"] is not None
            assert r["tolerance_check"]["status"] == "ok", r["tolerance_check"]
        assert m["runtimes"]["onnx-reference"]["vs_exact_max_abs_diff"] == 0
        assert 0 < m["noise_floor"]["native_vs_exact"] < 1e-5
        assert m["facts"]["parameters"] == {"torch": 61706, "tf": 107786}[fw]
        assert m["facts"]["opset"] == 18 and len(m["facts"]["sha256"]) == 64
    cross = report["cross_framework"]
    assert 0 < cross["agreement"] <= 1 and len(cross["per_class"]["tf"]) == 10
    md = (quick_artifacts / "report.md").read_text()
    assert "| | TensorFlow | PyTorch |" in md.split("## ")[0]  # the page leads with the table


def test_planted_fault_fails_parity_and_names_the_model(artifacts_copy):
    path = artifacts_copy / "tf" / "lenet5.onnx"
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 0.5  # one weight
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(path))
    proc = run("validate", str(artifacts_copy), "--quick", *FAST)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("parity failed: tf (onnxruntime-cpu): "
                                                   "max |diff|"), lines
    report = json.loads((artifacts_copy / "report.json").read_text())
    assert report["passed"] is False and report["models"]["torch"]["passed"] is True


def _one_line(proc, *fragments: str) -> None:
    lines = error_lines(proc)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1, lines
    for f in fragments:
        assert f in lines[0]


def test_a_pipe_in_a_model_name_keeps_the_markdown_tables_whole(quick_artifacts, tmp_path):
    import re
    import shutil

    folder = tmp_path / "a|b"
    folder.mkdir()
    shutil.copy(quick_artifacts / "torch" / "lenet5.onnx", folder / "x|y.onnx")
    shutil.copytree(quick_artifacts / "torch" / "test_data_set_0", folder / "test_data_set_0")
    proc = run("validate", str(folder / "x|y.onnx"), *FAST, "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "x\\|y" in md
    width = None  # every row of a table has as many cells as its header
    for line in md.splitlines():
        if not line.startswith("|"):
            width = None
            continue
        cells = len(re.split(r"(?<!\\)\|", line)) - 2
        width = width or cells
        assert cells == width, line


def test_missing_artifacts_folder(tmp_path):
    _one_line(run("validate", str(tmp_path / "nope")), str(tmp_path / "nope"),
              "no artifacts folder")


def test_a_file_that_is_not_onnx(artifacts_copy):
    path = artifacts_copy / "torch" / "lenet5.onnx"
    path.write_text("this is not a model\n")
    _one_line(run("validate", str(artifacts_copy), "--quick", *FAST), str(path), "not a valid ONNX model")


def test_missing_reference(artifacts_copy):
    path = artifacts_copy / "tf" / "reference.npz"
    path.unlink()
    _one_line(run("validate", str(artifacts_copy), "--quick", *FAST), str(path), "missing")


def test_validator_tolerance_flags(artifacts_copy):
    # An impossible tolerance turns a passing model into a named failure.
    proc = run("validate", str(artifacts_copy), "--quick", "--frameworks", "torch",
               "--atol", "0", *FAST)
    report = json.loads((artifacts_copy / "report.json").read_text())
    if report["models"]["torch"]["parity"]["max_abs_diff"] == 0:
        assert proc.returncode == 0
    else:
        assert proc.returncode == 1 and "parity failed: torch" in proc.stderr
    assert set(report["models"]) == {"torch"}


def test_out_of_range_tolerance_is_one_line_exit_2(tmp_path):
    proc = run("validate", str(tmp_path), "--min-agreement", "2")
    assert proc.returncode == 2
    assert error_lines(proc) == ["error: --min-agreement must be within 0..1, got 2"]


def test_a_corrupt_history_is_one_line_exit_2(artifacts_copy):
    path = artifacts_copy / "torch" / "history.json"
    path.write_text(path.read_text()[:40])
    _one_line(run("validate", str(artifacts_copy), "--quick", *FAST), str(path), "not valid JSON")


def test_an_onnx_file_that_breaks_the_io_contract(artifacts_copy):
    path = artifacts_copy / "torch" / "lenet5.onnx"
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 3  # [batch, 3, 28, 28]
    onnx.save(model, str(path))
    _one_line(run("validate", str(artifacts_copy), "--quick", *FAST), str(path),
              "breaks the I/O contract")


def test_tolerance_flags_reach_the_report(artifacts_copy):
    proc = run("convert", "validate", str(artifacts_copy), "--quick", "--frameworks", "tf",
               "--runtimes", "cpu,reference", "--no-latency",
               "--atol", "0.5", "--cuda-atol", "0.25", "--min-agreement", "0.75")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((artifacts_copy / "report.json").read_text())
    assert report["tolerances"] == {"atol": 0.5, "cuda_atol": 0.25, "min_agreement": 0.75,
                                    "rtol": 1e-4}
    assert report["models"]["tf"]["parity"]["atol"] == 0.5
    assert report["models"]["tf"]["runtimes"]["onnx-reference"]["tolerance"] == 0.5
    assert report["models"]["tf"]["parity"]["min_agreement"] == 0.75
    assert report["models"]["tf"]["conversion"]["atol"] == 0.5


def test_atol_reaches_the_conversion_gate_and_the_layer_diagnosis(artifacts_copy):
    """--atol is the limit wherever the same weights meet on the CPU (docs/architecture.md)."""
    args = ("validate", str(artifacts_copy), "--frameworks", "torch", "--runtimes", "cpu",
            "--no-latency", "--layers")
    proc = run(*args, "--atol", "1e-3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = json.loads((artifacts_copy / "report.json").read_text())["models"]["torch"]
    assert model["conversion"]["atol"] == 1e-3 and model["conversion"]["passed"]
    assert {r["tolerance"] for r in model["layers"]["rows"]} == {1e-5 * 1e-3 / 1e-5}
    proc = run(*args, "--atol", "1e-12")  # below every same-weights difference
    model = json.loads((artifacts_copy / "report.json").read_text())["models"]["torch"]
    assert proc.returncode == 1 and not model["conversion"]["passed"]
    assert re.search(r"conversion failed: torch -> Keras twin: max \|diff\| \S+ > 1e-12",
                     proc.stderr), proc.stderr[-2000:]


def test_a_crash_is_exit_3_with_its_traceback(capsys):
    from train.core.errors import DataError, cli_call

    assert cli_call(lambda: 1 // 0) == 3
    assert "ZeroDivisionError" in capsys.readouterr().err
    def bad_input():
        raise DataError("f.gz: broken")
    assert cli_call(bad_input) == 2
    assert capsys.readouterr().err == "error: f.gz: broken\n"
