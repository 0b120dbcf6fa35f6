"""`python -m convert export MODEL_SPEC`: a user's PyTorch or Keras model to a folder the
validator reads (docs/byom.md): model.onnx with its layer map, spec.json, the weights, the
real inputs and the native outputs on them, the layer outputs for diagnosis, the backend-test
folder, INT8/FP16 variants and SHA256SUMS. Each step is timed, and said on stdout as it runs.

The framework's own work is done by its side (torch_side, keras_side), imported only once the
factory has told which framework it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from convert.byom import factory, files, inputs as model_inputs, layermap
from train.core import contract
from train.core.errors import ToolkitError, first_line
from train.core.fileio import ensure_writable, sha256_file
from train.core.spec import BATCH, ModelSpec, write_spec_json
from validate.model.folder import MODEL, SPEC_FILE, is_spec_folder

DIAGNOSIS_INPUTS = 8     # inputs whose layer outputs are recorded (layers.npz)
REFERENCE_BATCH = 32     # inputs per native call while writing reference.npz
PROGRESS_EVERY = 5.0     # seconds between progress lines of a long step


class Clock:
    """Times the export's steps and says each on stdout (`[export NAME] ...`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[export {self.name}] {text}", flush=True)
        self._last = time.monotonic()

    def progress(self, text: str) -> None:
        """Say `text` if the last line is more than PROGRESS_EVERY seconds old."""
        if time.monotonic() - self._last > PROGRESS_EVERY:
            self.say(text)

    @contextlib.contextmanager
    def step(self, key: str, text: str) -> Iterator[None]:
        self.say(text)
        start = time.monotonic()
        yield
        self.seconds[key] = round(time.monotonic() - start, 3)
        self.say(f"{key}: {self.seconds[key]:.1f} s")


def make_side(framework: str, model, spec: ModelSpec):
    """The framework's side object (its module imported here, not before)."""
    if framework == "torch":
        from convert.byom.torch_side import TorchSide

        return TorchSide(model, spec)
    from convert.byom.keras_side import KerasSide

    return KerasSide(model, spec)


