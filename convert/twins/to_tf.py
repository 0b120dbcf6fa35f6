"""TensorFlow side of the conversion check: PyTorch-trained weights in a Keras twin, exported with
tf2onnx; and every lenet5.onnx brought back into TensorFlow with onnx2tf (SavedModel, and its
float32 TFLite file run in the LiteRT interpreter).

Imports tensorflow/keras/tf2onnx only, inside the functions that need them (never torch).
Weights arrive as the framework-free canonical file (train.core.weights). onnx2tf runs in a child
process of its own: on import it switches tf.keras to the legacy tf_keras
(TF_USE_LEGACY_KERAS=1) and on some failures it calls sys.exit, neither of which may reach the
process that holds the Keras 3 twin.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from convert.twins import common
from train.core.errors import first_line as _first_line
from train.core import weights as cw
from train.core.fileio import sha256_file
from train import data
from validate.compare.conversion import (CONVERSION, ONNX2TF_DIR, ONNX2TF_FILE, TFLITE_FILE,
                                 write_probabilities, write_status)
from train.quiet import tensorflow_environment

tensorflow_environment()  # before TF is imported: oneDNN kernels on, C++ logging at errors

FRAMEWORK = "tf"
ONNX2TF_PIN = "onnx2tf==1.29.24"
# onnx2tf 1.29 pins tensorflow 2.19 and numpy 1.26; installed without its pins, with only the
# modules it imports, it keeps this stack (tensorflow 2.21, numpy 2) intact.
ONNX2TF_INSTALL = (f"pip install --no-deps {ONNX2TF_PIN} && pip install tf-keras==2.21.0 "
                   "sng4onnx==2.0.1 onnx-graphsurgeon==0.6.1 ai-edge-litert==2.3.0")
BATCH = 1000


def _log(msg: str) -> None:
    print(f"[tf] {msg}", flush=True)


def build_twin(weights: cw.Weights):
    """The Keras twin of canonical weights (NHWC input, probabilities out): every layout
    difference converted here."""
    import keras

    arch = weights.architecture
    layers = keras.layers
    p1, p2 = ("same" if p == 2 else "valid" for p in arch.conv_padding)
    model = keras.Sequential([
        keras.Input((28, 28, 1), name="image"),
        layers.Conv2D(6, 5, padding=p1, activation="relu", name="conv1"),
        layers.AveragePooling2D(2),
        layers.Conv2D(16, 5, padding=p2, activation="relu", name="conv2"),
        layers.AveragePooling2D(2),
        layers.Flatten(),
        layers.Dense(120, activation="relu", name="dense1"),
        layers.Dense(84, activation="relu", name="dense2"),
        layers.Dense(10, name="dense3"),  # logits, then softmax: the same for either source
        layers.Softmax(),
    ], name="lenet5_twin")
    for name in ("conv1", "conv2"):
        model.get_layer(name).set_weights([cw.oihw_to_hwio(weights[f"{name}.kernel"]),
                                           weights[f"{name}.bias"]])
    for name in ("dense1", "dense2", "dense3"):
        kernel = weights[f"{name}.kernel"]
        if name == "dense1":
            # Flatten on NHWC gives HWC order; a PyTorch source flattened NCHW (CHW).
            kernel = cw.reorder_flatten(kernel, arch.feature_shape, arch.flatten_order, "HWC")
        model.get_layer(name).set_weights([np.ascontiguousarray(kernel.T),  # -> (in, out)
                                           weights[f"{name}.bias"]])
    return model


def twin_history(history: dict, weights_sha: str, arch: cw.Architecture, model) -> dict:
    """The trained model's history, re-described for its Keras twin (ONNX metadata)."""
    p1, p2 = ("same" if p == 2 else "valid" for p in arch.conv_padding)
    return {**history, "parameters": model.count_params(), "architecture": (
        f"Keras twin of the {arch.source} LeNet-5: Conv2D(6, 5, {p1}) ReLU AvgPool2, "
        f"Conv2D(16, 5, {p2}) ReLU AvgPool2, Flatten, Dense 120 ReLU, 84 ReLU, 10, softmax; "
        f"weights.npz sha256 {weights_sha}")}


