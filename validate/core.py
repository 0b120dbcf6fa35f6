"""The validation run: load each ONNX file and its reference, measure, collect the results."""

from __future__ import annotations

import json
import os
import platform
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from convert.errors import ArtifactError
from convert.fileio import sha256_file
from convert.native import read_history
from convert.onnx_utils import (INPUT_NAME, INPUT_SHAPE, OUTPUT_NAME, OUTPUT_SHAPE,
                                REQUIRED_METADATA)
from train import data
from validate import parity as par
from validate.latency import BATCH_SIZES, measure, thread_counts
from validate.runners import CPU, CUDA, OnnxRunner, ProviderUnavailable, cuda_status

SCHEMA_VERSION = 1


def load_reference(path: Path) -> dict:
    """Read reference.npz, checking what validation relies on."""
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; run `python -m convert export "
                            f"{path.parent.name}` first")
    try:
        with np.load(path, allow_pickle=False) as npz:
            ref = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ArtifactError(f"{path}: not a readable .npz file ({exc})") from None
    for key in ("probabilities", "labels", "test_images_sha256"):
        if key not in ref:
            raise ArtifactError(f"{path}: no '{key}' array; export again")
    if ref["probabilities"].shape != (10000, 10) or ref["labels"].shape != (10000,):
        raise ArtifactError(f"{path}: probabilities {ref['probabilities'].shape} / labels "
                            f"{ref['labels'].shape}, expected (10000, 10) / (10000,)")
    try:
        ref["native_latency"] = json.loads(str(ref.get("native_latency", "[]")))
    except ValueError as exc:
        raise ArtifactError(f"{path}: its native_latency is not JSON ({exc})") from None
    if str(ref["test_images_sha256"]) != data.FILES["t10k-images-idx3-ubyte.gz"]:
        raise ArtifactError(f"{path}: made from a different test set (sha256 "
                            f"{str(ref['test_images_sha256'])[:16]}…)")
    return ref


def load_onnx(path: Path) -> onnx.ModelProto:
    """Read and check an ONNX file against the I/O contract."""
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; run `python -m convert export "
                            f"{path.parent.name}` first")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # protobuf decode errors, checker errors: the file is at fault
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{path}: not a valid ONNX model ({reason[:200]})") from None
    inputs = {i.name: _signature(i) for i in model.graph.input}
    outputs = {o.name: _signature(o) for o in model.graph.output}
    want_in = (onnx.TensorProto.FLOAT, INPUT_SHAPE)
    want_out = (onnx.TensorProto.FLOAT, OUTPUT_SHAPE)
    if inputs != {INPUT_NAME: want_in} or outputs.get(OUTPUT_NAME) != want_out:
        raise ArtifactError(
            f"{path}: breaks the I/O contract (inputs {_describe(inputs)}, outputs "
            f"{_describe(outputs)}; expected input {INPUT_NAME} float32 {list(INPUT_SHAPE)} and "
            f"output {OUTPUT_NAME} float32 {list(OUTPUT_SHAPE)})")
    return model


def _signature(value: onnx.ValueInfoProto) -> tuple[int, tuple]:
    """(element type, shape with symbolic dims as their names) of a graph input or output."""
    t = value.type.tensor_type
    return t.elem_type, tuple(d.dim_param or d.dim_value for d in t.shape.dim)


def _describe(sigs: dict) -> str:
    return ", ".join(f"{name} {onnx.helper.tensor_dtype_to_np_dtype(et) if et else '?'} "
                     f"{list(shape)}" for name, (et, shape) in sigs.items())


def model_facts(path: Path, model: onnx.ModelProto) -> dict:
    """File size, parameters, opset, digest, producer."""
    opset = next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), None)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer
                 if t.data_type == onnx.TensorProto.FLOAT)
    meta = {p.key: p.value for p in model.metadata_props}
    return {"file": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path),
            "opset": opset, "parameters": params,
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "metadata": meta,
            "missing_metadata": [k for k in REQUIRED_METADATA if k not in meta]}


def _latency(runner: OnnxRunner, images: np.ndarray, quick: bool) -> list[dict]:
    out = []
    for batch in BATCH_SIZES:
        x = np.ascontiguousarray(images[:batch])
        lat = measure(lambda: runner.run(x), runtime="onnxruntime", provider=runner.provider,
                      batch_size=batch, threads=runner.threads, quick=quick)
        out.append(asdict(lat))
    return out


