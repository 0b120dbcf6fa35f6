"""validate.runners: one contract test over every registered runner, for real on this machine
(onnxruntime CPU and CUDA, the float64 reference, onnxruntime-node, onnxruntime-web under
Node, a headless Chromium), and the web demo opened in that browser."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper

from train import data
from validate.timing.latency import TimingPlan
from validate.runners import RunnerFailed, RunnerUnavailable, runner_class, runner_keys
from validate.runners.browser import evaluate_page, shared_browser, write_web_demo

FRAMEWORKS = ("torch", "tf")
SUBSET = 512     # images compared with reference.npz
INVARIANCE = 256  # images run at batch 1 and at batch 256
# May be unavailable here (a CPU build of onnxruntime); every other runner must run.
MAY_BE_UNAVAILABLE = {"cuda"}


@pytest.fixture(scope="module")
def test_set(data_dir):
    images, labels = data.load_test(data_dir)
    return data.to_float(images[:SUBSET]), labels[:SUBSET]


def _tiny_model() -> bytes:
    """Not LeNet: six inputs of six element types, six outputs, dynamic batch."""
    kinds = [("a", T.FLOAT), ("b", T.DOUBLE), ("c", T.INT32), ("d", T.INT64), ("e", T.UINT8),
             ("f", T.BOOL)]
    nodes = [helper.make_node(op, inputs, [f"y{inputs[0]}"]) for op, inputs in
             [("Add", ["a", "a"]), ("Mul", ["b", "b"]), ("Add", ["c", "c"]), ("Add", ["d", "d"]),
              ("Identity", ["e"]), ("Not", ["f"])]]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(n, t, ["n", 3]) for n, t in kinds],
        [helper.make_tensor_value_info(f"y{n}", t, ["n", 3]) for n, t in kinds])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _unknown_op_model() -> bytes:
    """A graph with an operator no runtime has."""
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], "unknown",
        [helper.make_tensor_value_info("x", T.FLOAT, [1])],
        [helper.make_tensor_value_info("y", T.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.example", 1)],
                             ir_version=8).SerializeToString()


def _check_quick_models(cls, artifacts, images):
    """Probabilities within tolerance of reference.npz with the same top-1, batch invariance,
    bit-identical reruns and timings, on both quick models."""
    for fw in FRAMEWORKS:
        reference = np.load(artifacts / fw / "reference.npz")["probabilities"][:len(images)]
        with cls(artifacts / fw / "lenet5.onnx") as runner:
            assert runner.input_names == ["image"] and "probabilities" in runner.output_names
            probs = runner.probabilities(images)
            assert probs.shape == reference.shape
            diff = float(np.abs(probs - reference).max())
            assert diff <= cls.tolerance, f"{cls.name} {fw}: max |diff| {diff:.3g}"
            assert np.array_equal(probs.argmax(1), reference.argmax(1)), f"{cls.name} {fw}"

            feeds = {"image": images[:INVARIANCE]}
            one = runner.run(feeds, 1, ["probabilities"])["probabilities"]
            many = runner.run(feeds, INVARIANCE, ["probabilities"])["probabilities"]
            assert one.shape == many.shape == (INVARIANCE, 10)
            assert float(np.abs(one - many).max()) <= cls.tolerance, f"{cls.name} {fw} batch"
            if cls.provider != "cuda":  # on CPU (native or WebAssembly) reruns are exact
                again = runner.run(feeds, INVARIANCE, ["probabilities"])["probabilities"]
                assert np.array_equal(many, again), f"{cls.name} {fw}: rerun differs"

            plan = TimingPlan(warmup=2, min_runs=5, min_seconds=0.0, max_runs=5)
            for batch in (1, 32):
                times = runner.timings({"image": images[:batch]}, plan)
                assert len(times) == 5 and all(t > 0 for t in times), (cls.name, batch, times)


def _check_foreign_model(cls):
    """Any ONNX model: inputs and outputs by name, six element types, batching in chunks."""
    rng = np.random.default_rng(0)
    feeds = {"a": rng.random((5, 3), dtype=np.float32), "b": rng.random((5, 3)),
             "c": rng.integers(-99, 99, (5, 3), dtype=np.int32),
             "d": rng.integers(-2**40, 2**40, (5, 3)),  # past 2**53: no float detour
             "e": rng.integers(0, 256, (5, 3), dtype=np.uint8), "f": rng.random((5, 3)) > 0.5}
    want = {"ya": feeds["a"] * 2, "yb": feeds["b"] ** 2, "yc": feeds["c"] * 2,
            "yd": feeds["d"] * 2, "ye": feeds["e"], "yf": ~feeds["f"]}
    with cls(_tiny_model()) as runner:
        assert runner.input_names == list(feeds) and runner.output_names == list(want)
        for batch in (None, 2):  # 2: chunks of 2, 2 and 1 rows
            out = runner.run(feeds, batch)
            assert list(out) == list(want)
            for name, expected in want.items():
                got = out[name]
                # The float64 reference returns float64 where the graph had float32.
                wanted_dtype = np.float64 if cls.exact and expected.dtype == np.float32 \
                    else expected.dtype
                assert got.dtype == wanted_dtype and got.shape == expected.shape, (cls.name, name)
                if cls.narrows_wide_types and name == "yb":  # float64 computed in float32
                    assert np.allclose(got, expected, rtol=4e-7, atol=0), (cls.name, batch)
                    assert not np.array_equal(got, expected), f"{cls.name}: yb is exact"
                elif cls.narrows_wide_types and name == "yd":  # int64 computed in int32
                    assert not np.array_equal(got, expected), f"{cls.name}: yd is exact"
                else:
                    assert np.array_equal(got, expected), (cls.name, name, batch)
        picked = runner.run(feeds, None, ["yc"])
        assert list(picked) == ["yc"] and np.array_equal(picked["yc"], want["yc"])


def _check_failures(cls, tmp_path):
    """A model the runtime rejects is RunnerFailed with a one-line message."""
    broken = tmp_path / f"broken-{cls.key}.onnx"
    broken.write_bytes(b"this is not an ONNX model")
    for model in (_unknown_op_model(), broken):
        with pytest.raises(RunnerFailed) as err:
            with cls(model) as runner:
                runner.run({"x": np.ones(1, np.float32)})
        message = str(err.value)
        assert message and "\n" not in message, (cls.name, message)


@pytest.mark.parametrize("key", runner_keys())
def test_runner_contract(key, quick_artifacts, test_set, tmp_path):
    cls = runner_class(key)
    assert cls.key == key and cls.name and cls.description and cls.tolerance > 0
    reason = cls.availability()
    if reason is not None:
        assert isinstance(reason, str) and reason.strip() and "\n" not in reason
        assert key in MAY_BE_UNAVAILABLE, f"{cls.name} must run on this machine: {reason}"
        with pytest.raises(RunnerUnavailable):  # never a silent fallback
            with cls(quick_artifacts / "torch" / "lenet5.onnx"):
                pass
        return
    # One Chromium for all of this runner's models (it starts in ~2 s).
    with shared_browser() if key == "browser" else contextlib.nullcontext():
        _check_quick_models(cls, quick_artifacts, test_set[0])
        _check_foreign_model(cls)
        _check_failures(cls, tmp_path)


def test_every_javascript_runner_is_registered():
    assert {"node", "wasm", "browser"} <= set(runner_keys())
    assert list(runner_keys())[:3] == ["cpu", "cuda", "reference"]


def test_npm_lock_file_uses_only_the_npm_registry():
    import json

    from validate.runners.node import JS_DIR

    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    package = json.loads((JS_DIR / "package.json").read_text())
    for name, version in package["dependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} is not pinned exactly"
    resolved = [p["resolved"] for p in lock["packages"].values() if "resolved" in p]
    assert resolved and all(u.startswith("https://registry.npmjs.org/") for u in resolved)
    assert all(p.get("integrity", "").startswith("sha512-")
               for k, p in lock["packages"].items() if k)


def test_web_demo_classifies_test_images(artifacts_copy, data_dir):
    models = {fw: artifacts_copy / fw / "lenet5.onnx" for fw in FRAMEWORKS}
    images, labels = data.load_test(data_dir)
    web = write_web_demo(artifacts_copy, models, images, labels)
    assert web == artifacts_copy / "web" and (web / "index.html").is_file()
    # Served exactly as the page and the README say: python -m http.server -d ARTIFACTS.
    server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind",
                               "127.0.0.1", "-d", str(artifacts_copy)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = re.search(r"port (\d+)", server.stdout.readline()).group(1)
        result = evaluate_page(f"http://127.0.0.1:{port}/web/", "window.demoResult")
    finally:
        server.terminate()
        server.wait()
    assert "error" not in result, result
    indices = result["indices"]
    assert len(indices) == 20 and sorted(set(result["labels"])) == list(range(10))
    assert result["labels"] == labels[indices].tolist()
    for fw in FRAMEWORKS:
        reference = np.load(artifacts_copy / fw / "reference.npz")["probabilities"]
        shown = result["models"][fw]
        # The page's predictions are the model's: the same top-1 as the native reference.
        assert shown["predicted"] == reference[indices].argmax(1).tolist(), fw
        assert shown["correct"] == int((reference[indices].argmax(1) == labels[indices]).sum())


def _litter(home, tmp) -> list[str]:
    """What onnxruntime's telemetry leaves: files under ~/.cache/Microsoft, and `.ses` and
    mat-debug-PID.log (onnxruntime-node) in the temporary folder."""
    found = [str(p) for p in (home / ".cache").rglob("*")] if (home / ".cache").exists() else []
    return found + [p.name for p in tmp.iterdir() if p.name == ".ses"
                    or p.name.startswith("mat-debug-")]


def test_onnxruntime_telemetry_is_off_and_leaves_nothing(quick_artifacts, data_dir):
    from tests.conftest import ROOT

    # A short private folder: the validator's forkserver listens on a socket under TMPDIR, and
    # an AF_UNIX path holds at most 107 bytes (pytest-xdist's tmp_path is longer than that).
    base = Path(tempfile.mkdtemp(prefix="tel", dir="/tmp"))
    try:
        _telemetry_runs(quick_artifacts, data_dir, base, ROOT)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _telemetry_runs(quick_artifacts, data_dir, tmp_path, ROOT) -> None:
    model = str(quick_artifacts / "torch" / "lenet5.onnx")
    left = {}
    for setting in ("1", None, "0"):  # None: the toolkit's default; "0": the user opted in
        home, tmp = tmp_path / f"home{setting}", tmp_path / f"tmp{setting}"
        home.mkdir(), tmp.mkdir()
        # A bare environment: onnxruntime also keeps telemetry off when it sees a CI service's
        # variables (CI, GITHUB_ACTIONS, TF_BUILD, JENKINS_URL, ...), which would hide the
        # control below when this suite runs in CI.
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL") if k in os.environ}
        env |= {"HOME": str(home), "TMPDIR": str(tmp), "LENET5_NO_BOOTSTRAP": "1"}
        if setting is not None:
            env["ORT_DISABLE_TELEMETRY"] = setting
        proc = subprocess.run([sys.executable, "-m", "validate", model, "--runtimes", "cpu,node",
                               "--no-latency", "--data-dir", str(data_dir)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        left[setting] = _litter(home, tmp)
    assert left["1"] == [] and left[None] == [], left
    # The check can see the files: with telemetry on, both runtimes leave them.
    assert any(".ses" in p for p in left["0"]) and any("mat-debug-" in p for p in left["0"])


@pytest.mark.parametrize("pads, strides, auto_pad, group", [
    ([2, 2, 2, 2], [1, 1], "NOTSET", 1),   # LeNet's first convolution
    ([0, 0, 0, 0], [1, 1], "NOTSET", 1),   # its second
    ([1, 0, 2, 3], [2, 3], "NOTSET", 1),   # uneven pads, strides
    (None, [1, 1], "VALID", 1),
    (None, [1, 1], "SAME_UPPER", 1),       # left to onnx.reference
    ([1, 1, 1, 1], [1, 1], "NOTSET", 2),   # grouped: left to onnx.reference
])
def test_the_references_own_conv_and_pool_agree_with_onnx_reference(pads, strides, auto_pad,
                                                                     group):
    """The float64 reference's vectorised Conv and AveragePool against onnx.reference's own
    operators: the same sums in another order, so float64 rounding at most."""
    from onnx.reference import ReferenceEvaluator

    from validate.runners.reference import evaluator

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 13, 11))
    w = rng.standard_normal((6, 4 // group, 3, 5))
    attrs = {"auto_pad": auto_pad, "strides": strides, "group": group}
    if pads is not None:
        attrs["pads"] = pads
    d = T.DOUBLE
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs),
         helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("AveragePool", ["c"], ["q"], kernel_shape=[3, 2], strides=[1, 2])],
        "convpool", [helper.make_tensor_value_info("x", d, None)],
        [helper.make_tensor_value_info(n, d, None) for n in ("c", "p", "q")],
        [onnx.numpy_helper.from_array(w, "w"),
         onnx.numpy_helper.from_array(rng.standard_normal(6), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    ours = evaluator(model).run(None, {"x": x})
    theirs = ReferenceEvaluator(model).run(None, {"x": x})
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype == np.float64
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
