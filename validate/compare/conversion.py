"""The conversion matrix: each trained model against its twin in the other framework, its ONNX
graphs from both exporters, and the round trips back into a framework (numpy + onnx +
onnxruntime only).

The framework processes (convert.twins.to_torch, convert.twins.to_tf) write their outputs under
ARTIFACTS/<trained fw>/conversion/ in the file format defined here; this module reads them,
runs the ONNX graphs in onnxruntime (CPU), and compares every row with the trained model's own
reference.npz on all 10,000 test images. Same weights, so every row must agree within 1e-5
with 0 flips: that is the conversion's verdict. A row that could not run here is
"unavailable: reason" (not gated); a row whose file is missing, stale or failed fails.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from train.core.errors import ArtifactError
from train.core.fileio import atomic_open, read_npz, sha256_file
from train.core.weights import FILE as WEIGHTS_FILE  # numpy only
from validate.report.text import cell

FRAMEWORKS = ("torch", "tf")
CONVERSION = "conversion"               # ARTIFACTS/<fw>/conversion/
TWIN_ONNX = "twin.onnx"                 # the twin, exported by the other framework's exporter
TWIN_NATIVE = "twin_native.npz"         # the twin's probabilities in its own framework
ONNX2TORCH_FILE = "roundtrip_onnx2torch.npz"
ONNX2TF_FILE = "roundtrip_onnx2tf.npz"  # onnx2tf's SavedModel, run in TensorFlow
TFLITE_FILE = "roundtrip_tflite.npz"    # onnx2tf's float32 .tflite, run in the LiteRT interpreter
ONNX2TF_DIR = "onnx2tf"                 # the SavedModel and .tflite onnx2tf wrote
ATOL = 1e-5                             # same weights: max |probability difference| (--atol)
MAX_FLIPS = 0                           # same weights: top-1 classes all equal
NAMES = {"torch": "PyTorch", "tf": "Keras"}
RUNTIMES = {"torch": "PyTorch", "tf": "TensorFlow"}


# --- the files the framework processes write ------------------------------------------------

def frameworks_present(artifacts: Path) -> list[str]:
    """Trained frameworks with an exported lenet5.onnx under ARTIFACTS, in FRAMEWORKS order."""
    present = [f for f in FRAMEWORKS if (artifacts / f / "lenet5.onnx").is_file()]
    if not present:
        raise ArtifactError(f"{artifacts}: no exported model (no torch/lenet5.onnx or "
                            "tf/lenet5.onnx); run `python -m convert all` first")
    return present


# What can change a conversion made from the same source file: the converters and frameworks
# (by installed version) and the toolkit's own code that builds, exports and writes them.
CONVERTERS = ("numpy", "onnx", "onnxscript", "torch", "onnx2torch", "tensorflow", "keras",
              "tf2onnx", "onnx2tf", "tf-keras", "ai-edge-litert")
_MADE_WITH: list[str] = []


def made_with() -> str:
    """A digest of CONVERTERS' versions and the toolkit's convert/ and train/ code: an output
    written with another digest is made again by a rerun (convert.twins.common.pending)."""
    if not _MADE_WITH:
        import hashlib
        from importlib.metadata import PackageNotFoundError, version

        digest = hashlib.sha256()
        for name in CONVERTERS:
            try:
                digest.update(f"{name} {version(name)}\n".encode())
            except PackageNotFoundError:
                digest.update(f"{name} absent\n".encode())
        root = Path(__file__).resolve().parents[2]
        for path in sorted([Path(__file__).resolve(), *root.glob("convert/**/*.py"),
                            *root.glob("train/**/*.py")]):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
        _MADE_WITH.append(digest.hexdigest())
    return _MADE_WITH[0]


def _write(path: Path, status: str, source_sha256: str, probabilities: np.ndarray | None = None,
           runs_in: str = "", made_by: str = "", seconds: float = 0.0, note: str = "") -> None:
    arrays = {} if probabilities is None else {
        "probabilities": np.asarray(probabilities, dtype=np.float32)}
    with atomic_open(path) as handle:
        np.savez(handle, status=np.array(status), source_sha256=np.array(source_sha256),
                 runs_in=np.array(runs_in), made_by=np.array(made_by),
                 seconds=np.array(float(seconds)), note=np.array(note),
                 made_with=np.array(made_with()), **arrays)


def write_probabilities(path: Path, probabilities: np.ndarray, runs_in: str, made_by: str,
                        source_sha256: str, seconds: float, note: str = "") -> None:
    """Write one conversion's probabilities on the test set (status "ok"), atomically."""
    _write(path, "ok", source_sha256, probabilities, runs_in, made_by, seconds, note)


