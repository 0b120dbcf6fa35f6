"""INT8 and FP16 variants: contract, metadata, determinism, accuracy gates, a bad calibration."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from train.core.errors import ArtifactError
from train.core.contract import save
from convert.quantize import Calibration, calibration_set, quantize, quantize_int8, variant_path
from tests.conftest import error_lines, run
from train import data
from validate.compare import precision
from validate.artifacts import load_onnx
from validate.runners.ort import CpuRunner

FRAMEWORKS = ("torch", "tf")


@pytest.fixture(scope="module")
def test_set(data_dir):
    images, labels = data.load_test(data_dir)
    return data.to_float(images), labels


def _fp32_probabilities(folder, images):
    with CpuRunner(folder / "lenet5.onnx", threads=1) as runner:
        return runner.probabilities(images)


def test_quantize_writes_contract_keeping_deterministic_variants(artifacts_copy, data_dir,
                                                                 test_set):
    paths = [variant_path(artifacts_copy / fw, p) for fw in FRAMEWORKS for p in ("int8", "fp16")]
    for path in paths:  # `convert all` may have made them already
        path.unlink(missing_ok=True)
    before = {p.relative_to(artifacts_copy) for p in artifacts_copy.rglob("*")}
    proc = run("convert", "quantize", "--artifacts", str(artifacts_copy))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Nothing but the four results lands in the artifacts (the quantizer's temporary files
    # go elsewhere).
    after = {p.relative_to(artifacts_copy) for p in artifacts_copy.rglob("*")}
    assert after - before == {p.relative_to(artifacts_copy) for p in paths}
    written = {p: p.read_bytes() for p in paths}
    images, labels = test_set
    results = {}
    for fw in FRAMEWORKS:
        folder = artifacts_copy / fw
        source = {p.key: p.value for p in onnx.load(str(folder / "lenet5.onnx")).metadata_props}
        for p in ("int8", "fp16"):
            model = load_onnx(variant_path(folder, p))  # checker (full) and the I/O contract
            meta = {m.key: m.value for m in model.metadata_props}
            assert meta["precision"] == p and meta["precision_converter"]
            assert {k: meta[k] for k in source} == source
            initializers = {t.data_type for t in model.graph.initializer}
            if p == "int8":
                assert onnx.TensorProto.INT8 in initializers  # the weights
                # int8 in the hidden dense layers only: the convolutions keep float32 weights
                floats = {t.name for t in model.graph.initializer
                          if t.data_type == onnx.TensorProto.FLOAT}
                assert all(n.input[1] in floats for n in model.graph.node if n.op_type == "Conv")
                ops = {n.op_type for n in model.graph.node}
                assert {"QuantizeLinear", "DequantizeLinear"} <= ops
                axes = [a.i for n in model.graph.node if n.op_type == "DequantizeLinear"
                        for a in n.attribute if a.name == "axis"]
                assert axes, "no per-channel weight scales"
                cal = json.loads(meta["calibration"])
                assert cal["split"] == "train" and cal["images"] == 300
            else:
                assert onnx.TensorProto.FLOAT16 in initializers
                assert onnx.TensorProto.FLOAT not in initializers
        result = precision.evaluate(folder, images, labels,
                                    _fp32_probabilities(folder, images), quick=True)
        json.dumps(result, allow_nan=False)
        assert result["passed"] and precision.failures(fw, result) == []
        assert result["threads"] == 1 and result["images"] == 10000
        i8, f16 = result["int8"], result["fp16"]
        assert i8["delta_points"] >= -1.0 and f16["delta_points"] >= -0.1
        assert i8["top1_agreement"] >= 0.95 and f16["top1_agreement"] >= 0.995
        assert 0 < f16["max_abs_diff"] < 5e-3 and 0 < i8["max_abs_diff"] < 0.5
        assert i8["bytes"] < f16["bytes"] < result["fp32"]["bytes"]
        for entry in (i8, f16):  # the speed verdict: each batch size against FP32
            assert [x["batch_size"] for x in entry["speed"]] == [1, 256]
            assert all(x["speedup"] > 0 and x["speedup_min"] <= x["speedup"] <= x["speedup_max"]
                       for x in entry["speed"])
            assert entry["slower_than_fp32"] == [x["batch_size"] for x in entry["speed"]
                                                 if x["slower"]]
        for entry in (result["fp32"], i8, f16):
            assert [r["batch_size"] for r in entry["latency"]] == [1, 256]
            assert all(r["threads"] == 1 and r["p50_ms"] > 0 for r in entry["latency"])
        results[fw] = result
    table = precision.markdown(results)
    rows = [l for l in table if l.startswith("| PyTorch") or l.startswith("| TensorFlow")]
    assert len(rows) == 6 and all("PASS" in r for r in rows if "| FP32 |" not in r)
    # Same input, same bytes.
    quantize(artifacts_copy, FRAMEWORKS, str(data_dir))
    assert {p: p.read_bytes() for p in written} == written


def test_bad_calibration_fails_the_int8_gate(artifacts_copy, data_dir, test_set):
    images, labels = test_set
    folder = artifacts_copy / "torch"
    quantize(artifacts_copy, ("torch",), str(data_dir))
    zeros = Calibration(np.zeros((100, 1, 28, 28), np.float32),
                        {"split": "none", "images": 100, "selection": "all-zero images",
                         "pixels_sha256": ""})
    quantize_int8(folder / "lenet5.onnx", variant_path(folder, "int8"), zeros)
    result = precision.evaluate(folder, images, labels, _fp32_probabilities(folder, images),
                                quick=True)
    assert not result["passed"] and not result["int8"]["passed"] and result["fp16"]["passed"]
    assert result["int8"]["delta_points"] < -1.0
    lines = precision.failures("torch", result)
    assert len(lines) == 1
    line = lines[0]
    assert "torch INT8 (lenet5.int8.onnx)" in line
    assert f"{result['int8']['accuracy']:.4f}" in line
    assert f"{result['int8']['delta_points']:+.2f} points" in line
    assert "FAIL" in "".join(precision.markdown({"torch": result}))


def test_missing_or_stale_variants_are_one_line_errors(artifacts_copy, data_dir, test_set):
    images, labels = test_set
    folder = artifacts_copy / "tf"
    for p in ("int8", "fp16"):
        variant_path(folder, p).unlink(missing_ok=True)
    probs = _fp32_probabilities(folder, images)
    with pytest.raises(ArtifactError, match="convert quantize"):
        precision.evaluate(folder, images, labels, probs, quick=True)
    quantize(artifacts_copy, ("tf",), str(data_dir))
    model = onnx.load(str(folder / "lenet5.onnx"))
    model.doc_string += " (exported again)"
    save(model, folder / "lenet5.onnx")
    with pytest.raises(ArtifactError, match="stale"):
        precision.evaluate(folder, images, labels, probs, quick=True)
    proc = run("convert", "quantize", "--artifacts", str(artifacts_copy / "nowhere"))
    assert proc.returncode == 2
    assert error_lines(proc) == [f"error: {artifacts_copy / 'nowhere' / 'torch' / 'lenet5.onnx'}"
                                 ": missing; run `python -m convert export torch` first"]


def test_calibration_is_a_seeded_sample_of_training_images(data_dir):
    a, b = calibration_set(str(data_dir)), calibration_set(str(data_dir))
    assert a.description == b.description and np.array_equal(a.images, b.images)
    assert a.description["split"] == "train" and a.images.shape == (300, 1, 28, 28)
    train, _ = data.load_split(data_dir, "train")
    index = np.sort(np.random.default_rng(0).choice(len(train), 300, replace=False))
    assert np.array_equal(a.images, data.to_float(train[index]))
    assert calibration_set(str(data_dir), seed=1).description["pixels_sha256"] != \
        a.description["pixels_sha256"]


def _slower_copy(fp32: onnx.ModelProto, chain: int) -> onnx.ModelProto:
    """The FP32 graph behind a chain of `chain` Adds of a zero image: the same function, more
    work per call (onnxruntime removes no Add of a non-scalar tensor)."""
    from onnx import helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    graph = model.graph
    zero = numpy_helper.from_array(np.zeros((1, 1, 28, 28), np.float32), "planted_zero")
    graph.initializer.append(zero)
    for node in graph.node:
        node.input[:] = [f"planted_{chain}" if i == "image" else i for i in node.input]
    adds = [helper.make_node("Add", ["image" if k == 0 else f"planted_{k}", "planted_zero"],
                             [f"planted_{k + 1}"]) for k in range(chain)]
    nodes = adds + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def test_a_variant_slower_than_fp32_is_flagged_not_failed(artifacts_copy, tmp_path):
    """A planted INT8 file that is the FP32 graph plus needless work: same accuracy, slower:
    the warning (with the figures) in stdout, report.md, report.html and the summary; exit 0."""
    from train.core.fileio import refresh_sha256sums

    folder = artifacts_copy / "torch"
    fp32 = onnx.load(str(folder / "lenet5.onnx"))
    int8 = onnx.load(str(variant_path(folder, "int8")))
    planted = _slower_copy(fp32, 300)
    del planted.metadata_props[:]
    planted.metadata_props.extend(int8.metadata_props)  # precision int8, its source's sha256
    save(planted, variant_path(folder, "int8"))
    refresh_sha256sums(folder)
    summary = tmp_path / "summary.md"
    proc = run("validate", str(artifacts_copy), "--frameworks", "torch", "--runtimes", "cpu",
               "--quick", "--summary", str(summary))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((artifacts_copy / "report.json").read_text())
    entry = report["models"]["torch"]["precision"]["int8"]
    assert entry["passed"] and entry["delta_points"] == 0  # the same function
    assert entry["slower_than_fp32"] == [1, 256], entry["speed"]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("warning: torch INT8"))
    assert "is slower than FP32 in onnxruntime CPU, 1 thread: batch 1 " in line
    assert f"batch 256 {entry['speed'][1]['speedup']:.2f}x" in line
    assert line in (artifacts_copy / "report.md").read_text()
    assert line in summary.read_text() and "**Warnings**" in summary.read_text()
    html = (artifacts_copy / "report.html").read_text()
    assert '<ul class="warn"><li>warning: torch INT8 (lenet5.int8.onnx) is slower' in html
