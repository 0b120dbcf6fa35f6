"""Layer diagnosis: the layer map recorded at export, and faults localized to their layer."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from train.core.errors import ArtifactError
from train.core.contract import LAYER_MAP_KEY, set_metadata
from tests.conftest import error_lines, python, run
from train import data
from convert.export.layermap import LayerMapError, verify_export
from train.core.layermap import DIAGNOSIS_IMAGES
from validate.diagnose import layers

FRAMEWORKS = ["torch", "tf"]
LAYERS = ["conv1", "pool1", "conv2", "pool2", "flatten", "fc1", "fc2", "fc3", "probabilities"]
WEIGHTED = ["conv1", "conv2", "fc1", "fc2", "fc3"]


def _load(folder):
    """The exported model and its reference arrays (64 diagnosis images' worth matter here)."""
    model = onnx.load(str(folder / "lenet5.onnx"))
    with np.load(folder / "reference.npz") as ref:
        reference = {k: ref[k] for k in ref.files}
    return model, reference


def _weights(model: onnx.ModelProto) -> dict[str, str]:
    """Layer name -> weight initializer, by node order (independent of the layer map)."""
    inits = {t.name for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    dense = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul") and n.input[1] in inits]
    return {**{f"conv{i}": n.input[1] for i, n in enumerate(convs, 1)},
            **{f"fc{i}": n.input[1] for i, n in enumerate(dense, 1)}}


def _plant(model: onnx.ModelProto, layer: str) -> bytes:
    """A copy of `model` with noise (0.1% of its spread) added to one layer's weights."""
    name = _weights(model)[layer]
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    tensor = next(t for t in copy.graph.initializer if t.name == name)
    w = numpy_helper.to_array(tensor)
    noise = np.random.default_rng(0).standard_normal(w.shape)
    tensor.CopyFrom(numpy_helper.from_array((w + 1e-3 * w.std() * noise).astype(w.dtype), name))
    return copy.SerializeToString()


def _assert_localized(result: dict, layer: str) -> None:
    """`layer` is the first divergence: every row before it passed, its own failed."""
    names = [r["layer"] for r in result["rows"]]
    k = names.index(layer)
    assert result["first_divergence"] == layer, result["message"]
    assert all(r["passed"] for r in result["rows"][:k])
    assert not result["rows"][k]["passed"] and result["rows"][k]["frac_over"] > 0
    assert result["message"].startswith(f"first divergence at {layer} (max |diff| ")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_export_records_the_layer_map_and_native_layers(quick_artifacts, data_dir, framework):
    model, ref = _load(quick_artifacts / framework)
    meta = {p.key: p.value for p in model.metadata_props}
    doc = json.loads(meta[LAYER_MAP_KEY])
    rows = doc["layers"]
    assert [r["layer"] for r in rows] == LAYERS and doc["images"] == DIAGNOSIS_IMAGES
    produced = {o for n in model.graph.node for o in n.output}
    assert all(r["tensor"] in produced for r in rows)
    native = "NCHW" if framework == "torch" else "NHWC"
    # Both exporters keep conv activations NCHW in the graph (tf2onnx moves Keras' NHWC convs
    # to NCHW); the Keras side's own arrays stay NHWC.
    assert [(r["layout"], r["native_layout"]) for r in rows[:4]] == [("NCHW", native)] * 4
    assert all(r["layout"] == r["native_layout"] == "flat" for r in rows[4:])
    # Each flatten lists values in its framework's order, in the graph as natively.
    order = "CHW" if framework == "torch" else "HWC"
    assert (rows[4]["order"], rows[4]["native_order"]) == (order, order)
    assert str(ref["layer_layout"]) == native
    n = DIAGNOSIS_IMAGES
    images = data.to_float(data.load_test(data_dir)[0][:n])
    assert np.array_equal(ref["layer_input"], images)
    assert np.array_equal(ref["layer_images"], np.arange(n))
    shapes = {name: ref[f"layer_{name}"].shape for name in LAYERS}
    side = 5 if framework == "torch" else 7  # Keras pads conv2 ("same"), PyTorch does not
    conv = {"conv1": (6, 28, 28), "pool1": (6, 14, 14), "conv2": (16, 2 * side, 2 * side),
            "pool2": (16, side, side)}
    for name, chw in conv.items():
        c, h, w = chw
        assert shapes[name] == ((n, c, h, w) if native == "NCHW" else (n, h, w, c))
    assert shapes["flatten"] == (n, 16 * side * side)
    assert [shapes[k] for k in ("fc1", "fc2", "fc3", "probabilities")] == [
        (n, 120), (n, 84), (n, 10), (n, 10)]
    # fc3 holds logits: their softmax is the recorded probabilities.
    logits = ref["layer_fc3"].astype(np.float64)
    soft = np.exp(logits - logits.max(1, keepdims=True))
    assert np.abs(soft / soft.sum(1, keepdims=True) - ref["layer_probabilities"]).max() < 1e-6
    assert np.abs(ref["layer_probabilities"] - ref["probabilities"][:n]).max() < 1e-6


@pytest.mark.parametrize("runner", ["cpu", "reference"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_healthy_models_are_within_tolerance_at_every_layer(quick_artifacts, framework, runner):
    folder = quick_artifacts / framework
    _, ref = _load(folder)
    result = layers.diagnose(folder / "lenet5.onnx", ref, runner)
    json.dumps(result, allow_nan=False)  # report.json material
    assert [r["layer"] for r in result["rows"]] == LAYERS
    assert result["first_divergence"] is None and all(r["passed"] for r in result["rows"])
    assert result["images"] == DIAGNOSIS_IMAGES and result["runner_key"] == runner
    # Float32 rounding only (about 1e-6 here): well inside the tolerance.
    assert max(r["rel_error"] for r in result["rows"]) < layers.TOLERANCE / 4
    assert all(r["frac_over"] == 0 for r in result["rows"])
    assert result["message"].startswith("every layer within tolerance")
    assert layers.failure_clause(result) == result["message"]


@pytest.mark.parametrize("layer", WEIGHTED)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_fault_planted_in_the_onnx_file_is_named_at_its_layer(quick_artifacts, framework,
                                                                  layer):
    model, ref = _load(quick_artifacts / framework)
    result = layers.diagnose(_plant(model, layer), ref, "cpu")
    _assert_localized(result, layer)


def test_the_float64_reference_runner_localizes_the_same_fault(quick_artifacts):
    model, ref = _load(quick_artifacts / "tf")
    result = layers.diagnose(_plant(model, "conv2"), ref, "reference")
    assert result["runner"] == "onnx-reference"
    _assert_localized(result, "conv2")


def test_failure_clause_and_table(quick_artifacts):
    model, ref = _load(quick_artifacts / "torch")
    result = layers.diagnose(_plant(model, "conv2"), ref, "cpu")
    clause = layers.failure_clause(result)
    assert re.fullmatch(r"first divergence at conv2 \(max \|diff\| [0-9.e-]+, relative "
                        r"[0-9.e-]+ > 1e-5; every layer before it within 1e-[5-9]\)", clause)
    lines = layers.markdown(result)
    assert clause in lines[0]
    table = [l for l in lines if l.startswith("| ") and not l.startswith("| layer")]
    assert [l.split(" | ")[0][2:] for l in table] == LAYERS
    verdicts = [l.rstrip(" |").rsplit("| ", 1)[1] for l in table]
    assert verdicts == ["ok", "ok", "**first divergence**"] + ["over"] * 6
    first = layers.diagnose(_plant(model, "conv1"), ref, "cpu")
    assert layers.failure_clause(first).endswith("; conv1 is the first layer)")


# The native side altered: one layer's weights scaled by 1.02 in a copy of the checkpoint, and
# its reference recorded by the exporter's own functions (the export's native-latency timing,
# tens of seconds, is irrelevant here and skipped).
_NATIVE_FAULT = {
    "torch": ("conv2", """
import torch
from convert.export import from_torch as export_torch
from convert.export import reference
from train import data
from train.torch_lenet import load_model, predict
model = load_model(SRC / "model.pt")
with torch.no_grad():
    model.features[3].weight.mul_(1.02)  # conv2
"""),
    "tf": ("fc1", """
from convert.export import from_tf as export_tf
from convert.export import reference
from train import data
from train.keras_lenet import load_model, predict
import keras
model = load_model(SRC / "model.keras")
fc1 = [l for l in model.layers if isinstance(l, keras.layers.Dense)][0]
fc1.kernel.assign(fc1.kernel * 1.02)
"""),
}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_fault_on_the_native_side_is_named_at_its_layer(quick_artifacts, tmp_path, framework):
    layer, alter = _NATIVE_FAULT[framework]
    side = "export_torch" if framework == "torch" else "export_tf"
    layout = "NCHW" if framework == "torch" else "NHWC"
    src = quick_artifacts / framework
    dest = tmp_path / framework
    dest.mkdir()
    code = (f"from pathlib import Path\nSRC, DEST = Path({str(src)!r}), Path({str(dest)!r})\n"
            + alter + f"""
images, labels = data.load_test()
x = data.to_float(images)
first = x[:{DIAGNOSIS_IMAGES}]
reference.write_reference(DEST, {framework!r}, predict(model, x), labels,
                       {side}.layer_outputs(model, first), first, {layout!r})
""")
    proc = python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.copy(src / "lenet5.onnx", dest / "lenet5.onnx")  # the original, healthy graph
    _, ref = _load(dest)
    result = layers.diagnose(dest / "lenet5.onnx", ref, "cpu")
    _assert_localized(result, layer)


def _as_nhwc(ref: dict) -> dict:
    """A PyTorch reference rewritten as Keras would record it: NHWC, flatten in HWC order."""
    out = dict(ref, layer_layout=np.array("NHWC"))
    for name in ("conv1", "pool1", "conv2", "pool2"):
        out[f"layer_{name}"] = ref[f"layer_{name}"].transpose(0, 2, 3, 1)
    n, c, h, w = ref["layer_pool2"].shape
    out["layer_flatten"] = ref["layer_flatten"].reshape(n, c, h, w).transpose(0, 2, 3, 1
                                                                             ).reshape(n, -1)
    return out


def test_a_reference_in_the_other_layout_is_compared_in_one_layout(quick_artifacts):
    # What a twin meets: a graph from one exporter, native layers from the other framework.
    model, ref = _load(quick_artifacts / "torch")
    nhwc = _as_nhwc(ref)
    healthy = layers.diagnose(model.SerializeToString(), nhwc)
    assert healthy["first_divergence"] is None, healthy["message"]
    flatten = next(r for r in healthy["rows"] if r["layer"] == "flatten")
    assert (flatten["layout"], flatten["native_layout"]) == ("flat (CHW)", "flat (HWC)")
    assert healthy["rows"][0]["native_layout"] == "NHWC"
    _assert_localized(layers.diagnose(_plant(model, "fc1"), nhwc), "fc1")
    unordered = dict(nhwc, layer_layout=np.array("NCHW"))  # the layout declared wrongly
    with pytest.raises(ArtifactError, match="does not belong to this model"):
        layers.diagnose(model.SerializeToString(), unordered)


def test_a_wrong_layer_map_fails_the_export_check(quick_artifacts):
    model, ref = _load(quick_artifacts / "torch")
    doc = json.loads({p.key: p.value for p in model.metadata_props}[LAYER_MAP_KEY])
    native = {name: ref[f"layer_{name}"] for name in LAYERS}
    assert verify_export(model, native, ref["layer_input"])  # the recorded map holds
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    doc["layers"][0]["tensor"] = conv.output[0]  # conv1 before its ReLU: a wrong definition
    set_metadata(model, LAYER_MAP_KEY, json.dumps(doc))
    with pytest.raises(LayerMapError, match=r"conv1 \(.*relative error"):
        verify_export(model, native, ref["layer_input"])
    doc["layers"][0].update(tensor=doc["layers"][1]["tensor"])  # pool1's tensor for conv1
    set_metadata(model, LAYER_MAP_KEY, json.dumps(doc))
    with pytest.raises(LayerMapError, match="layer conv1: ONNX tensor"):
        verify_export(model, native, ref["layer_input"])


def test_missing_map_or_layer_outputs_are_artifact_errors(quick_artifacts, tmp_path):
    model, ref = _load(quick_artifacts / "tf")
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.metadata_props[:]
    path = tmp_path / "old.onnx"
    path.write_bytes(bare.SerializeToString())
    with pytest.raises(ArtifactError, match=f"{path}: no 'layer_map' in metadata_props"):
        layers.diagnose(path, ref)
    old = {k: v for k, v in ref.items() if not k.startswith("layer_")}
    with pytest.raises(ArtifactError, match="reference.npz has no native layer outputs"):
        layers.diagnose(model.SerializeToString(), old)
    torch_ref = _load(quick_artifacts / "torch")[1]  # another model's reference
    with pytest.raises(ArtifactError, match="does not belong to this model"):
        layers.diagnose(model.SerializeToString(), torch_ref)


def test_a_parity_failure_names_its_first_divergent_layer(artifacts_copy):
    path = artifacts_copy / "tf" / "lenet5.onnx"
    path.write_bytes(_plant(onnx.load(str(path)), "conv2"))
    proc = run("validate", str(artifacts_copy), "--frameworks", "tf", "--runtimes",
               "cpu,reference", "--no-latency")
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("parity failed: tf (onnxruntime-cpu): "), lines
    assert "; first divergence at conv2 (max |diff| " in lines[0], lines
    report = json.loads((artifacts_copy / "report.json").read_text())
    assert report["models"]["tf"]["layers"]["first_divergence"] == "conv2"
    assert "## Layer by layer" in (artifacts_copy / "report.md").read_text()


def test_layers_on_demand_for_healthy_models(artifacts_copy):
    proc = run("validate", str(artifacts_copy), "--layers", "--runtimes", "cpu", "--no-latency")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((artifacts_copy / "report.json").read_text())
    md = (artifacts_copy / "report.md").read_text().split("## Layer by layer")[1]
    for framework in FRAMEWORKS:
        result = report["models"][framework]["layers"]
        assert result["first_divergence"] is None
        assert [r["layer"] for r in result["rows"]] == LAYERS
        assert all(r["passed"] for r in result["rows"])
    assert "**PyTorch**" in md and "**TensorFlow**" in md and "| conv1 |" in md


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_small_bias_shift_is_named_at_its_own_layer(quick_artifacts, framework):
    """A conv bias moved by 1e-4 of its largest value: its own layer stays under the limit,
    a later one goes over it; the earliest layer above healthy noise is named."""
    model, ref = _load(quick_artifacts / framework)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for layer, node in zip(("conv1", "conv2"), convs):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        tensor = next(t for t in copy.graph.initializer if t.name == node.input[2])
        b = numpy_helper.to_array(tensor)
        tensor.CopyFrom(numpy_helper.from_array((b + 1e-4 * np.abs(b).max()).astype(b.dtype),
                                                tensor.name))
        result = layers.diagnose(copy.SerializeToString(), ref, "cpu")
        assert result["first_divergence"] == layer, result["message"]
        assert result["first_over_limit"] is not None
        if result["first_over_limit"] != layer:
            assert "above a healthy export's noise" in result["message"], result["message"]