def save_twin(folder: Path, proto: onnx.ModelProto, probabilities: np.ndarray,
              weights_sha256: str, runs_in: str, made_by: str, seconds: float) -> None:
    """Write a twin's outputs under FOLDER/conversion/: its native probabilities and its ONNX
    export (tagged with the weights file it was built from)."""
    from train.core import contract as onnx_utils

    proto.metadata_props.add(key="twin_weights_sha256", value=weights_sha256)
    write_probabilities(folder / CONVERSION / TWIN_NATIVE, probabilities, runs_in=runs_in,
                        made_by=made_by, source_sha256=weights_sha256, seconds=seconds)
    onnx_utils.save(proto, folder / CONVERSION / TWIN_ONNX)


def write_status(path: Path, status: str, source_sha256: str, note: str = "") -> None:
    """Write a conversion that produced no probabilities: "unavailable: …" or "failed: …"."""
    _write(path, status, source_sha256, note=note)


@dataclass(frozen=True)
class Output:
    """One file written by a framework process, as read back."""

    status: str
    source_sha256: str
    runs_in: str
    made_by: str
    seconds: float
    note: str
    probabilities: np.ndarray | None
    made_with: str = ""  # made_with() of the process that wrote it ("" in older files)


def read_output(path: Path) -> Output:
    """Read one conversion file; ArtifactError if it is unreadable."""
    f = read_npz(path)
    try:
        return Output(str(f["status"]), str(f["source_sha256"]), str(f["runs_in"]),
                      str(f["made_by"]), float(f["seconds"]), str(f["note"]),
                      f.get("probabilities"), str(f.get("made_with", "")))
    except (KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{path}: not a conversion output ({type(exc).__name__})") from None


# --- the matrix ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One cell row of the matrix: a conversion of the trained model, against its reference."""

    key: str                    # native, twin, torch.onnx, tf2onnx, onnx2torch, onnx2tf, tflite
    name: str                   # e.g. "Keras twin", "onnx2torch round trip"
    made_by: str
    runs_in: str
    file: str
    status: str                 # ok | unavailable: … | missing: … | stale: … | failed: …
    gated: bool                 # counts towards the verdict (everything but "unavailable")
    passed: bool | None         # None when not gated
    max_abs_diff: float | None = None
    flip_count: int | None = None
    flips: list[int] = field(default_factory=list)
    accuracy: float | None = None
    seconds: float | None = None
    note: str = ""

    def __bool__(self) -> bool:
        return self.passed is not False


def _twins_cmd(framework: str) -> str:
    return f"python -m convert twins {framework}"


def _plan(artifacts: Path, framework: str) -> list[tuple[str, str, Path, str]]:
    """(key, name, file, the command that writes it) for every row after the native one."""
    other = "tf" if framework == "torch" else "torch"
    conv = artifacts / framework / CONVERSION
    model = artifacts / framework / "lenet5.onnx"
    twin = f"{NAMES[other]} twin"
    onnx_rows = {
        "torch.onnx": (f"ONNX via torch.onnx ({'lenet5.onnx' if framework == 'torch' else twin})",
                       model if framework == "torch" else conv / TWIN_ONNX,
                       _twins_cmd("torch")),
        "tf2onnx": (f"ONNX via tf2onnx ({'lenet5.onnx' if framework == 'tf' else twin})",
                    model if framework == "tf" else conv / TWIN_ONNX, _twins_cmd("tf")),
    }
    return [
        ("twin", twin, conv / TWIN_NATIVE, _twins_cmd(other)),
        ("torch.onnx", *onnx_rows["torch.onnx"]),
        ("tf2onnx", *onnx_rows["tf2onnx"]),
        ("onnx2torch", "onnx2torch round trip (lenet5.onnx -> PyTorch)", conv / ONNX2TORCH_FILE,
         _twins_cmd("torch")),
        ("onnx2tf", "onnx2tf round trip (lenet5.onnx -> TF SavedModel)", conv / ONNX2TF_FILE,
         _twins_cmd("tf")),
        ("tflite", "onnx2tf TFLite float32 (LiteRT interpreter)", conv / TFLITE_FILE,
         _twins_cmd("tf")),
    ]


def _compare(key: str, name: str, made_by: str, runs_in: str, file: Path, probs: np.ndarray,
             reference: np.ndarray, labels: np.ndarray, seconds: float | None,
             note: str = "") -> Row:
    if probs.shape != reference.shape:
        return _broken(key, name, file, f"failed: shape {list(probs.shape)}, expected "
                                        f"{list(reference.shape)}")
    diff = np.abs(probs.astype(np.float64) - reference.astype(np.float64))
    max_diff = float(diff.max())  # NaN never passes: the comparison below is False
    flips = np.flatnonzero(probs.argmax(1) != reference.argmax(1))
    accuracy = float((probs.argmax(1) == labels).mean())
    passed = _within(max_diff, len(flips), ATOL)
    return Row(key, name, made_by, runs_in, str(file), "ok", True, passed, max_diff,
               int(len(flips)), flips.tolist(), accuracy, seconds, note)


def _within(max_diff: float, flips: int, atol: float) -> bool:
    """The same-weights gate (NaN never passes: the comparison is False)."""
    return bool(max_diff <= atol and flips <= MAX_FLIPS)


def _broken(key: str, name: str, file: Path, status: str, made_by: str = "", runs_in: str = "",
            note: str = "") -> Row:
    gated = not status.startswith("unavailable")
    return Row(key, name, made_by, runs_in, str(file), status, gated,
               False if gated else None, note=note)


def _run_onnx(path: Path, images: np.ndarray) -> tuple[np.ndarray, float]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    out = np.concatenate([session.run(["probabilities"], {"image": images[i:i + 1000]})[0]
                          for i in range(0, len(images), 1000)])
    return out, time.perf_counter() - start


def _onnx_row(key: str, name: str, path: Path, cmd: str, weights_sha: str | None,
              images: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> Row:
    if not path.is_file():
        return _broken(key, name, path, f"missing: {path}; run `{cmd}`")
    try:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
                .metadata_props}
    except Exception as exc:  # a corrupt file is this row's failure
        return _broken(key, name, path, f"failed: {path} is not readable ONNX "
                                        f"({type(exc).__name__})")
    made_by = f"{meta.get('exporter', '?')} {meta.get('exporter_version', '')}".strip()
    twin_sha = meta.get("twin_weights_sha256")
    if path.name == TWIN_ONNX:  # must be the twin of these weights, by this row's exporter
        if weights_sha is None:
            return _broken(key, name, path, f"missing: {path.parents[1] / WEIGHTS_FILE}; run "
                                            f"`python -m convert export {path.parents[1].name}`",
                           made_by)
        if twin_sha is None or not meta.get("exporter", "").startswith(key):
            return _broken(key, name, path, f"failed: {path} is not a twin made by `{cmd}` "
                                            f"(exporter {meta.get('exporter', 'unknown')!r}"
                                            f"{', no twin_weights_sha256' * (twin_sha is None)})",
                           made_by)
    if twin_sha is not None and twin_sha != weights_sha:
        return _broken(key, name, path, f"stale: {path} was made from another weights.npz; "
                                        f"run `{cmd}`", made_by)
    try:
        probs, seconds = _run_onnx(path, images)
    except Exception as exc:
        return _broken(key, name, path, f"failed: onnxruntime: {type(exc).__name__}: "
                                        f"{str(exc).strip()[:200]}", made_by)
    return _compare(key, name, made_by, f"onnxruntime {ort.__version__} CPU", path, probs,
                    reference, labels, seconds)


def _file_row(key: str, name: str, path: Path, cmd: str, expected_sha: str | None,
              reference: np.ndarray, labels: np.ndarray) -> Row:
    if not path.is_file():
        return _broken(key, name, path, f"missing: {path}; run `{cmd}`")
    try:
        out = read_output(path)
    except ArtifactError as exc:  # a damaged output is this row's failure, not the model's
        return _broken(key, name, path, f"failed: {exc}; run `{cmd}`")
    if expected_sha is None:
        source = WEIGHTS_FILE if key == "twin" else "lenet5.onnx"
        return _broken(key, name, path, f"missing: {Path(path).parents[1] / source}; run "
                                        f"`python -m convert export {Path(path).parents[1].name}`")
    if out.source_sha256 != expected_sha:
        return _broken(key, name, path, f"stale: {path} was made from another "
                                        f"{'weights.npz' if key == 'twin' else 'lenet5.onnx'}; "
                                        f"run `{cmd}`", out.made_by, out.runs_in)
    if out.status != "ok" or out.probabilities is None:
        status = out.status if out.status != "ok" else f"failed: {path} holds no probabilities"
        return _broken(key, name, path, status, out.made_by, out.runs_in, out.note)
    return _compare(key, name, out.made_by, out.runs_in, path, out.probabilities, reference,
                    labels, out.seconds, out.note)


def evaluate(artifacts: Path, framework: str, test_images: np.ndarray,
             labels: np.ndarray, atol: float | None = None) -> dict:
    """The conversion matrix for the model trained in FRAMEWORK (JSON-able; "passed" on top);
    `atol` (--atol) replaces the default same-weights limit ATOL."""
    folder = artifacts / framework
    ref_path = folder / "reference.npz"
    if not ref_path.is_file() or "probabilities" not in (arrays := read_npz(ref_path)):
        raise ArtifactError(f"{ref_path}: cannot read the reference (missing, or no "
                            f"probabilities); run `python -m convert export {framework}`")
    reference = arrays["probabilities"]
    labels = np.asarray(labels)
    weights_path = folder / WEIGHTS_FILE
    weights_sha = sha256_file(weights_path) if weights_path.is_file() else None
    model_sha = sha256_file(folder / "lenet5.onnx") if (folder / "lenet5.onnx").is_file() \
        else None
    rows = [_compare("native", f"{NAMES[framework]} (trained model)", "training",
                     RUNTIMES[framework], ref_path, reference, reference, labels, None)]
    for key, name, path, cmd in _plan(artifacts, framework):
        if key in ("torch.onnx", "tf2onnx"):
            row = _onnx_row(key, name, path, cmd, weights_sha, test_images, reference, labels)
        else:
            expected = weights_sha if key == "twin" else model_sha
            row = _file_row(key, name, path, cmd, expected, reference, labels)
        rows.append(row)
    atol = ATOL if atol is None else atol
    rows = [replace(r, passed=_within(r.max_abs_diff, r.flip_count, atol)) if r.status == "ok"
            else r for r in rows]
    return {
        "framework": framework,
        "trained": NAMES[framework],
        "images": int(len(reference)),
        "accuracy": rows[0].accuracy,
        "atol": atol,
        "max_flips": MAX_FLIPS,
        "rows": [asdict(r) for r in rows],
        "passed": all(r.passed for r in rows if r.gated),
    }


# --- presentation ----------------------------------------------------------------------------

def _figures(row: dict, reference_accuracy: float | None, atol: float) -> str:
    parts = []
    diff = row["max_abs_diff"]
    if diff is None or not diff <= atol:  # None: not finite (NaN is written as null)
        shown = f"{diff:.3g}" if diff is not None and math.isfinite(diff) else "not finite"
        parts.append(f"max |diff| {shown} > {atol:g}")
    if row["flip_count"] > MAX_FLIPS:
        parts.append(f"{row['flip_count']:,} flips")
    if row["accuracy"] != reference_accuracy and reference_accuracy is not None:
        parts.append(f"accuracy {row['accuracy']:.4f} vs {reference_accuracy:.4f}")
    return ", ".join(parts)


def failures(framework: str, result: dict) -> list[str]:
    """One line per failing conversion, naming it and its figures (or why it has none)."""
    lines = []
    for row in result["rows"]:
        if row["passed"] is not False:
            continue
        what = (_figures(row, result["accuracy"], result.get("atol", ATOL))
                if row["status"] == "ok" else row["status"])
        lines.append(f"conversion failed: {framework} -> {row['name']}: {what}")
    return lines


def _cell(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def markdown(results: dict[str, dict]) -> list[str]:
    """A table per trained model: every conversion against that model's own reference."""
    lines = []
    for framework, result in results.items():
        lines += [
            f"**{result['trained']}-trained model** (test accuracy {result['accuracy']:.4f}): "
            f"every row against this model's own reference on {result['images']:,} test "
            f"images; same weights, so each must agree within {result['atol']:g} with "
            f"{result['max_flips']} flips. Verdict: "
            f"{'**passed**' if result['passed'] else '**FAILED**'}.",
            "",
            "| conversion | made by | runs in | max \\|diff\\| | flips | accuracy | verdict |",
            "| --- | --- | --- | ---: | ---: | ---: | --- |",
        ]
        for row in result["rows"]:
            if row["status"] == "ok":
                verdict = "pass" if row["passed"] else "**FAIL**"
            else:
                verdict = cell(row["status"])
                verdict = verdict if not row["gated"] else f"**FAIL**: {verdict}"
            lines.append(
                f"| {row['name']} | {row['made_by'] or '—'} | {row['runs_in'] or '—'} | "
                f"{_cell(row['max_abs_diff'], '.2e')} | {_cell(row['flip_count'], ',')} | "
                f"{_cell(row['accuracy'], '.4f')} | {verdict} |")
        notes = [f"{row['name']}: {row['note']}" for row in result["rows"] if row["note"]]
        lines += [""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    return lines
