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