def make_twin(artifacts: Path, source: str, images: np.ndarray) -> float:
    """ARTIFACTS/SOURCE/weights.npz -> Keras twin -> twin.onnx (tf2onnx), twin_native.npz."""
    import tensorflow as tf

    from convert.export.from_tf import to_onnx
    from train.keras_lenet import predict

    return common.make_twin(artifacts, source, images, build=build_twin, predict=predict,
                            describe=twin_history, to_onnx=to_onnx,
                            runs_in=f"tensorflow {tf.__version__}",
                            made_by="Keras twin (weights.npz)")


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move a finished folder into place; the old one goes only once the new one is there."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it 0700
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def _run_batches(fn, images: np.ndarray) -> np.ndarray:
    return np.concatenate([fn(images[i:i + BATCH]) for i in range(0, len(images), BATCH)])


def _tflite_interpreter(path: Path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # older stacks: the interpreter inside TensorFlow
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=str(path))


def run_tflite(path: Path, images: np.ndarray) -> np.ndarray:
    """A .tflite file on IMAGES (float32 NCHW) in the LiteRT interpreter, batch by batch."""
    interpreter = _tflite_interpreter(path)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], [BATCH, 1, 28, 28])
    interpreter.allocate_tensors()
    out = interpreter.get_output_details()[0]

    def run(x: np.ndarray) -> np.ndarray:
        if len(x) != BATCH:
            interpreter.resize_tensor_input(inp["index"], list(x.shape))
            interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()

    return _run_batches(run, images)


def onnx2tf_roundtrip(artifacts: Path, framework: str, images: np.ndarray
                      ) -> tuple[float, str]:
    """ARTIFACTS/FRAMEWORK/lenet5.onnx -> onnx2tf -> SavedModel and float32 TFLite, both run on
    IMAGES. Call only in the onnx2tf child process. Returns (seconds, why it failed or "")."""
    import onnx2tf
    import tensorflow as tf

    start = time.perf_counter()
    path = artifacts / framework / "lenet5.onnx"
    conversion = artifacts / framework / CONVERSION
    conversion.mkdir(parents=True, exist_ok=True)
    onnx_sha = sha256_file(path)
    made_by = f"onnx2tf {onnx2tf.__version__}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{ONNX2TF_DIR}.", dir=conversion))
    scratch = Path(tempfile.mkdtemp(prefix=".onnx2tf-input.", dir=conversion))
    log = io.StringIO()
    try:
        # onnx2tf rewrites its input file in place (it names every node with sng4onnx): give
        # it a copy, never the exported lenet5.onnx.
        source = scratch / path.name
        shutil.copyfile(path, source)
        # onnx2tf prints its own progress; keep it for a failure's reason, off the CLI.
        with contextlib.redirect_stdout(log):
            keras_model = onnx2tf.convert(
                input_onnx_file_path=str(source), output_folder_path=str(tmp),
                keep_ncw_or_nchw_or_ncdhw_input_names=["image"],  # keep the NCHW contract
                not_use_onnxsim=True, non_verbose=True, verbosity="error")
        if keras_model is None:
            raise RuntimeError("onnx2tf returned no model")
        # The SavedModel as a deployer loads it from disk, not the object in memory.
        serve = tf.saved_model.load(str(tmp)).signatures["serving_default"]
        saved = _run_batches(lambda x: serve(image=tf.constant(x))["probabilities"].numpy(),
                             images)
        seconds = time.perf_counter() - start
        tflite_path = tmp / f"{path.stem}_float32.tflite"
        tflite = run_tflite(tflite_path, images)
        (tmp / f"{path.stem}_float16.tflite").unlink(missing_ok=True)  # not validated here
    except (Exception, SystemExit) as exc:
        tail = [l for l in log.getvalue().splitlines() if l.strip()][-1:]
        reason = _first_line(exc) + (f" ({tail[0][:200]})" if tail else "")
        for name in (ONNX2TF_FILE, TFLITE_FILE):
            write_status(conversion / name, f"failed: {made_by}: {reason}",
                         source_sha256=onnx_sha)
        shutil.rmtree(tmp, ignore_errors=True)
        # The previous run's SavedModel and .tflite are not this model's: not left beside it.
        shutil.rmtree(conversion / ONNX2TF_DIR, ignore_errors=True)
        return time.perf_counter() - start, reason
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _replace_dir(tmp, conversion / ONNX2TF_DIR)
    write_probabilities(conversion / ONNX2TF_FILE, saved, runs_in=f"tensorflow {tf.__version__}",
                        made_by=f"{made_by} (SavedModel)", source_sha256=onnx_sha,
                        seconds=seconds)
    write_probabilities(conversion / TFLITE_FILE, tflite, runs_in="LiteRT interpreter",
                        made_by=f"{made_by} (float32 .tflite)", source_sha256=onnx_sha,
                        seconds=time.perf_counter() - start)
    return time.perf_counter() - start, ""


