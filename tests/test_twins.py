"""Cross-framework conversion: the canonical weights file, the twins, the round trips, and the
conversion matrix, including the classic layout bugs it must catch.

Frameworks run only in subprocesses (`python -m convert twins …`, snippets); this process uses
numpy, onnx and onnxruntime.
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import onnx
import pytest

from train.core import weights as cw
from train.core.errors import ArtifactError
from tests.conftest import error_lines, python, run
from train import data
from validate.compare import conversion as conv

ROW_KEYS = ["native", "twin", "torch.onnx", "tf2onnx", "onnx2torch", "onnx2tf", "tflite"]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def test_set(data_dir):
    images, labels = data.load_test(data_dir)
    return data.to_float(images), labels


@pytest.fixture(scope="module")
def twins(quick_artifacts):
    """The quick artifacts: `convert all` ran `convert twins torch` and `convert twins tf`."""
    for framework in ("torch", "tf"):
        assert (quick_artifacts / framework / conv.CONVERSION / conv.TWIN_ONNX).is_file()
    return quick_artifacts


def _copy(twins, tmp_path):
    dest = tmp_path / "artifacts"
    shutil.copytree(twins, dest)
    return dest


def _rewrite_npz(path, **changes) -> None:
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(changes)
    np.savez(path, **arrays)


# --- layouts, numpy only ---------------------------------------------------------------------

def test_flatten_reorder_matches_the_other_frameworks_flatten():
    rng = np.random.default_rng(0)
    c, h, w = 16, 5, 5
    feature_map = rng.standard_normal((c, h, w)).astype(np.float32)
    kernel_chw = rng.standard_normal((120, c * h * w)).astype(np.float32)
    expected = kernel_chw @ feature_map.reshape(-1)            # PyTorch: NCHW flatten
    kernel_hwc = cw.reorder_flatten(kernel_chw, (c, h, w), "CHW", "HWC")
    np.testing.assert_allclose(kernel_hwc @ feature_map.transpose(1, 2, 0).reshape(-1),
                               expected, rtol=1e-5, atol=1e-4)  # Keras: NHWC flatten
    assert np.array_equal(cw.reorder_flatten(kernel_hwc, (c, h, w), "HWC", "CHW"), kernel_chw)
    # Without the permutation the same shapes compute something else.
    wrong = kernel_chw @ feature_map.transpose(1, 2, 0).reshape(-1)
    assert np.abs(wrong - expected).max() > 1


def test_conv_kernel_layouts():
    oihw = np.arange(16 * 6 * 5 * 5, dtype=np.float32).reshape(16, 6, 5, 5)
    hwio = cw.oihw_to_hwio(oihw)
    assert hwio.shape == (5, 5, 6, 16) and hwio[1, 3, 2, 7] == oihw[7, 2, 1, 3]
    assert np.array_equal(cw.hwio_to_oihw(hwio), oihw)


def test_architecture_facts():
    torch_arch = cw.Architecture("torch", "CHW", (2, 0), "logits")
    keras_arch = cw.Architecture("tf", "HWC", (2, 2), "probabilities")
    assert torch_arch.feature_shape == (16, 5, 5) and torch_arch.features == 400
    assert keras_arch.feature_shape == (16, 7, 7) and keras_arch.features == 784


def test_weights_file_errors_are_one_line(tmp_path):
    with pytest.raises(ArtifactError, match=r"weights\.npz: missing; run `python -m convert "
                                            r"export torch`"):
        cw.load(tmp_path / "torch" / "weights.npz")
    arch = cw.Architecture("torch", "CHW", (2, 0), "logits")
    arrays = {k: np.zeros(s, np.float32) for k, s in cw.expected_shapes(arch).items()}
    path = tmp_path / "weights.npz"
    cw.save(path, cw.Weights(arrays, arch))
    assert cw.load(path).architecture == arch
    _rewrite_npz(path, **{"dense1.kernel": np.zeros((120, 784), np.float32)})
    with pytest.raises(ArtifactError, match=r"dense1\.kernel has shape \[120, 784\], expected "
                                            r"\[120, 400\]"):
        cw.load(path)
    _rewrite_npz(path, flatten_order=np.array("NHWC"))
    with pytest.raises(ArtifactError, match="flatten_order 'NHWC'"):
        cw.load(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="not a readable npz"):
        cw.load(path)


def test_export_writes_the_canonical_weights(quick_artifacts):
    torch_w = cw.load(quick_artifacts / "torch" / "weights.npz")
    keras_w = cw.load(quick_artifacts / "tf" / "weights.npz")
    assert torch_w.architecture == cw.Architecture("torch", "CHW", (2, 0), "logits")
    assert keras_w.architecture == cw.Architecture("tf", "HWC", (2, 2), "probabilities")
    assert sum(a.size for a in torch_w.arrays.values()) == 61_706
    assert sum(a.size for a in keras_w.arrays.values()) == 107_786


# --- the real twins and round trips ----------------------------------------------------------

def test_the_conversion_matrix_passes(twins, quick_artifacts, test_set):
    images, labels = test_set
    for framework in ("torch", "tf"):
        result = conv.evaluate(twins, framework, images, labels)
        rows = {r["key"]: r for r in result["rows"]}
        assert list(rows) == ROW_KEYS
        for key in ("onnx2tf", "tflite"):  # onnx2tf is optional; never silently absent
            if rows[key]["status"].startswith("unavailable"):
                assert "onnx2tf" in rows[key]["status"] and rows[key]["gated"] is False
        gated = [r for r in result["rows"] if r["gated"]]
        assert {r["key"] for r in gated} >= {"native", "twin", "torch.onnx", "tf2onnx",
                                              "onnx2torch"}
        for row in gated:
            assert row["status"] == "ok", (framework, row["name"], row["status"])
            assert row["max_abs_diff"] <= 1e-5 and row["flip_count"] == 0, (framework, row)
            assert row["accuracy"] == result["accuracy"]
        assert result["passed"] and conv.failures(framework, result) == []
        # The exported model is read, never rewritten (onnx2tf rewrites its input file).
        assert _sha(twins / framework / "lenet5.onnx") == \
            _sha(quick_artifacts / framework / "lenet5.onnx")


def test_twins_keep_the_onnx_contract(twins):
    for trained, exporter, source in (("torch", "tf2onnx", "tensorflow"),
                                      ("tf", "torch.onnx (dynamo)", "torch")):
        model = onnx.load(str(twins / trained / "conversion" / "twin.onnx"))
        onnx.checker.check_model(model, full_check=True)
        io = [(v.name, tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim))
              for v in list(model.graph.input) + list(model.graph.output)]
        assert io == [("image", ("batch", 1, 28, 28)), ("probabilities", ("batch", 10))]
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 18)]
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["exporter"] == exporter and meta["source_framework"] == source
        assert meta["twin_weights_sha256"] == _sha(twins / trained / "weights.npz")
        assert "twin of the" in meta["architecture"]


def test_missing_stale_and_unavailable_rows(twins, tmp_path, test_set):
    images, labels = test_set
    art = _copy(twins, tmp_path)
    unavailable = "unavailable: onnx2tf cannot be imported (test)"
    conv.write_status(art / "torch" / "conversion" / conv.TFLITE_FILE, unavailable,
                      source_sha256=_sha(art / "torch" / "lenet5.onnx"))
    result = conv.evaluate(art, "torch", images, labels)
    row = {r["key"]: r for r in result["rows"]}["tflite"]
    assert row["status"] == unavailable and row["passed"] is None and result["passed"]
    assert any(unavailable in line for line in conv.markdown({"torch": result}))

    (art / "torch" / "conversion" / conv.TWIN_NATIVE).unlink()
    _rewrite_npz(art / "tf" / "weights.npz", **{"dense3.bias": np.zeros(10, np.float32)})
    torch_rows = {r["key"]: r for r in conv.evaluate(art, "torch", images, labels)["rows"]}
    assert torch_rows["twin"]["status"].startswith("missing: ")
    assert "run `python -m convert twins tf`" in torch_rows["twin"]["status"]
    tf_result = conv.evaluate(art, "tf", images, labels)
    tf_rows = {r["key"]: r for r in tf_result["rows"]}
    for key in ("twin", "torch.onnx"):  # both made from the old weights.npz
        assert tf_rows[key]["status"].startswith("stale: "), tf_rows[key]
        assert tf_rows[key]["passed"] is False
    assert not tf_result["passed"]
    assert any(line.startswith("conversion failed: tf -> PyTorch twin: stale: ")
               for line in conv.failures("tf", tf_result))


def test_foreign_damaged_and_empty_conversion_files_are_failed_rows(twins, tmp_path, test_set):
    import json

    images, labels = test_set
    art = _copy(twins, tmp_path)
    folder = art / "torch" / "conversion"
    # The trained model itself posing as its Keras twin: not a pass by comparing it with itself.
    shutil.copyfile(art / "torch" / "lenet5.onnx", folder / conv.TWIN_ONNX)
    # "ok" with no probabilities, and a damaged archive.
    with np.load(folder / conv.ONNX2TORCH_FILE) as f:
        kept = {k: f[k] for k in f.files if k != "probabilities"}
    np.savez(folder / conv.ONNX2TORCH_FILE, **kept)
    (folder / conv.TFLITE_FILE).write_bytes(b"PK\x03\x04 truncated")
    result = conv.evaluate(art, "torch", images, labels)
    rows = {r["key"]: r for r in result["rows"]}
    assert rows["tf2onnx"]["status"].startswith(f"failed: {folder / conv.TWIN_ONNX} is not a "
                                                "twin made by `python -m convert twins tf`")
    assert rows["onnx2torch"]["status"] == (f"failed: {folder / conv.ONNX2TORCH_FILE} holds no "
                                            "probabilities")
    assert rows["tflite"]["status"].startswith(f"failed: {folder / conv.TFLITE_FILE}: ")
    assert all(rows[k]["passed"] is False for k in ("tf2onnx", "onnx2torch", "tflite"))
    assert not result["passed"] and len(conv.failures("torch", result)) == 3
    # A NaN in a conversion fails its row and still gives strict JSON.
    _rewrite_npz(art / "tf" / "conversion" / conv.ONNX2TORCH_FILE,
                 probabilities=np.full((len(labels), 10), np.nan, np.float32))
    proc = run("validate", str(art), "--runtimes", "cpu", "--no-latency")
    assert proc.returncode == 1, proc.stderr[-2000:]
    report = json.loads((art / "report.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"{c} in report.json"))
    tf_rows = {r["key"]: r for r in report["models"]["tf"]["conversion"]["rows"]}
    assert tf_rows["onnx2torch"]["passed"] is False
    assert tf_rows["onnx2torch"]["max_abs_diff"] is None  # NaN, written as null
    assert "error" not in report["models"]["torch"]  # failed rows, not a lost model


def test_a_rerun_makes_only_the_conversions_whose_files_changed(twins, tmp_path):
    from convert.twins.common import pending

    art = tmp_path / "artifacts"
    for fw in ("torch", "tf"):
        (art / fw).mkdir(parents=True)
        for name in ("lenet5.onnx", "weights.npz"):
            shutil.copy(twins / fw / name, art / fw / name)
        shutil.copytree(twins / fw / conv.CONVERSION, art / fw / conv.CONVERSION)
    assert pending(art, "torch") == ([], []) and pending(art, "tf") == ([], [])
    # Another toolkit or converter version wrote it: made again.
    _rewrite_npz(art / "torch" / conv.CONVERSION / conv.ONNX2TORCH_FILE,
                 made_with=np.array("another version"))
    assert pending(art, "torch") == ([], ["torch"]) and pending(art, "tf") == ([], [])
    # A conversion that failed is tried again.
    _rewrite_npz(art / "tf" / conv.CONVERSION / conv.TFLITE_FILE, status=np.array("failed: x"))
    assert pending(art, "tf") == ([], ["tf"])
    # New weights: the twin built from them; a twin.onnx of other weights, too.
    _rewrite_npz(art / "tf" / "weights.npz", **{"dense3.bias": np.zeros(10, np.float32)})
    assert pending(art, "torch") == (["tf"], ["torch"])
    model = onnx.load(str(art / "torch" / conv.CONVERSION / conv.TWIN_ONNX))
    next(p for p in model.metadata_props if p.key == "twin_weights_sha256").value = "0" * 64
    onnx.save(model, str(art / "torch" / conv.CONVERSION / conv.TWIN_ONNX))
    assert pending(art, "tf") == (["torch"], ["tf"])


def test_missing_weights_file_is_one_line(twins, tmp_path):
    art = _copy(twins, tmp_path)
    (art / "torch" / "weights.npz").unlink()
    proc = run("convert", "twins", "tf", "--artifacts", str(art))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_lines(proc) == [f"error: {art / 'torch' / 'weights.npz'}: missing; run "
                                 "`python -m convert export torch` first (export writes it)"]


def _plant_and_rebuild(art, trained: str, side: str, **changes) -> None:
    """Edit ARTIFACTS/TRAINED/weights.npz, then rebuild its twin in SIDE's process."""
    _rewrite_npz(art / trained / "weights.npz", **changes)
    proc = python("from pathlib import Path\n"
                  "from train import data\n"
                  f"from convert.twins import {side} as side\n"
                  f"side.make_twin(Path({str(art)!r}), {trained!r}, "
                  "data.to_float(data.load_test()[0]))\n")
    assert proc.returncode == 0, proc.stderr[-3000:]