def _example(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Two inputs for tracing (one input would fix the batch axis at 1)."""
    return {k: v[:2] if len(v) > 1 else np.repeat(v[:1], 2, axis=0) for k, v in arrays.items()}


def _outputs_doc(first: dict[str, np.ndarray]) -> list[dict]:
    return [{"name": k, "dtype": str(v.dtype), "shape": [BATCH, *v.shape[1:]]}
            for k, v in first.items()]


def _write_data(folder: Path, data: model_inputs.Inputs) -> str:
    """inputs.npz and labels.npy (removed when there are none); the sha256 of inputs.npz."""
    files.write_npz(folder / "inputs.npz", data.arrays)
    labels = folder / "labels.npy"
    if data.labels is not None:
        files.write_npy(labels, data.labels.astype(np.int64))
    else:
        labels.unlink(missing_ok=True)
    return sha256_file(folder / "inputs.npz")


def _parity(onnx_out: dict[str, np.ndarray], native: dict[str, np.ndarray]) -> float:
    """Largest relative error of the ONNX outputs against the native ones."""
    return max(layermap.relative_error(onnx_out[k], native[k]) for k in native)


def _layers(side, proto, spec: ModelSpec, diag: dict[str, np.ndarray], clock: Clock):
    """Native layer outputs on the diagnosis inputs, the map found and stored in `proto`."""
    names = list(spec.layers) if spec.layers is not None else side.default_layers()
    native, reasons = side.layer_outputs(diag, names)
    found = layermap.find(proto, diag, names, native, reasons, side.candidates,
                          side.native_layout)
    layermap.store(proto, found.layers, len(next(iter(diag.values()))))
    clock.say(f"layer map: {len(found.layers)} of {len(names)} layers mapped"
              + (f", {len(found.unmapped)} unmapped (spec.json)" if found.unmapped else ""))
    return found, native


def _variants(folder: Path, arrays: dict[str, np.ndarray], clock: Clock) -> dict:
    """model.int8.onnx and model.fp16.onnx, each made or its reason recorded."""
    from convert.byom import variants

    made = {}
    for precision in files.VARIANTS:
        dest = folder / f"model.{precision}.onnx"
        start = time.monotonic()
        try:
            with clock.step(precision, f"making the {precision.upper()} variant"):
                if precision == "int8":
                    variants.int8(folder / "model.onnx", dest, arrays)
                else:
                    variants.fp16(folder / "model.onnx", dest)
            made[precision] = {"file": dest.name, "seconds": clock.seconds[precision]}
        except Exception as exc:  # a converter that cannot handle the model: recorded
            dest.unlink(missing_ok=True)
            text = str(exc).strip().splitlines()
            reason = f"{type(exc).__name__}: {text[0][:300] if text else ''}"
            made[precision] = {"file": None, "reason": reason,
                               "seconds": round(time.monotonic() - start, 3)}
            clock.say(f"no {precision.upper()} variant: {reason}")
    return made


def _spec_doc(spec: ModelSpec, side, signature, outputs: list[dict], data, data_sha: str
              ) -> dict:
    """spec.json's content but the export record (docs/byom.md)."""
    checkpoint = None
    if spec.checkpoint:
        path = Path(spec.checkpoint).resolve()
        checkpoint = {"file": str(path), "sha256": sha256_file(path)}
    return {
        "name": spec.name, "framework": side.framework, "factory": spec.factory,
        "kwargs": spec.kwargs, "seed": spec.seed, "checkpoint": checkpoint,
        "inputs": [s.as_json() for s in signature], "outputs": outputs,
        "data": {"source": data.source, "count": data.count, "random": spec.data.random,
                 "sha256": data_sha, "labels": data.labels is not None},
        "weights": side.weights_file,
    }


def _metadata(proto, doc: dict, side, versions: dict) -> None:
    for key, value in {"model_spec": json.dumps(doc, sort_keys=True),
                       "source_framework": side.framework, "exporter": side.exporter,
                       "versions": json.dumps(versions, sort_keys=True)}.items():
        contract.set_metadata(proto, key, value)


def _users_model(spec: ModelSpec, run):
    """`run` with a failure inside the user's model (its forward or call raising on the
    inputs) as one line naming the model and the framework's own reason, exit 2."""
    def call(feeds):
        try:
            return run(feeds)
        except ToolkitError:
            raise
        except Exception as exc:  # the model's code, not the toolkit's: say what it said
            shapes = ", ".join(f"{k} {v.dtype} {list(v.shape)}" for k, v in feeds.items())
            raise ToolkitError(f"{spec.origin}: {spec.name} failed on its inputs ({shapes}): "
                               f"{first_line(exc)}") from None
    return call


def export_model(spec: ModelSpec, out: Path | None = None, data_dir: str | None = None,
                 threads: int | None = None) -> Path:
    """Export `spec`'s model to OUT (default artifacts/NAME); return the folder."""
    clock = Clock(spec.name)
    final = Path(out) if out is not None else Path("artifacts") / spec.name
    if final.exists() and not final.is_dir():
        raise ToolkitError(f"{final}: exists and is not a folder")
    if final.is_dir() and any(final.iterdir()) and not is_spec_folder(final):
        # An export replaces its folder whole: never a folder of something else.
        raise ToolkitError(f"{final}: holds files that are not a model export (no {SPEC_FILE} "
                           f"beside {MODEL}); the export would replace them: name another --out")
    factory.resolve(spec)  # a factory that does not exist: its one line comes first
    with clock.step("build", f"building {spec.factory} (seed {spec.seed})"):
        framework, model = factory.build(spec, threads)
        side = make_side(framework, model, spec)
        if spec.checkpoint:
            side.load_checkpoint(Path(spec.checkpoint))
    signature = side.signature(spec.inputs, model_inputs.file_signature(spec.data))
    with clock.step("inputs", f"reading {spec.data.count} inputs from "
                              f"{'random' if spec.data.random else spec.data.source}"):
        data = model_inputs.read(spec.data, signature, spec.seed, data_dir)
    # Written beside the target and moved into place whole: a failure half-way (an exporter
    # that cannot convert an op, a full disk, Ctrl-C) leaves the folder as it was.
    folder = final.parent / f".{final.name}.partial-{os.getpid()}"
    ensure_writable(final.parent)  # an unwritable place: the one line names it, not `folder`
    try:
        ensure_writable(folder)
        doc = _write_export(spec, side, signature, data, folder, clock)
        _publish(folder, final)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    clock.say(f"wrote {final} in {doc['export']['seconds']['total']:.1f} s")
    return final


def _publish(stage: Path, final: Path) -> None:
    """Put the finished STAGE folder where FINAL is, replacing an earlier export whole."""
    if not final.exists():
        os.replace(stage, final)
        return
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    os.replace(final, old)
    try:
        os.replace(stage, final)
    except OSError:
        os.replace(old, final)  # put the earlier export back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_export(spec: ModelSpec, side, signature, data, folder: Path, clock: "Clock") -> dict:
    """Every file of the export into FOLDER; returns spec.json's document."""
    import onnx

    data_sha = _write_data(folder, data)
    with clock.step("reference", f"native outputs on {data.count} inputs"):
        first = files.write_outputs(
            folder / "reference.npz", _users_model(spec, side.run), data.arrays,
            REFERENCE_BATCH, lambda done: clock.progress(f"native outputs: {done}/{data.count}"))
    with clock.step("onnx", f"exporting with {side.exporter}"):
        proto = side.to_onnx(signature, _example(data.arrays))
    diag = {k: v[:DIAGNOSIS_INPUTS] for k, v in data.arrays.items()}
    with clock.step("layers", "mapping layers to ONNX tensors"):
        found, native = _layers(side, proto, spec, diag, clock)
        native_out = side.run(diag)
        parity = _parity(found.outputs, native_out)
    clock.say(f"onnxruntime vs native on {len(next(iter(diag.values())))} inputs: "
              f"relative error {parity:.2g}")
    files.write_npz(folder / "layers.npz", {
        **{f"layer/{e['layer']}": native[e["layer"]] for e in found.layers},
        "index": np.arange(len(next(iter(diag.values()))), dtype=np.int64)})
    files.write_test_data_set(folder / "test_data_set_0", diag, native_out)
    side.save_weights(folder / side.weights_file)
    doc = _spec_doc(spec, side, signature, _outputs_doc(first), data, data_sha)
    doc["unmapped_layers"] = found.unmapped
    versions = side.versions()
    _metadata(proto, doc, side, versions)
    onnx.checker.check_model(proto, full_check=True)
    contract.save(proto, folder / "model.onnx")
    doc["variants"] = _variants(folder, data.arrays, clock)
    doc["export"] = {"seconds": {**clock.seconds, "total": round(sum(clock.seconds.values()), 3)},
                     "versions": versions, "exporter": side.exporter,
                     "diagnosis_inputs": len(next(iter(diag.values()))),
                     "check": {"inputs": len(next(iter(diag.values()))),
                               "max_relative_error": parity}}
    write_spec_json(folder, doc)
    files.refresh_sums(folder)
    return doc
