"""The layer-map format: which ONNX tensor holds each native layer's output, recorded at export
in the model's metadata_props (key "layer_map", JSON: version, images, layers), and read back
by the diagnosis. Each entry: layer, tensor, layout (NCHW, NHWC or flat), native_layout and,
for the flatten layer, native_order (CHW or HWC)."""

from __future__ import annotations

import json

import onnx

from train.core.contract import LAYER_MAP_KEY, set_metadata
from train.core.errors import ArtifactError

DIAGNOSIS_IMAGES = 64   # the first N test images: native layer outputs are recorded for these
MAP_VERSION = 1
ORDER = {"NCHW": "CHW", "NHWC": "HWC"}  # a layout's flatten order (Flatten keeps memory order)


def store(model: onnx.ModelProto, layers: list[dict]) -> None:
    """Record `layers` as the model's layer map (metadata_props)."""
    doc = {"version": MAP_VERSION, "images": DIAGNOSIS_IMAGES, "layers": layers}
    set_metadata(model, LAYER_MAP_KEY, json.dumps(doc, sort_keys=True, separators=(",", ":")))


def native_layout(layers: list[dict]) -> str:
    """The layout of the native framework's 4-D activations, as the layer map records it."""
    return next((s["native_layout"] for s in layers if s["native_layout"] in ORDER), "NCHW")


def with_native_layout(layers: list[dict], layout: str) -> list[dict]:
    """The layer map with another native layout (a reference recorded by the other framework,
    e.g. for a twin exported by the other exporter): 4-D layers and the flatten order follow."""
    if layout not in ORDER:
        raise ArtifactError(f"reference.npz: unknown layer_layout {layout!r}")
    out = []
    for spec in layers:
        spec = dict(spec)
        if spec["native_layout"] in ORDER:
            spec["native_layout"] = layout
        if "native_order" in spec:
            spec["native_order"] = ORDER[layout]
        out.append(spec)
    return out


def read_layer_map(model: onnx.ModelProto, source: str = "model") -> list[dict]:
    """The layer map stored in `model`'s metadata_props."""
    meta = {p.key: p.value for p in model.metadata_props}
    if LAYER_MAP_KEY not in meta:
        raise ArtifactError(f"{source}: no {LAYER_MAP_KEY!r} in metadata_props (exported before "
                            "layer maps were recorded; export it again)")
    try:
        layers = json.loads(meta[LAYER_MAP_KEY])["layers"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{source}: metadata {LAYER_MAP_KEY!r} is not a layer map "
                            f"({exc!r})") from None
    keys = {"layer", "tensor", "layout", "native_layout"}
    if not isinstance(layers, list) or not layers or not all(
            isinstance(r, dict) and keys <= r.keys() for r in layers):
        raise ArtifactError(f"{source}: metadata {LAYER_MAP_KEY!r} is not a layer map "
                            f"(a list of layers, each with {', '.join(sorted(keys))})")
    return layers