def _assert_caught(art, trained: str, twin_name: str, test_set, layer: str) -> None:
    images, labels = test_set
    result = conv.evaluate(art, trained, images, labels)
    assert not result["passed"]
    rows = {r["key"]: r for r in result["rows"]}
    twin = rows["twin"]
    assert twin["status"] == "ok" and twin["passed"] is False
    assert twin["flip_count"] >= 1000 and twin["max_abs_diff"] > 0.1
    assert twin["accuracy"] < result["accuracy"] - 0.2  # accuracy collapses
    # The twin's ONNX export carries the same bug; the round trips of lenet5.onnx do not.
    onnx_key = "tf2onnx" if trained == "torch" else "torch.onnx"
    assert rows[onnx_key]["passed"] is False
    assert rows["onnx2torch"]["passed"] is True
    lines = conv.failures(trained, result)
    assert lines[0] == (f"conversion failed: {trained} -> {twin_name}: max |diff| "
                        f"{twin['max_abs_diff']:.3g} > 1e-05, {twin['flip_count']:,} flips, "
                        f"accuracy {twin['accuracy']:.4f} vs {result['accuracy']:.4f}")
    assert any("**FAIL**" in line and twin_name in line for line in conv.markdown({trained: result}))
    # The toolkit's verdict: exit 1, the broken conversion named, and where it starts.
    proc = run("validate", str(art), "--frameworks", trained, "--runtimes", "cpu",
               "--no-latency")
    assert proc.returncode == 1, proc.stderr[-3000:]
    named = [line for line in error_lines(proc) if line.startswith(
        f"conversion failed: {trained} -> {twin_name}: ")]
    assert named and f"twin.onnx: first divergence at {layer} " in named[0], error_lines(proc)


def test_a_missing_flatten_permutation_is_caught(twins, tmp_path, test_set):
    # The PyTorch weights labelled as if flattened NHWC: the Keras twin then copies dense1
    # without permuting its rows, the classic bug.
    art = _copy(twins, tmp_path)
    _plant_and_rebuild(art, "torch", "to_tf", flatten_order=np.array("HWC"))
    _assert_caught(art, "torch", "Keras twin", test_set, "fc1")


def test_a_transposed_conv_kernel_is_caught(twins, tmp_path, test_set):
    # Kernels with H and W swapped (e.g. OIHW -> HWIO done as transpose(3, 2, 1, 0)).
    art = _copy(twins, tmp_path)
    with np.load(art / "tf" / "weights.npz") as f:
        swapped = {k: np.ascontiguousarray(f[k].transpose(0, 1, 3, 2))
                   for k in ("conv1.kernel", "conv2.kernel")}
    _plant_and_rebuild(art, "tf", "to_torch", **swapped)
    _assert_caught(art, "tf", "PyTorch twin", test_set, "conv1")
