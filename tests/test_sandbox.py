"""Untrusted models contained: memory and time limits, external data kept in the model's
folder; the validator goes on with the other models."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import error_lines, run

OPSET = [helper.make_opsetid("", 18)]


def _contract_model(extra_nodes, extra_inits, scalar: str):
    """image -> probabilities (the I/O contract), with `scalar` * 0 added to the logits: the
    graph looks like ours but does whatever `extra_nodes` do."""
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"]),
        helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["logits"]),
        *extra_nodes,
        helper.make_node("Mul", [scalar, "zero"], ["nothing"]),
        helper.make_node("Add", ["logits", "nothing"], ["moved"]),
        helper.make_node("Softmax", ["moved"], ["probabilities"], axis=1),
    ]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "starts"),
             numpy_helper.from_array(np.array([10], np.int64), "ends"),
             numpy_helper.from_array(np.array([1], np.int64), "axes"),
             numpy_helper.from_array(np.array(0, np.float32), "zero"), *extra_inits]
    graph = helper.make_graph(
        nodes, "lenet5", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                        ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        inits)
    model = helper.make_model(graph, opset_imports=OPSET)
    model.metadata_props.add(key="test_accuracy", value="0.100000")  # something to check
    onnx.checker.check_model(model, full_check=True)
    return model


def huge_allocation_model():
    """Allocates 12 GB (ConstantOfShape) on every run."""
    return _contract_model(
        [helper.make_node("ConstantOfShape", ["shape"], ["big"],
                          value=numpy_helper.from_array(np.array([1.0], np.float32))),
         helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0)],
        [numpy_helper.from_array(np.array([3_000_000_000], np.int64), "shape")], "total")


def endless_loop_model():
    """A Loop of 10^15 iterations."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["x_in", "one"], ["x_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    return _contract_model(
        [helper.make_node("Loop", ["trips", "cond", "start"], ["count"], body=body)],
        [numpy_helper.from_array(np.array(10 ** 15, np.int64), "trips"),
         numpy_helper.from_array(np.array(True), "cond"),
         numpy_helper.from_array(np.array(0.0, np.float32), "start")], "count")


def test_a_model_past_the_memory_limit_stops_and_the_others_go_on(artifacts_copy):
    path = artifacts_copy / "tf" / "lenet5.onnx"
    onnx.save(huge_allocation_model(), str(path))
    proc = run("validate", str(artifacts_copy), "--max-memory", "1024", "--no-latency",
               "--runtimes", "cpu,reference")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert error_lines(proc) == [f"error: {path}: stopped: it needed more than the memory "
                                 "limit of 1024 MiB (--max-memory)"]
    report = json.loads((artifacts_copy / "report.json").read_text())
    assert report["models"]["torch"]["passed"] is True  # validated all the same
    assert "memory limit" in report["models"]["tf"]["error"]


def test_a_model_past_the_time_limit_stops(tmp_path):
    path = tmp_path / "lenet5.onnx"
    onnx.save(endless_loop_model(), str(path))
    proc = run("validate", str(path), "--timeout", "5", "--no-latency", "--runtimes", "cpu",
               timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert error_lines(proc) == [f"error: {path}: stopped: it ran longer than the time limit "
                                 "of 5 s (--timeout)"]


def _external(model_dir, location: str):
    """A copy of a small model whose one initializer points its data at `location`."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4],
                    data_location=TensorProto.EXTERNAL)
    w.external_data.add(key="location", value=location)
    graph.initializer.append(w)
    model = helper.make_model(graph, opset_imports=OPSET)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "ext.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_must_stay_in_the_models_folder(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(4, np.float32).tobytes())
    cases = {"../secret.bin": "models/a", str(secret): "models/b", "link.bin": "models/c"}
    os.makedirs(tmp_path / "models" / "c")
    os.symlink(secret, tmp_path / "models" / "c" / "link.bin")
    for location, sub in cases.items():
        path = _external(tmp_path / sub, location)
        proc = run("validate", str(path), "--runtimes", "cpu")
        assert proc.returncode == 2, (location, proc.stderr[-2000:])
        assert error_lines(proc) == [
            f"error: {path}: tensor 'w' keeps its data at {location!r}, outside the model's "
            "folder; refused"], location


def test_a_temporary_folder_too_long_for_the_process_socket_is_one_line(tmp_path):
    """The validator's forkserver socket lives under TMPDIR: a path past the AF_UNIX limit is
    the user's to change, said in one line (exit 2), not a traceback."""
    from onnx import TensorProto, helper

    long_tmp = tmp_path / ("t" * 90)
    long_tmp.mkdir()
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = tmp_path / "identity.onnx"
    model.write_bytes(helper.make_model(graph).SerializeToString())
    proc = run("validate", str(model), "--runtimes", "cpu", "--no-latency",
               env={"TMPDIR": str(long_tmp)})
    lines = error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"error: {long_tmp}: the temporary folder's path is too long")
