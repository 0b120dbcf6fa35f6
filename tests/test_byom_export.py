"""`python -m convert export MODEL_SPEC` (docs/byom.md): the model spec's errors, one line and
exit status 2 each, and real exports of models no one here wrote (tests/byom_models.py), each
checked on what it wrote: onnxruntime's outputs against the native reference, the layer map's
module names against the model, SHA256SUMS, the variants, the native model rebuilt.

The spec errors that need no framework are in the fast tier; everything that builds a model
runs a framework in a subprocess (one per process) and is `slow`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import error_lines, python, run
from train.core.fileio import read_npz, read_sha256sums, sha256_file
from train.core.errors import ToolkitError
from train.core.spec import load_spec, read_spec_json, with_flags

RTOL = 1e-4


def export(*args: str) -> subprocess.CompletedProcess:
    return run("convert", "export", *args, timeout=900)


def one_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The single stderr line of a refused export (exit 2), holding every word."""
    lines = error_lines(proc)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# -- the spec's errors (fast: no framework is imported) -------------------------------------

def test_factory_module_missing(tmp_path):
    one_line(export("no_such_pkg.models:net", "--out", str(tmp_path / "x")),
             "no module named 'no_such_pkg'")


def test_a_folder_that_is_not_an_earlier_export_is_never_replaced(tmp_path):
    """--out naming a folder of other files (a user's folder, LeNet-5's artifacts/torch):
    refused before anything runs, every file kept."""
    for name in ("notes", "torch"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / ("notes.txt" if name == "notes" else "model.pt")).write_text("keep")
        one_line(export("tests.byom_models:tiny_cnn", "--out", str(folder)), str(folder),
                 "not a model export", "name another --out")
        assert [p.read_text() for p in folder.iterdir()] == ["keep"]


