"""Export: the ONNX I/O contract, references, backend-test data, determinism, bad checkpoints."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from train.core import contract as onnx_utils
from tests.conftest import error_lines, python, run
from train import data
from validate.runners import OnnxRunner

FRAMEWORKS = ["torch", "tf"]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_onnxruntime_matches_the_native_reference(quick_artifacts, data_dir, framework):
    folder = quick_artifacts / framework
    with np.load(folder / "reference.npz") as ref:
        reference, labels = ref["probabilities"], ref["labels"]
        assert str(ref["test_images_sha256"]) == data.FILES["t10k-images-idx3-ubyte.gz"]
    test_images, test_labels = data.load_split(data_dir, "test")
    assert reference.shape == (10000, 10) and reference.dtype == np.float32
    assert np.array_equal(labels, test_labels)
    assert np.allclose(reference.sum(1), 1, atol=1e-5)  # probabilities, not logits
    with OnnxRunner(folder / "lenet5.onnx") as runner:
        probs = runner.probabilities(data.to_float(test_images))
    assert np.abs(probs - reference).max() <= 1e-5
    assert np.array_equal(probs.argmax(1), reference.argmax(1))


def test_both_graphs_share_one_contract(quick_artifacts):
    seen = []
    for fw in FRAMEWORKS:
        model = onnx.load(str(quick_artifacts / fw / "lenet5.onnx"))
        onnx.checker.check_model(model, full_check=True)
        io = []
        for v in list(model.graph.input) + list(model.graph.output):
            t = v.type.tensor_type
            io.append((v.name, t.elem_type,
                       tuple(d.dim_param or d.dim_value for d in t.shape.dim)))
        opsets = sorted((o.domain, o.version) for o in model.opset_import)
        meta = {p.key: p.value for p in model.metadata_props}
        assert set(onnx_utils.REQUIRED_METADATA) <= set(meta)
        assert json.loads(meta["class_names"])[9] == "Ankle boot"
        assert meta["source_framework"] == {"torch": "torch", "tf": "tensorflow"}[fw]
        assert meta["layout"] == "NCHW" and meta["dataset_sha256"] == data.DATASET_SHA256
        assert json.loads(meta["recipe"])["batch_size"] == 32
        seen.append((io, opsets))
    assert seen[0] == seen[1]
    io, opsets = seen[0]
    assert io == [("image", onnx.TensorProto.FLOAT, ("batch", 1, 28, 28)),
                  ("probabilities", onnx.TensorProto.FLOAT, ("batch", 10))]
    assert opsets == [("", onnx_utils.OPSET)]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_dynamic_batch_and_backend_test_data(quick_artifacts, framework):
    folder = quick_artifacts / framework
    x = onnx_utils.read_tensor(folder / "test_data_set_0" / "input_0.pb")
    y = onnx_utils.read_tensor(folder / "test_data_set_0" / "output_0.pb")
    assert x.shape == (8, 1, 28, 28) and y.shape == (8, 10)
    session = ort.InferenceSession(str(folder / "lenet5.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"image": x})[0] - y).max() <= 1e-5
    for batch in (1, 3, 8):  # the batch dimension is dynamic
        assert session.run(None, {"image": x[:batch]})[0].shape == (batch, 10)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_exporting_the_same_weights_twice_is_byte_identical(artifacts_copy, framework):
    onnx_path = artifacts_copy / framework / "lenet5.onnx"
    first = _sha(onnx_path)
    onnx_path.unlink()
    proc = run("convert", "export", framework, "--artifacts", str(artifacts_copy))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _sha(onnx_path) == first


@pytest.mark.parametrize("framework,checkpoint", [("torch", "model.pt"), ("tf", "model.keras")])
def test_missing_or_corrupt_checkpoint_is_one_line_exit_2(artifacts_copy, framework, checkpoint):
    path = artifacts_copy / framework / checkpoint
    before = _sha(artifacts_copy / framework / "lenet5.onnx")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    proc = run("convert", "export", framework, "--artifacts", str(artifacts_copy))
    lines = error_lines(proc)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), lines
    assert _sha(artifacts_copy / framework / "lenet5.onnx") == before  # nothing half-written
    path.unlink()
    proc = run("convert", "export", framework, "--artifacts", str(artifacts_copy))
    assert proc.returncode == 2 and error_lines(proc) == [
        f"error: {path}: missing; run `python -m convert train {framework}` first"]


def test_shipped_files_load_unchanged_in_onnx2torch(quick_artifacts):
    """Each lenet5.onnx as shipped (no patch: allowzero cleared at export, where it has no
    effect) converts with onnx2torch and gives the native probabilities."""
    code = (
        "import sys, numpy as np, onnx, torch\n"
        "from onnx2torch import convert\n"
        "from train import data\n"
        "x = torch.from_numpy(data.to_float(data.load_test()[0][:512]))\n"
        "for fw in ('torch', 'tf'):\n"
        f"    folder = {str(quick_artifacts)!r} + '/' + fw\n"
        "    model = onnx.load(folder + '/lenet5.onnx')\n"
        "    assert not [a for n in model.graph.node for a in n.attribute\n"
        "                if a.name == 'allowzero' and a.i == 1], fw\n"
        "    with torch.inference_mode():\n"
        "        got = convert(model).eval()(x).numpy()\n"
        "    want = np.load(folder + '/reference.npz')['probabilities'][:512]\n"
        "    print(fw, float(np.abs(got - want).max()))\n")
    proc = python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    diffs = dict(line.split() for line in proc.stdout.splitlines() if line.startswith(("torch", "tf")))
    assert set(diffs) == {"torch", "tf"} and all(float(d) <= 1e-5 for d in diffs.values()), diffs


def test_every_consumer_loads_the_shipped_files(quick_artifacts):
    """The consumers table: every runtime that can run here and both round trips took each
    lenet5.onnx as it is."""
    from validate.report import consumers

    report = json.loads((quick_artifacts / "report.json").read_text())
    for fw in ("torch", "tf"):
        table = consumers.consumers(report["models"][fw])
        assert {"onnxruntime-cpu", "onnx-reference", "openvino-cpu", "tract", "onnx2torch",
                "onnx2tf"} <= set(table)
        assert table["onnx2torch"] == ("loads", "") and table["onnx2tf"] == ("loads", "")
        assert all(state in ("loads", "unavailable") for state, _ in table.values()), table
        assert consumers.all_load(report["models"][fw])
    md = (quick_artifacts / "report.md").read_text()
    assert "## Consumers: who loads the shipped file as it is" in md
    assert "| onnx2torch | loads | loads |" in md