def validate_model(folder: Path, test_images: np.ndarray, tol: par.Tolerances,
                   quick: bool) -> dict:
    """Everything the report holds about one model."""
    path = folder / "lenet5.onnx"
    model = load_onnx(path)
    ref = load_reference(folder / "reference.npz")
    labels, reference = ref["labels"], ref["probabilities"]
    result: dict = {"facts": model_facts(path, model)}
    if (folder / "history.json").is_file():  # optional: a deployer may hold only the ONNX side
        h = read_history(folder)
        result["training"] = {k: h.get(k) for k in (
            "architecture", "parameters", "recipe", "seconds", "images_per_second",
            "test_accuracy", "versions")} | {"epochs": len(h.get("epochs", []))}

    with OnnxRunner(path, CPU) as runner:
        probs = runner.run(test_images)
    cpu = par.compare(probs, reference, labels, CPU, tol.atol, tol.min_agreement)
    result["parity"] = asdict(cpu)
    result["accuracy"] = {
        "native": cpu.accuracy_native, "onnxruntime": cpu.accuracy_onnxruntime,
        "per_class": {"native": par.per_class_accuracy(reference, labels),
                      "onnxruntime": par.per_class_accuracy(probs, labels)},
    }
    result["predictions"] = probs.argmax(1)  # for the cross-framework section; not serialised

    latency = list(ref["native_latency"])
    for threads in thread_counts():
        with OnnxRunner(path, CPU, threads) as runner:
            latency += _latency(runner, test_images, quick)

    status = cuda_status()
    if status.available:
        try:
            with OnnxRunner(path, CUDA, 1) as runner:
                cuda = par.compare(runner.run(test_images), reference, labels, CUDA,
                                   tol.cuda_atol, tol.min_agreement)
                result["parity_cuda"] = asdict(cuda)
                latency += _latency(runner, test_images, quick)
        except ProviderUnavailable as exc:
            result["parity_cuda"] = {"status": "unavailable", "reason": str(exc)}
    else:
        result["parity_cuda"] = {"status": "unavailable", "reason": status.reason}
    result["latency"] = latency
    passed = (cpu.passed and result["parity_cuda"].get("passed", True)
              and not result["facts"]["missing_metadata"])
    result["passed"] = bool(passed)
    return result


def environment() -> dict:
    """Versions, CPU and providers, for the report."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "numpy": np.__version__,
            "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "providers_available": ort.get_available_providers(),
            "cuda": asdict(cuda_status())}


def validate(artifacts: Path, frameworks: tuple[str, ...], tol: par.Tolerances,
             quick: bool = False, data_dir: str | None = None) -> dict:
    """Validate each framework's ONNX model; return the report as a dict."""
    if not artifacts.is_dir():
        raise ArtifactError(f"{artifacts}: no artifacts folder; run `python -m convert all` "
                            "first")
    test_images = data.to_float(data.load_test(data_dir)[0])
    models = {}
    for fw in frameworks:
        print(f"[validate] {fw}: parity, accuracy and latency", flush=True)
        models[fw] = validate_model(artifacts / fw, test_images, tol, quick)
    report = {"schema_version": SCHEMA_VERSION,
              "passed": all(m["passed"] for m in models.values()),
              "environment": environment(), "tolerances": asdict(tol),
              "latency_method": ("warm-up, then timed runs until a minimum count and duration; "
                                 "p50/p90/p99 of single calls; images/s = batch / p50; "
                                 "onnxruntime intra-op threads pinned, inter-op 1"),
              "models": models}
    if {"torch", "tf"} <= set(models):
        t, f = models["torch"], models["tf"]
        report["cross_framework"] = {
            "agreement": float((t["predictions"] == f["predictions"]).mean()),
            "disagreements": int((t["predictions"] != f["predictions"]).sum()),
            "accuracy": {"torch": t["accuracy"]["onnxruntime"], "tf": f["accuracy"]["onnxruntime"]},
            "per_class": {"torch": t["accuracy"]["per_class"]["onnxruntime"],
                          "tf": f["accuracy"]["per_class"]["onnxruntime"],
                          "class_names": list(data.CLASS_NAMES)},
        }
    for m in models.values():
        del m["predictions"]
    return report


def failures(report: dict) -> list[str]:
    """One line per failing parity check, naming the model and the figure."""
    lines = []
    for fw, m in report["models"].items():
        for key in ("parity", "parity_cuda"):
            p = m.get(key, {})
            if p.get("passed") is False:
                cmp = par.Parity(**p)
                lines.append(f"parity failed: {fw} ({p['provider']}): {cmp.failure()}")
        if m["facts"]["missing_metadata"]:
            lines.append(f"{fw}: metadata_props missing {m['facts']['missing_metadata']}")
    return lines