def roundtrip_child(artifacts: Path, data_dir: str | None) -> int:
    """The onnx2tf child: every lenet5.onnx not made already (common.pending) through
    onnx2tf; unavailable rows say why."""
    present = common.pending(artifacts, FRAMEWORK)[1]
    try:
        import onnx2tf  # noqa: F401  (first: it sets TF_USE_LEGACY_KERAS before TF loads)
    except Exception as exc:
        reason = (f"unavailable: onnx2tf cannot be imported ({_first_line(exc)}); "
                  f"{ONNX2TF_INSTALL}")
        for framework in present:
            sha = sha256_file(artifacts / framework / "lenet5.onnx")
            for name in (ONNX2TF_FILE, TFLITE_FILE):
                write_status(artifacts / framework / CONVERSION / name, reason,
                             source_sha256=sha)
        _log(reason)
        return 0
    images = data.to_float(data.load_test(data_dir)[0])
    for framework in present:
        seconds, failed = onnx2tf_roundtrip(artifacts, framework, images)
        if failed:
            _log(f"onnx2tf: {framework}/lenet5.onnx -> SavedModel + TFLite: failed: {failed} "
                 f"(recorded in {ONNX2TF_FILE} and {TFLITE_FILE})")
            continue
        _log(f"onnx2tf: {framework}/lenet5.onnx -> SavedModel + TFLite: wrote "
             f"{artifacts / framework / CONVERSION / ONNX2TF_DIR}, {ONNX2TF_FILE} and "
             f"{TFLITE_FILE} ({seconds:.1f} s)")
    return 0


def _roundtrips_in_child(artifacts: Path, data_dir: str | None, trips: list[str]) -> None:
    cmd = [sys.executable, "-m", "convert", "twins", "tf", "--artifacts", str(artifacts),
           "--roundtrip-child"]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    started = time.time()
    proc = subprocess.run(cmd, stdout=None, stderr=subprocess.PIPE, text=True)
    if proc.returncode == 0:
        return
    # A crash in the child (a segfault, a bug): the rows it did not write say so.
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    reason = f"failed: onnx2tf child process exited {proc.returncode}" + (
        f" ({lines[-1][:200]})" if lines else "")
    for framework in trips:
        for name in (ONNX2TF_FILE, TFLITE_FILE):
            out = artifacts / framework / CONVERSION / name
            if not out.is_file() or out.stat().st_mtime < started:
                write_status(out, reason, source_sha256=sha256_file(
                    artifacts / framework / "lenet5.onnx"))
    _log(reason)


def run(artifacts: Path, data_dir: str | None = None, quick: bool = False) -> dict[str, float]:
    """Everything that needs TF: the Keras twin of each PyTorch-trained model, and the onnx2tf
    round trip of every lenet5.onnx (in a child), those not made already from the same files
    (common.pending). Returns seconds per stage.

    `quick` changes nothing: every conversion runs on all 10,000 test images, in seconds.
    """
    twins, trips = common.pending(artifacts, FRAMEWORK)
    if kept := common.up_to_date_line(artifacts, FRAMEWORK, twins, trips):
        _log(kept)
    images = data.to_float(data.load_test(data_dir)[0])
    times = common.make_twins(artifacts, twins, FRAMEWORK, images, make_twin, "Keras twin",
                              "tf2onnx", _log)
    if trips:
        _log(f"onnx2tf round trips ({', '.join(f'{f}/lenet5.onnx' for f in trips)}) in a child "
             "process")
        start = time.perf_counter()
        _roundtrips_in_child(artifacts, data_dir, trips)
        times["onnx2tf + TFLite (child process)"] = time.perf_counter() - start
    return times
