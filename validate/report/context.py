"""What report.html is drawn from: report.json, what can be read beside it (test images, native
predictions), and the views of it that both a figure and a table show.

Needs numpy only (no framework, no matplotlib).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from validate.report.text import NAMES

NATIVE_RUNTIMES = {"torch": "torch", "tf": "tensorflow"}


def title(label: str) -> str:
    """A model's display name."""
    return NAMES.get(label, label)


@dataclass
class Context:
    """report.json plus what can be read beside it (test images, native predictions)."""

    report: dict
    data_dir: str | None = None
    notes: list[str] = field(default_factory=list)   # what could not be read, said on the page
    _images: tuple | None = None
    _tried_images: bool = False

    @property
    def models(self) -> dict:
        """report["models"] (empty when absent)."""
        return self.report.get("models") or {}

    def ok_models(self) -> list[str]:
        """Models that were validated (no "error"), TensorFlow first as in the seed."""
        order = [fw for fw in ("tf", "torch") if fw in self.models]
        order += [k for k in self.models if k not in order]
        return [fw for fw in order if "error" not in self.models[fw]]

    def class_names(self) -> list[str]:
        """The ten class names: from the report, else the models' metadata, else train.data."""
        cross = self.report.get("cross_framework") or {}
        names = (cross.get("per_class") or {}).get("class_names")
        if names:
            return list(names)
        for m in self.models.values():
            meta = (m.get("facts") or {}).get("metadata") or {}
            try:
                return list(json.loads(meta["class_names"]))
            except (KeyError, TypeError, ValueError):
                continue
        from train.data import CLASS_NAMES

        return list(CLASS_NAMES)

    def test_images(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The test split (images uint8 [N, 28, 28], labels), or None with a note why."""
        if not self._tried_images:
            self._tried_images = True
            try:
                from train.data import load_test_on_disk

                self._images = load_test_on_disk(self.data_dir)
            except Exception as exc:  # a missing or bad dataset must not stop the report
                self.notes.append(f"test images unavailable ({one_line(exc)})")
        return self._images

    def native_predictions(self, fw: str) -> np.ndarray | None:
        """argmax of the native model's probabilities (reference.npz beside the ONNX file)."""
        facts = self.models.get(fw, {}).get("facts") or {}
        if not facts.get("file"):
            return None
        # `path` is absolute (`file` is as given, relative to where the validator ran)
        path = Path(facts.get("path") or facts["file"]).parent / "reference.npz"
        try:
            with np.load(path) as z:
                return z["probabilities"].argmax(1)
        except Exception as exc:  # the reference may live elsewhere (CI artifact, another disk)
            self.notes.append(f"{path}: native predictions unavailable ({one_line(exc)})")
            return None


def one_line(exc: BaseException) -> str:
    """An exception as one short line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Views of the report that both a figure and a table show


def confusion(m: dict) -> tuple[str, list] | None:
    """A model's confusion matrix and its source (onnxruntime CPU, else native), or None."""
    conf = (m.get("accuracy") or {}).get("confusion") or {}
    for source in ("onnxruntime", "native"):
        if conf.get(source):
            return source, conf[source]
    return None


def per_class(ctx: Context) -> dict[str, list[float]]:
    """Per-class accuracy per model (onnxruntime CPU, else native)."""
    out = {}
    cross = (ctx.report.get("cross_framework") or {}).get("per_class") or {}
    for fw in ctx.ok_models():
        pc = (ctx.models[fw].get("accuracy") or {}).get("per_class") or {}
        values = pc.get("onnxruntime") or pc.get("native") or cross.get(fw)
        if values:
            out[fw] = list(values)
    return out


def hist_runtimes(m: dict) -> list[tuple[str, dict]]:
    """A model's runtimes that recorded a |native - runtime| histogram."""
    return [(name, r) for name, r in (m.get("runtimes") or {}).items()
            if (r.get("diff_histogram") or {}).get("counts")]


def latency_label(fw: str, row: dict) -> str:
    """A latency row's runtime: the runner's name, or "native (<framework>)"."""
    if "runner" in row:
        return row["runner"]
    if fw not in NATIVE_RUNTIMES and row.get("runtime") in NATIVE_RUNTIMES.values():
        return f"native ({row['runtime']})"  # a model export's native framework
    return f"native ({title(fw)})" if row.get("runtime") == NATIVE_RUNTIMES.get(fw) else str(
        row.get("runtime"))


def flips(ctx: Context) -> list[dict]:
    """Every flipped image: model, runtime, index, label and predictions when known."""
    out = []
    for fw in ctx.ok_models():
        m = ctx.models[fw]
        native = None
        for name, r in (m.get("runtimes") or {}).items():
            if not r.get("flips"):
                continue
            recorded = _recorded_predictions(r)
            if native is None and any(i not in recorded for i in r["flips"]):
                native = ctx.native_predictions(fw)
            images = ctx.test_images()
            for idx in r["flips"]:
                pred = recorded.get(idx, {})
                out.append({
                    "model": fw, "runtime": name, "index": int(idx),
                    "label": int(images[1][idx]) if images is not None else None,
                    "native": pred.get("native", int(native[idx]) if native is not None
                                       else None),
                    "runtime_prediction": pred.get("runtime"),
                })
    return out


def _recorded_predictions(r: dict) -> dict[int, dict]:
    """Predictions the report recorded for flipped images, if it did (several shapes)."""
    rec = r.get("flip_predictions") or {}
    out = {}
    items = rec.items() if isinstance(rec, dict) else enumerate(rec)
    for key, v in items:
        if isinstance(v, dict):
            idx = int(v.get("index", key))
            out[idx] = {"native": v.get("native"), "runtime": v.get("runtime",
                                                                    v.get("onnx"))}
        elif isinstance(v, (list, tuple)) and len(v) == 3:
            out[int(v[0])] = {"native": v[1], "runtime": v[2]}
    return out
