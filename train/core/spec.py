"""The model spec of "bring your own model" (docs/byom.md): what a user says about a model
(a TOML file or a `package.module:callable` shorthand, then the command line's flags), and
the resolved spec.json an export writes beside the ONNX file and the validator reads back.

Framework-free (stdlib and the core only): the validator imports it to read spec.json.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from train.core.errors import ArtifactError, ToolkitError
from train.core.fileio import write_json

FORMAT = "lenet5-toolkit/model-spec"
VERSION = 1
SPEC_FILE = "spec.json"
BATCH = "batch"                       # axis 0 of every input and output: the dynamic batch
LAYOUTS = ("NCHW", "NHWC", "none")    # "none": not an image
DTYPES = ("float32", "float16", "float64", "int64", "int32", "uint8", "bool")
FASHION_MNIST = "fashion-mnist"
DEFAULT_COUNT = 256                   # real inputs per export unless told
DEFAULT_INPUT = "input"               # the single input's name when the spec names none
FRAMEWORKS = ("torch", "tf")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_TOP_KEYS = {"name", "factory", "kwargs", "seed", "checkpoint", "layers", "inputs", "data"}
_INPUT_KEYS = {"name", "dtype", "shape", "layout", "preprocessing"}
_DATA_KEYS = {"source", "count", "random"}


@dataclass(frozen=True)
class InputSpec:
    """One model input as the ONNX graph will have it."""

    name: str
    dtype: str = "float32"
    shape: tuple = (BATCH,)           # axis 0 is the dynamic batch axis ("batch")
    layout: str = "NCHW"              # NCHW, NHWC, or "none" (not an image)
    preprocessing: str = ""           # free text, recorded in the metadata

    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample (axis 0 dropped)."""
        return tuple(int(d) for d in self.shape[1:])

    def as_json(self) -> dict:
        """The spec.json form (shape as a list, "batch" first)."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "layout": self.layout, "preprocessing": self.preprocessing}


@dataclass(frozen=True)
class DataSpec:
    """Where the real inputs come from."""

    source: str = FASHION_MNIST       # fashion-mnist, a .npz / .npy file, a folder of images
    count: int = DEFAULT_COUNT        # how many inputs (the first N of the source)
    random: bool = False              # random inputs (said so in spec.json and the report)


@dataclass(frozen=True)
class ModelSpec:
    """What the user said: the factory and everything optional around it."""

    factory: str                      # package.module:callable
    name: str                         # default: the callable's name
    kwargs: dict = field(default_factory=dict)
    seed: int = 0                     # seeds the framework before the callable runs
    checkpoint: str | None = None     # path; None: the factory's own (seeded) weights
    layers: tuple[str, ...] | None = None   # None: every named leaf module / layer
    inputs: tuple[InputSpec, ...] = ()      # (): the model's own (Keras) or --input-shape
    data: DataSpec = DataSpec()
    origin: str = "the command line"  # the file the spec came from, for error messages


def _fail(origin: str, reason: str) -> ToolkitError:
    return ToolkitError(f"{origin}: {reason}")


def _typed(origin: str, key: str, value: Any, kind: type | tuple, what: str) -> Any:
    """`value` if it is of `kind` (bool is not an int here), else one line naming the key."""
    if isinstance(value, bool) and kind is not bool and bool not in (
            kind if isinstance(kind, tuple) else (kind,)):
        raise _fail(origin, f"{key} must be {what}, got {value!r}")
    if not isinstance(value, kind):
        raise _fail(origin, f"{key} must be {what}, got {value!r}")
    return value


def _unknown(origin: str, where: str, got: dict, allowed: set) -> None:
    extra = sorted(set(got) - allowed)
    if extra:
        raise _fail(origin, f"unknown key{'s' if len(extra) > 1 else ''} "
                            f"{', '.join(extra)} in {where} (allowed: {', '.join(sorted(allowed))})")


def check_factory(text: str, origin: str = "the model spec") -> str:
    """`package.module:callable`, or one line saying what a factory looks like."""
    if not isinstance(text, str) or not _FACTORY.match(text):
        raise _fail(origin, f"factory {text!r} is not package.module:callable "
                            "(e.g. torchvision.models:resnet18)")
    return text


def _input(origin: str, k: int, raw: Any) -> InputSpec:
    where = f"inputs[{k}]"
    _typed(origin, where, raw, dict, "a table")
    _unknown(origin, where, raw, _INPUT_KEYS)
    name = _typed(origin, f"{where}.name", raw.get("name", DEFAULT_INPUT), str, "a string")
    dtype = raw.get("dtype", "float32")
    if dtype not in DTYPES:
        raise _fail(origin, f"{where}.dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    layout = raw.get("layout", "NCHW")
    if layout not in LAYOUTS:
        raise _fail(origin, f"{where}.layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    shape = _typed(origin, f"{where}.shape", raw.get("shape"), list,
                   'a list like ["batch", 3, 224, 224]')
    if not shape or shape[0] != BATCH or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape[1:]):
        raise _fail(origin, f"{where}.shape {shape!r} must be \"batch\" then positive integers")
    if layout != "none" and len(shape) != 4:
        raise _fail(origin, f"{where}: layout {layout} needs a 4-D shape, got {shape!r}")
    pre = _typed(origin, f"{where}.preprocessing", raw.get("preprocessing", ""), str, "a string")
    return InputSpec(name, dtype, tuple(shape), layout, pre)


def _data(origin: str, raw: Any, base: Path | None) -> DataSpec:
    _typed(origin, "data", raw, dict, "a table")
    _unknown(origin, "[data]", raw, _DATA_KEYS)
    source = _typed(origin, "data.source", raw.get("source", FASHION_MNIST), str, "a string")
    if source != FASHION_MNIST and base is not None and not Path(source).is_absolute():
        source = str(base / source)
    count = _typed(origin, "data.count", raw.get("count", DEFAULT_COUNT), int, "an integer")
    if count < 1:
        raise _fail(origin, f"data.count must be at least 1, got {count}")
    random = _typed(origin, "data.random", raw.get("random", False), bool, "true or false")
    return DataSpec(source, count, random)


def _from_table(doc: dict, origin: str, base: Path | None) -> ModelSpec:
    """A parsed TOML table -> ModelSpec, every key checked."""
    _unknown(origin, "the spec", doc, _TOP_KEYS)
    if "factory" not in doc:
        raise _fail(origin, "no `factory` (package.module:callable)")
    factory = check_factory(doc["factory"], origin)
    name = _typed(origin, "name", doc.get("name", factory.rsplit(":", 1)[1].split(".")[-1]),
                  str, "a string")
    kwargs = _typed(origin, "kwargs", doc.get("kwargs", {}), dict, "a table")
    seed = _typed(origin, "seed", doc.get("seed", 0), int, "an integer")
    checkpoint = doc.get("checkpoint")
    if checkpoint is not None:
        _typed(origin, "checkpoint", checkpoint, str, "a path")
        if base is not None and not Path(checkpoint).is_absolute():
            checkpoint = str(base / checkpoint)
    layers = doc.get("layers")
    if layers is not None:
        _typed(origin, "layers", layers, list, "a list of names")
        layers = tuple(_typed(origin, "layers[]", x, str, "a string") for x in layers)
    raw_inputs = _typed(origin, "inputs", doc.get("inputs", []), list, "an array of tables")
    inputs = tuple(_input(origin, k, raw) for k, raw in enumerate(raw_inputs))
    if len({i.name for i in inputs}) != len(inputs):
        raise _fail(origin, "two inputs have the same name")
    data = _data(origin, doc.get("data", {}), base)
    return ModelSpec(factory, name, dict(kwargs), seed, checkpoint, layers, inputs, data, origin)


def load_spec(text: str) -> ModelSpec:
    """MODEL_SPEC from the command line: a TOML file, or `package.module:callable`."""
    path = Path(text)
    if text.endswith(".toml") or path.is_file():
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ToolkitError(f"{path}: cannot read the model spec "
                               f"({(exc.strerror or str(exc)).lower()})") from None
        try:
            doc = tomllib.loads(raw)
        except tomllib.TOMLDecodeError as exc:
            raise ToolkitError(f"{path}: not a valid TOML model spec ({exc})") from None
        return _from_table(doc, str(path), path.resolve().parent)
    return _from_table({"factory": check_factory(text, "MODEL_SPEC")}, text, None)


def parse_shape(text: str) -> tuple[int, ...]:
    """`--input-shape C,H,W` -> (C, H, W), positive integers."""
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise ToolkitError(f"--input-shape {text!r}: expected C,H,W (three positive integers)")
    return dims


def with_flags(spec: ModelSpec, *, checkpoint: str | None = None, inputs: str | None = None,
               count: int | None = None, input_shape: str | None = None,
               layers: str | None = None, random: bool = False, seed: int | None = None,
               name: str | None = None) -> ModelSpec:
    """The spec with the command line's flags applied (a flag overrides the file)."""
    if count is not None and count < 1:
        raise ToolkitError(f"--count must be at least 1, got {count}")
    if name is not None and not re.match(r"^[\w.-]+$", name):
        raise ToolkitError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
    data = dataclasses.replace(spec.data, source=inputs or spec.data.source,
                               count=count or spec.data.count,
                               random=random or spec.data.random)
    shaped = spec.inputs
    if input_shape is not None:
        if len(spec.inputs) > 1:
            raise ToolkitError("--input-shape is for a model with one image input; this "
                               f"spec declares {len(spec.inputs)} inputs")
        base = spec.inputs[0] if spec.inputs else InputSpec(DEFAULT_INPUT)
        shaped = (dataclasses.replace(base, shape=(BATCH, *parse_shape(input_shape)),
                                      layout=base.layout if base.layout != "none" else "NCHW"),)
    picked = spec.layers
    if layers is not None:
        picked = tuple(x.strip() for x in layers.split(",") if x.strip())
    return dataclasses.replace(
        spec, checkpoint=checkpoint or spec.checkpoint, data=data, inputs=shaped,
        layers=picked, seed=spec.seed if seed is None else seed, name=name or spec.name)


