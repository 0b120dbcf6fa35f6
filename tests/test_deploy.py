"""Deploy-side validation: `python -m validate MODEL.onnx` on one of our files, on any other
ONNX model with its test_data_set_*, and faults that only one runtime shows."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import error_lines, run

QUICK = ("--quick",)


def _tiny_model(folder, y_offset: float = 0.0, int_op: str = "Add"):
    """Not LeNet-5: two inputs of different dtypes, two outputs, a dynamic leading axis."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "a"], ["y"]), helper.make_node(int_op, ["b", "b"], ["z"])],
        "tiny",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("b", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("z", TensorProto.INT64, ["n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              ir_version=10)  # what torch.onnx writes; every runtime reads it
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "tiny.onnx"))
    a = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    b = np.array([1, -2, 3, 40], dtype=np.int64)
    sets = folder / "test_data_set_0"
    sets.mkdir(exist_ok=True)
    for name, array in (("input_0", (a, "a")), ("input_1", (b, "b")),
                        ("output_0", (a + a + np.float32(y_offset), "y")),
                        ("output_1", (b * b if int_op == "Mul" else b + b, "z"))):
        (sets / f"{name}.pb").write_bytes(
            numpy_helper.from_array(*array).SerializeToString())
    return folder / "tiny.onnx"


def test_one_of_our_files_beside_its_reference(quick_artifacts, tmp_path):
    """One file named, its reference.npz beside it: judged as LeNet-5 on the full test set,
    timed beside its native model. onnxruntime CPU only: every runtime on one named file is
    test_one_of_our_files_alone's, and test_a_model_that_is_not_lenet's with latency."""
    path = quick_artifacts / "tf" / "lenet5.onnx"
    proc = run("validate", str(path), *QUICK, "--runtimes", "cpu", "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    model = report["models"]["tf"]
    assert model["kind"] == "lenet5" and model["passed"]
    assert model["runtimes"]["onnxruntime-cpu"]["flip_count"] == 0  # full-test-set parity
    assert all(s["passed"] for s in model["runtimes"]["onnxruntime-cpu"]["test_data_sets"])
    # the native model beside the file (model.keras) is timed against onnxruntime
    assert {r["runtime"] for r in model["latency"]} == {"tensorflow", "onnxruntime"}


def test_one_of_our_files_alone(quick_artifacts, tmp_path):
    lone = tmp_path / "deploy" / "lenet5.onnx"
    lone.parent.mkdir()
    shutil.copy(quick_artifacts / "torch" / "lenet5.onnx", lone)
    proc = run("validate", str(lone), "--no-latency", "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    cpu = report["models"]["deploy"]["runtimes"]["onnxruntime-cpu"]
    assert cpu["metadata_accuracy"]["passed"]
    assert cpu["metadata_accuracy"]["measured"] == cpu["metadata_accuracy"]["recorded"]


def test_an_engine_that_lacks_an_operator_is_named_with_it(tmp_path):
    """tract rewrites Mul(b, b) into Square, which it has no int64 kernel for: that model fails
    in tract, in one line naming the runtime and the operator, and passes elsewhere."""
    path = _tiny_model(tmp_path / "square", int_op="Mul")
    proc = run("validate", str(path), "--runtimes", "cpu,tract", "--no-latency")
    assert proc.returncode == 1
    assert error_lines(proc) == [line for line in error_lines(proc)
                                 if line.startswith("parity failed: tiny (tract): ")]
    assert len(error_lines(proc)) == 1 and "Square" in proc.stderr and "I64" in proc.stderr


def test_a_model_that_is_not_lenet(tmp_path):
    path = _tiny_model(tmp_path / "good")
    proc = run("validate", str(path), "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    model = report["models"]["tiny"]
    assert model["kind"] == "foreign" and model["passed"]
    ran = [r for r in model["runtimes"].values() if r["status"] != "unavailable"]
    assert {"onnxruntime-cpu", "onnx-reference"} <= {r["runner"] for r in ran}
    for r in ran:
        outputs = r["test_data_sets"][0]["outputs"]
        assert set(outputs) == {"y", "z"} and all(o["passed"] for o in outputs.values())


def test_a_reader_that_stops_reading_stops_the_validator_quietly(tmp_path):
    """`python -m validate MODEL.onnx | head -1`: stdout closed early is SIGPIPE's status (141),
    no traceback, as the shell's own tools do."""
    import os
    import subprocess
    import sys

    from tests.conftest import DATA_DIR, ROOT

    path = _tiny_model(tmp_path / "good")
    env = {**os.environ, "FASHION_MNIST_DIR": str(DATA_DIR), "LENET5_NO_BOOTSTRAP": "1"}
    proc = subprocess.run(f"set -o pipefail; {sys.executable} -m validate {path} --runtimes "
                          "cpu,reference --no-latency | head -1", shell=True, cwd=ROOT, env=env,
                          capture_output=True, text=True, executable="/bin/bash")
    assert proc.stdout.startswith("[validate] tiny: "), proc.stdout
    assert proc.stderr == "", proc.stderr
    assert proc.returncode == 141  # the validator's status (pipefail), not head's


def test_a_wrong_stored_output_is_exit_1_naming_the_output(tmp_path):
    path = _tiny_model(tmp_path / "bad", y_offset=0.5)
    proc = run("validate", str(path), "--runtimes", "cpu,reference")
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and "output 'y'" in lines[0] and "'z'" not in lines[0], lines
    assert lines[0].startswith("parity failed: tiny (onnxruntime-cpu): test_data_set_0")
    assert "also failed in onnx-reference" in lines[0]


def test_a_fault_only_one_runtime_shows_names_that_runtime(artifacts_copy):
    """onnxruntime's contrib operator FusedMatMul computes the same MatMul in onnxruntime;
    the ONNX reference implementation does not know it: only that runtime fails."""
    path = artifacts_copy / "tf" / "lenet5.onnx"
    model = onnx.load(str(path))
    i = next(i for i, n in enumerate(model.graph.node) if n.op_type == "MatMul")
    n = model.graph.node[i]
    model.graph.node[i].CopyFrom(helper.make_node(
        "FusedMatMul", list(n.input), list(n.output), domain="com.microsoft", alpha=1.0,
        name=n.name))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(path))
    proc = run("validate", str(artifacts_copy), "--frameworks", "tf", "--no-latency",
               "--runtimes", "cpu,reference")
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("parity failed: tf (onnx-reference): "), lines
    assert "FusedMatMul" in lines[0] and "also failed" not in lines[0]
    report = json.loads((artifacts_copy / "report.json").read_text())
    runtimes = report["models"]["tf"]["runtimes"]
    assert runtimes["onnxruntime-cpu"]["passed"] and not runtimes["onnx-reference"]["passed"]


def test_a_runtime_asked_for_by_name_must_be_available(quick_artifacts):
    from validate.runners import cuda_status

    proc = run("validate", str(quick_artifacts / "tf" / "lenet5.onnx"), "--runtimes", "cuda",
               "--no-latency")
    if cuda_status().available:
        assert proc.returncode in (0, 1)
        return
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and "runtime cuda (onnxruntime-cuda) is unavailable here" in lines[0]


def test_a_model_newer_than_the_javascript_runtimes(artifacts_copy):
    """The newest IR version (14 in onnx 1.23) loads in onnxruntime 1.32 (Python) but not in
    onnxruntime-node / -web 1.30: the verdict names exactly the runtimes that reject it."""
    from validate.runners import runner_class

    js = [k for k in ("node", "wasm", "browser") if runner_class(k).availability() is None]
    if not js:
        pytest.skip("no JavaScript runtime here (test_runners requires them on this machine)")
    path = artifacts_copy / "torch" / "lenet5.onnx"
    model = onnx.load(str(path))
    model.ir_version = onnx.IR_VERSION
    onnx.save(model, str(path))
    proc = run("validate", str(artifacts_copy), "--frameworks", "torch", "--no-latency",
               "--runtimes", ",".join(["cpu", *js]))
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.loads((artifacts_copy / "report.json").read_text())
    runtimes = report["models"]["torch"]["runtimes"]
    assert runtimes["onnxruntime-cpu"]["passed"]
    failed = {name for name, r in runtimes.items() if not r["passed"]}
    assert failed == {runner_class(k).name for k in js}
    lines = error_lines(proc)
    assert len(lines) == 1 and f"Unsupported model IR version: {onnx.IR_VERSION}" in lines[0]
