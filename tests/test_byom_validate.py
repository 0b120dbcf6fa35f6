"""`python -m validate DIR` on model exports (docs/byom.md): the same report as for LeNet-5.

End to end on small models exported by `python -m convert export` (slow: each export starts a
framework; made once per run in tests/conftest.py and shared with tests/test_byom_export.py),
plus checks on a folder written by hand with onnx + numpy: the gate and plan() (fast), a
runtime that cannot run an operator (slow: it starts the validator).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import error_lines, run
from train.core.spec import FORMAT, VERSION


def validate(folder: Path, out: Path, *args: str):
    return run("validate", str(folder), "--output", str(out), "--quick", *args)


# -- fast: a folder written by hand -----------------------------------------------------------
def _hand_folder(folder: Path, op: str = "Det") -> Path:
    """A model export without a framework: x [batch,4,4] -> det (Det) and twice (Mul)."""
    folder.mkdir(parents=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 4])
    outs = [helper.make_tensor_value_info("det", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("twice", TensorProto.FLOAT, ["batch", 4, 4])]
    nodes = [helper.make_node(op, ["x"], ["det"]), helper.make_node("Mul", ["x", "two"], ["twice"])]
    graph = helper.make_graph(nodes, "hand", [x], outs,
                              [numpy_helper.from_array(np.float32(2.0), "two")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    spec = {"format": FORMAT, "version": VERSION, "name": "hand", "framework": "torch",
            "factory": "tests.byom_models:none", "kwargs": {}, "seed": 0, "checkpoint": None,
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4, 4],
                        "layout": "none", "preprocessing": ""}],
            "outputs": [{"name": "det", "dtype": "float32", "shape": ["batch"]},
                        {"name": "twice", "dtype": "float32", "shape": ["batch", 4, 4]}],
            "data": {"source": "random", "count": 12, "random": True, "labels": False},
            "weights": "weights.pt", "export": {}}
    for key, value in (("model_spec", json.dumps(spec)), ("source_framework", "torch")):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(folder / "model.onnx"))
    xs = np.random.default_rng(0).random((12, 4, 4), dtype=np.float32)
    np.savez(folder / "inputs.npz", x=xs)
    np.savez(folder / "reference.npz", det=np.linalg.det(xs.astype(np.float64)).astype(np.float32),
             twice=xs * 2)
    (folder / "spec.json").write_text(json.dumps(spec))
    return folder


def test_gate_scales_with_the_output_and_excuses_ties():
    from validate.model import gate

    ref = np.array([[30.0, 10.0], [1.0, 1.0 + 1e-6]], dtype=np.float32)
    got = ref + np.float32(1e-4) * np.array([[1, 0], [0, -1]], dtype=np.float32)
    lim = gate.limit(1e-5, gate.scale(ref), None)
    assert lim == pytest.approx(3e-4)
    rec = gate.compare_output(got, ref, lim, gate.scale(ref))
    assert rec["passed"] and rec["flips"] == [1] and rec["ties"] == [1]
    assert gate.limit(1e-5, 1.0, 1e-6) == pytest.approx(2e-5)  # the float64 floor decides
    ints = gate.compare_output(np.array([1, 2]), np.array([1, 3]), 0.0, 0.0)
    assert not ints["passed"] and ints["mismatches"] == 1
    floors = gate.floors({"o": np.zeros((2, 2))}, [{"o": np.full((4, 2), 1e-7)},
                                                    {"o": np.full((4, 2), 5.0)}])
    assert floors["o"] == pytest.approx(1e-7)  # one bad runtime cannot loosen the gate


def test_plan_and_limits(tmp_path):
    from validate.model.folder import scaled_limits
    from validate.run import plan
    from validate.sandbox import Limits

    one = _hand_folder(tmp_path / "parent" / "a")
    _hand_folder(tmp_path / "parent" / "b")
    assert plan(one, ("torch", "tf")) == [("a", one / "model.onnx", False)]
    assert [p[0] for p in plan(tmp_path / "parent", ("torch", "tf"))] == ["a", "b"]
    big = scaled_limits(Limits(), 45 << 20)
    assert big.memory_mb == 4096 + 30 * 45 and big.timeout_s == 1800 + 900
    assert scaled_limits(Limits(memory_mb=512), 45 << 20).memory_mb == 512


@pytest.mark.slow  # a validator process: about 20 s on a busy machine
def test_runtime_failure_names_the_operator(tmp_path):
    """tract has no Det: that runtime fails with a line naming the operator; onnxruntime
    passes; the verdict line names both."""
    folder = _hand_folder(tmp_path / "hand")
    proc = validate(folder, tmp_path / "out", "--runtimes", "cpu,tract", "--no-latency")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = error_lines(proc)[-1]
    assert "parity failed: hand (tract): operator Det:" in line, line
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    m = report["models"]["hand"]
    assert m["kind"] == "model" and m["runtimes"]["tract"]["op"] == "Det"
    assert m["runtimes"]["onnxruntime-cpu"]["passed"]
    assert "operator Det" in (tmp_path / "out" / "report.md").read_text()


# -- slow: exported by `python -m convert export` ---------------------------------------------
@pytest.mark.slow
def test_healthy_tiny_cnn_passes_everywhere(tiny_cnn_export, tmp_path):
    proc = validate(tiny_cnn_export, tmp_path / "out")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    m = report["models"]["tiny"]
    assert m["kind"] == "model" and m["passed"] and m["integrity"]["passed"]
    ran = {n: r for n, r in m["runtimes"].items() if r["status"] != "unavailable"}
    assert {"onnxruntime-cpu", "onnx-reference"} <= set(ran)
    assert all(r["passed"] and r["invariance"]["rerun_identical"] for r in ran.values())
    assert m["noise_floor"]["exact_runner"] == "onnx-reference"
    assert {"int8", "fp16"} <= set(m["precision"])
    assert any(r.get("runtime") == "torch" for r in m["latency"]), m["latency_conditions"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Models of your own" in md and "LeNet-5 only" in md
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Models of your own" in page and "on every output and real input" in page
    assert "<title>ONNX parity report of tiny: PASSED</title>" in page
    # LeNet-5's sections (training, test-set confusion, twins, consumers) are left out.
    assert all(f"<h2>{h}</h2>" not in page for h in
               ("Training curves", "Confusion matrices", "Conversion matrix", "Flipped images"))


@pytest.mark.slow
def test_planted_fault_is_named_at_its_module(tiny_cnn_export, tmp_path):
    """One weight of module `4` (the second convolution) changed after export: parity fails
    and the layer diagnosis names `4`."""
    folder = tmp_path / "fault"
    shutil.copytree(tiny_cnn_export, folder)
    for variant in folder.glob("model.*.onnx"):
        variant.unlink()
    model = onnx.load(str(folder / "model.onnx"))
    init = next(t for t in model.graph.initializer if t.name == "4.weight")
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(folder / "model.onnx"))
    proc = validate(folder, tmp_path / "out", "--runtimes", "cpu,reference", "--no-latency")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = error_lines(proc)[-1]
    assert "parity failed: fault (onnxruntime-cpu)" in line and "first divergence at 4 " in line
    m = json.loads((tmp_path / "out" / "report.json").read_text())["models"]["fault"]
    assert m["layers"]["first_divergence"] == "4"


def test_two_inputs_two_outputs(two_heads_export, tmp_path):
    """An image and int64 token ids in, logits and an embedding out: every output judged."""
    folder = two_heads_export
    proc = validate(folder, tmp_path / "out", "--runtimes", "cpu,reference,openvino,tract",
                    "--layers")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((tmp_path / "out" / "report.json").read_text())["models"]["two"]
    cpu = m["runtimes"]["onnxruntime-cpu"]
    assert len(cpu["outputs"]) == 2 and all(o["passed"] for o in cpu["outputs"].values())
    assert m["layers"]["first_divergence"] is None and m["layers"]["rows"]
    # Each variant is judged, or the report says why the export could not make it (here the
    # FP16 converter leaves float32 beside float16 at the Concat).
    md = (tmp_path / "out" / "report.md").read_text()
    for k, made in m["spec"]["variants"].items():
        if made["file"]:
            assert k in m["precision"]
        else:
            assert f"two {k.upper()}: not made at export: {made['reason']}" in md
    assert "torch" not in sys.modules and "tensorflow" not in sys.modules