# -- spec.json: the resolved spec an export writes -------------------------------------------

_REQUIRED = ("format", "version", "name", "framework", "factory", "kwargs", "seed",
             "checkpoint", "inputs", "outputs", "data", "weights", "export")


def write_spec_json(folder: Path, doc: dict) -> Path:
    """Write FOLDER/spec.json atomically (format and version first)."""
    full = {"format": FORMAT, "version": VERSION, **doc}
    missing = [k for k in _REQUIRED if k not in full]
    if missing:  # the exporter's own bug, not the user's
        raise ValueError(f"spec.json without {', '.join(missing)}")
    write_json(Path(folder) / SPEC_FILE, full)
    return Path(folder) / SPEC_FILE


def read_spec_json(path: Path) -> dict:
    """spec.json of an export (a folder or the file itself), checked: one line naming the
    file and what is wrong (ArtifactError)."""
    path = Path(path)
    path = path / SPEC_FILE if path.is_dir() else path
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read it ({(exc.strerror or str(exc)).lower()})"
                            ) from None
    except ValueError as exc:
        raise ArtifactError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a model spec (format is not {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise ArtifactError(f"{path}: model spec version {doc.get('version')!r}; this toolkit "
                            f"reads version {VERSION}")
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise ArtifactError(f"{path}: missing {', '.join(missing)}")
    if doc["framework"] not in FRAMEWORKS:
        raise ArtifactError(f"{path}: framework {doc['framework']!r} is not torch or tf")
    for part in ("inputs", "outputs"):
        rows = doc[part]
        if not isinstance(rows, list) or not rows or not all(
                isinstance(r, dict) and {"name", "dtype", "shape"} <= r.keys() for r in rows):
            raise ArtifactError(f"{path}: {part} must be a list of {{name, dtype, shape}}")
    return doc


def input_specs(doc: dict) -> tuple[InputSpec, ...]:
    """spec.json's inputs as InputSpec."""
    return tuple(InputSpec(r["name"], r["dtype"], tuple(r["shape"]), r.get("layout", "none"),
                           r.get("preprocessing", "")) for r in doc["inputs"])