def test_bad_toml_on_the_command_line(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text("factory = [")
    one_line(export(str(spec), "--out", str(tmp_path / "x")), str(spec), "not a valid TOML")


@pytest.mark.parametrize("text, words", [
    ('name = "x"\n', ("no `factory`",)),
    ('factory = "a.b:c"\nbatch = 3\n', ("unknown key batch",)),
    ('factory = "a.b:c"\n[[inputs]]\nname = "x"\nshape = [3, 28, 28]\n', ('"batch"',)),
    ('factory = "a.b:c"\n[[inputs]]\nlayout = "CHW"\nshape = ["batch", 3]\n', ("layout",)),
    ('factory = "a.b:c"\n[data]\ncount = 0\n', ("data.count",)),
    ('factory = "resnet18"\n', ("package.module:callable",)),
])
def test_bad_spec_file(tmp_path, text, words):
    """Each mistake in a spec file is one line naming the file and the key."""
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    with pytest.raises(ToolkitError) as caught:
        load_spec(str(spec))
    line = str(caught.value)
    assert "\n" not in line and str(spec) in line
    for word in words:
        assert word in line, line


def test_factory_callable_missing():
    from convert.byom import factory

    with pytest.raises(ToolkitError, match="has no 'no_such_factory'"):
        factory.resolve(load_spec("tests.byom_models:no_such_factory"))
    with pytest.raises(ToolkitError, match="package.module:callable"):
        load_spec("resnet18")


def test_flags_override_the_file(tmp_path):
    spec = tmp_path / "m.toml"
    spec.write_text('factory = "tests.byom_models:tiny_cnn"\ncheckpoint = "w.pt"\n'
                    '[data]\nsource = "x.npz"\ncount = 10\n')
    got = with_flags(load_spec(str(spec)), count=5, input_shape="3,32,32", layers="a, b",
                     seed=7, name="n")
    assert got.checkpoint == str(tmp_path / "w.pt")  # relative to the spec file
    assert got.data.source == str(tmp_path / "x.npz") and got.data.count == 5
    assert got.inputs[0].shape == ("batch", 3, 32, 32) and got.layers == ("a", "b")
    assert (got.seed, got.name) == (7, "n")


# -- errors that need the model built (slow) -------------------------------------------------

def _torch_snippet(code: str) -> None:
    proc = python("import torch\nfrom tests import byom_models\n" + code)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_checkpoint_errors(tmp_path):
    """A state_dict of another model (names its keys), a pickled model, a non-checkpoint."""
    other, pickled, junk = tmp_path / "other.pt", tmp_path / "pickled.pt", tmp_path / "junk.pt"
    _torch_snippet(f"torch.save(byom_models.two_heads().state_dict(), {str(other)!r})\n"
                   f"torch.save(byom_models.tiny_cnn(), {str(pickled)!r})\n")
    junk.write_bytes(b"not a checkpoint")
    out = str(tmp_path / "x")
    line = one_line(export("tests.byom_models:tiny_cnn", "--checkpoint", str(other),
                           "--out", out), "does not fit tiny_cnn", "missing: 0.weight")
    assert "unexpected: conv.weight" in line
    one_line(export("tests.byom_models:tiny_cnn", "--checkpoint", str(pickled), "--out", out),
             "pickled", "state_dict")
    one_line(export("tests.byom_models:tiny_cnn", "--checkpoint", str(junk), "--out", out),
             str(junk))


@pytest.mark.slow
def test_inputs_of_wrong_shape_or_dtype(tmp_path):
    wrong_shape, wrong_dtype = tmp_path / "shape.npy", tmp_path / "dtype.npz"
    np.save(wrong_shape, np.zeros((4, 3, 28, 28), np.float32))
    np.savez(wrong_dtype, input=np.zeros((4, 1, 28, 28), np.float64))
    out = str(tmp_path / "x")
    one_line(export("tests.byom_models:tiny_cnn", "--input-shape", "1,28,28", "--inputs",
                    str(wrong_shape), "--out", out), "float32 [N, 3, 28, 28]",
             "the model takes float32 [batch, 1, 28, 28]")
    one_line(export("tests.byom_models:tiny_cnn", "--input-shape", "1,28,28", "--inputs",
                    str(wrong_dtype), "--out", out), "float64")
    one_line(export("tests.byom_models:not_a_model", "--out", out), "neither")
    # Images of three channels for a model of one: the model's own error, in one line.
    one_line(export("tests.byom_models:tiny_cnn", "--input-shape", "3,28,28", "--count", "8",
                    "--out", out), "tests.byom_models:tiny_cnn: tiny_cnn failed on its inputs "
             "(input float32 [8, 3, 28, 28]): RuntimeError:", "to have 1 channels")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dtype.npz", "shape.npy"]  # no rest
    # A model of two inputs with nothing declared: which inputs, and how to give them.
    one_line(export("tests.byom_models:two_heads", "--out", out),
             "two_heads takes 2 inputs (image, tokens)", "[[inputs]]", "--inputs")
    one_line(export("torch", "--artifacts", out, "--count", "3"), "--count")  # LeNet's export


# -- real exports ------------------------------------------------------------------------------

def ort_outputs(folder: Path) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    feeds = read_npz(folder / "inputs.npz")
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def check_folder(folder: Path) -> dict:
    """What every export must hold: spec.json that reads back, ONNX outputs equal to the
    native reference, a layer map whose tensors exist, layers.npz for every mapped layer,
    SHA256SUMS over it all; returns spec.json."""
    doc = read_spec_json(folder)
    reference = read_npz(folder / "reference.npz")
    ours = ort_outputs(folder)
    assert sorted(ours) == sorted(o["name"] for o in doc["outputs"]) == sorted(reference)
    for name, want in reference.items():
        scale = max(float(np.abs(want).max()), 1e-12)
        assert float(np.abs(ours[name] - want).max()) / scale < RTOL, name
    model = onnx.load(str(folder / "model.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["model_spec"])["name"] == doc["name"]
    layer_map = json.loads(meta["layer_map"])
    assert layer_map["version"] == 2 and layer_map["layers"]
    tensors = {o for n in model.graph.node for o in n.output}
    layers = read_npz(folder / "layers.npz")
    for entry in layer_map["layers"]:
        assert entry["tensor"] in tensors
        assert f"layer/{entry['layer']}" in layers
    sums = read_sha256sums(folder / "SHA256SUMS")
    assert {"model.onnx", "spec.json", "inputs.npz", "reference.npz", doc["weights"]} <= set(sums)
    for name, digest in sums.items():
        assert sha256_file(folder / name) == digest, name
    assert doc["data"]["sha256"] == sums["inputs.npz"]
    return doc


def mapped(doc_folder: Path) -> list[str]:
    model = onnx.load(str(doc_folder / "model.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    return [e["layer"] for e in json.loads(meta["layer_map"])["layers"]]


@pytest.mark.slow
def test_tiny_cnn(tiny_cnn_export):
    tiny = tiny_cnn_export
    doc = check_folder(tiny)
    assert doc["framework"] == "torch" and doc["data"] == {**doc["data"], "count": 64,
                                                           "labels": True, "random": False}
    assert doc["inputs"][0]["shape"] == ["batch", 1, 28, 28]
    assert {"build", "onnx", "reference", "layers"} <= set(doc["export"]["seconds"])
    assert "1" in mapped(tiny)                      # the BatchNorm2d (the conv fused into it)
    assert "fused" in doc["unmapped_layers"]["0"]
    for precision in ("int8", "fp16"):
        assert doc["variants"][precision]["file"] == f"model.{precision}.onnx"
        meta = {p.key: p.value for p in onnx.load(str(tiny / f"model.{precision}.onnx"))
                .metadata_props}
        assert meta["precision"] == precision
        assert meta["source_sha256"] == sha256_file(tiny / "model.onnx")
    assert len(np.load(tiny / "labels.npy")) == 64


def native_vs_reference(folder: Path) -> tuple[str, float]:
    """load_native (the latency server's builder) on the folder's inputs: (framework, the
    largest difference from reference.npz)."""
    proc = python(f"""
import numpy as np
from pathlib import Path
from convert.byom.native import load_native
from train.core.fileio import read_npz
folder = Path({str(folder)!r})
framework, run = load_native(folder)
out = run(read_npz(folder / "inputs.npz"))
ref = read_npz(folder / "reference.npz")
print(framework, max(float(np.abs(out[k] - ref[k]).max()) for k in ref))
""")
    assert proc.returncode == 0, proc.stderr[-2000:]
    framework, diff = proc.stdout.split()[-2:]
    return framework, float(diff)


@pytest.mark.slow
def test_native_model_rebuilt(tiny_cnn_export):
    """load_native (the latency server's builder) gives the reference outputs again."""
    assert native_vs_reference(tiny_cnn_export) == ("torch", 0.0)


def same_reference(a: Path, b: Path) -> None:
    ours, theirs = read_npz(a / "reference.npz"), read_npz(b / "reference.npz")
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_failed_export_leaves_the_earlier_one_whole(tiny_cnn_export, tmp_path):
    """An export that fails half-way (the model refuses the inputs after they were read)
    over an earlier export: the folder keeps the earlier export, every file, and nothing of
    the failed one is left beside it."""
    tiny = tiny_cnn_export
    out = tmp_path / "model"
    shutil.copytree(tiny, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    one_line(export("tests.byom_models:tiny_cnn", "--input-shape", "3,28,28", "--count", "8",
                    "--out", str(out)), "failed on its inputs")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.slow
def test_checkpoint_is_loaded(tiny_cnn_export, tmp_path):
    """The exported weights.pt as a checkpoint, under another seed: the same model again."""
    tiny = tiny_cnn_export
    out = tmp_path / "again"
    proc = export("tests.byom_models:tiny_cnn", "--checkpoint", str(tiny / "weights.pt"),
                  "--seed", "5", "--count", "64", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    same_reference(tiny, out)
    assert read_spec_json(out)["checkpoint"]["sha256"] == sha256_file(tiny / "weights.pt")


def test_two_inputs_two_outputs(two_heads_export):
    """An image and int64 token ids in, logits and an embedding out, from a TOML spec (kwargs,
    a data file named relative to it) and a .npz of real images (labels kept)."""
    out = two_heads_export
    doc = check_folder(out)
    assert [i["name"] for i in doc["inputs"]] == ["image", "tokens"]
    assert [o["name"] for o in doc["outputs"]] == ["output_0", "output_1"]
    assert doc["data"]["count"] == 40 and doc["data"]["labels"]
    assert {"conv", "embed", "mix", "head"} <= set(mapped(out))


@pytest.mark.slow
def test_keras_batchnorm_residual(tmp_path):
    out = tmp_path / "keras"
    proc = export("tests.byom_models:keras_residual", "--out", str(out), "--count", "64")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = check_folder(out)
    assert doc["framework"] == "tf" and doc["weights"] == "weights.weights.h5"
    assert doc["inputs"][0] == {**doc["inputs"][0], "name": "image", "layout": "NHWC",
                                "shape": ["batch", 28, 28, 1]}
    assert {"stem_bn", "res_add", "res_relu", "classifier"} <= set(mapped(out))
    assert doc["variants"]["int8"]["file"] and doc["variants"]["fp16"]["file"]
    # The latency server's Keras model is a traced tf.function: the same outputs.
    framework, diff = native_vs_reference(out)
    assert framework == "tf" and diff < 1e-5
    again = tmp_path / "again"  # its weights file as a checkpoint, under another seed
    proc = export("tests.byom_models:keras_residual", "--checkpoint",
                  str(out / "weights.weights.h5"), "--seed", "3", "--count", "64",
                  "--out", str(again))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    same_reference(out, again)


@pytest.mark.slow
def test_torchvision_resnet18(tmp_path):
    out = tmp_path / "resnet18"
    proc = export("tests.byom_models:resnet18", "--input-shape", "3,32,32", "--count", "48",
                  "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = check_folder(out)
    assert doc["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    names = mapped(out)
    assert {"layer1.0.bn1", "layer3.1.bn2", "avgpool", "fc"} <= set(names)
    assert "fused" in doc["unmapped_layers"]["layer1.0.conv1"]
    inputs = read_npz(out / "inputs.npz")["input"]   # gray replicated to three channels
    assert np.array_equal(inputs[:, 0], inputs[:, 2])


@pytest.mark.slow
def test_torchvision_mobilenet_v3_small(tmp_path):
    out = tmp_path / "mnv3"
    proc = export("tests.byom_models:mobilenet_v3_small", "--input-shape", "3,64,64",
                  "--count", "32", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    check_folder(out)
    assert any(name.startswith("features.") for name in mapped(out))


@pytest.mark.slow
def test_keras_mobilenet_v2(tmp_path):
    out = tmp_path / "mnv2"
    proc = export("tests.byom_models:mobilenet_v2", "--count", "32", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = check_folder(out)
    assert doc["inputs"][0]["shape"] == ["batch", 32, 32, 3]
    assert {"block_2_depthwise", "block_16_project_BN", "predictions"} <= set(mapped(out))


def test_inputs_from_a_folder_of_images(tmp_path):
    """A folder of PNGs, one sub-folder per class: resized, pixel / 255, labels by folder."""
    from PIL import Image

    from convert.byom import inputs
    from train.core.spec import DataSpec, InputSpec

    for k, cls in enumerate("aabb"):
        (tmp_path / cls).mkdir(exist_ok=True)
        Image.fromarray(np.full((20, 20), 60 * k, np.uint8)).save(tmp_path / cls / f"{k}.png")
    signature = (InputSpec("image", "float32", ("batch", 3, 8, 8), "NCHW"),)
    got = inputs.read(DataSpec(str(tmp_path), 10, False), signature, 0)
    assert got.arrays["image"].shape == (4, 3, 8, 8) and got.labels.tolist() == [0, 0, 1, 1]
    assert np.allclose(got.arrays["image"][:, :, 0, 0], (60 * np.arange(4) / 255)[:, None])
    with pytest.raises(ToolkitError, match="the model takes float32 \\[batch, 1, 8, 8\\]"):
        inputs.check(got, (InputSpec("image", "float32", ("batch", 1, 8, 8), "NCHW"),))
