"""report.html: the report as one self-contained page, with figures drawn by matplotlib.

One file, nothing fetched: figures are inline SVG (PNG for the test images) data URIs, the CSS
is inline, there is no script. Every figure has its numbers beside it in a table, or in
report.json. The page is made from report.json alone (plus the test images and the
reference.npz files, when they can be read, to draw flipped images); a missing piece (a model
that failed, a runtime that could not run, no training history) is said, never a crash.

`python -m validate.html` (validate/html.py) rewrites it from a report.json.
Needs numpy and matplotlib only (no framework).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shlex
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Callable

import numpy as np

from train.core.errors import ToolkitError
from train.core.fileio import write_bytes, write_text
from validate.report.markdown import best_cell, latency_conditions, main_table, spread_cell
from validate.report.text import NAMES, NO_LATENCY, percent
from validate.report.verdict import errors, failures

FW_COLORS = {"tf": "#e8710a", "torch": "#1f5fa8"}
NATIVE_RUNTIMES = {"torch": "torch", "tf": "tensorflow"}
RUNTIME_COLORS = {
    "native": "#222222", "onnxruntime-cpu": "#2ca02c", "onnxruntime-cuda": "#bcbd22",
    "onnx-reference": "#7f7f7f", "onnxruntime-node": "#9467bd", "onnxruntime-web": "#8c564b",
    "browser": "#e377c2",
}
OTHER_COLORS = ("#17becf", "#d62728", "#ff7f0e", "#1f77b4", "#aec7e8", "#98df8a")
LINESTYLES = ("-", "--", "-.", ":")
DEFAULT_COMMAND = "python -m convert all"
MAX_FLIP_IMAGES = 16   # drawn; every flip is listed in the table
PNG_DPI = 150          # --png figures (a README): sharper than the page's
MAX_TABLE_ROWS = 500   # a generic table longer than this is cut (report.json has it all)

# Fixed style, so the same report.json gives the same bytes: matplotlib's own font (DejaVu
# Sans, drawn as paths: no font needed to view), a fixed SVG id salt, no dates in metadata.
RC = {
    "svg.hashsalt": "lenet5-onnx",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.labelsize": 9.0,
    "legend.fontsize": 8.0,
    "xtick.labelsize": 8.0,
    "ytick.labelsize": 8.0,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "image.interpolation": "nearest",
}


def title(label: str) -> str:
    """A model's display name."""
    return NAMES.get(label, label)


# ---------------------------------------------------------------------------------------------
# Context: what the page is drawn from


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
# HTML helpers


def _fmt(v: object) -> str:
    """A value as table text."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e4:
            return f"{v:,.0f}"
        if abs(v) < 1e-3:
            short = f"{v:.0e}"  # a tolerance like 1e-05 stays 1e-05, not 1.00e-05
            return short if float(short) == v else f"{v:.2e}"
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        text = json.dumps(v, separators=(", ", ": "))
        return text if len(text) <= 160 else text[:157] + "..."
    return str(v)


def table(header: list[str], rows: list[list[object]], cls: str = "") -> str:
    """An HTML table; cells are escaped (pass _Raw for markup)."""
    def cell(v: object) -> str:
        return v.html if isinstance(v, _Raw) else escape(_fmt(v))

    head = ("<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr></thead>"
            if any(header) else "")  # a key/value table needs no header row
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in rows)
    # a wide table scrolls inside the page instead of widening it
    return f'<div class="scroll"><table class="{cls}">{head}<tbody>{body}</tbody></table></div>'


@dataclass(frozen=True)
class _Raw:
    """Markup that goes into a table cell as is."""

    html: str


def details(summary: str, inner: str) -> str:
    """A collapsed block (long tables)."""
    return f"<details><summary>{escape(summary)}</summary>{inner}</details>"


def missing(text: str) -> str:
    """A visible note that something is not there."""
    return f'<p class="missing">{escape(text)}</p>'


def _scalar(v: object) -> bool:
    """A value that fits one table cell (a list of plain values counts)."""
    return not isinstance(v, (dict, list)) or (
        isinstance(v, list) and not any(isinstance(x, (dict, list)) for x in v))


def _short(v: object, root: str | None) -> object:
    """A path inside the artifacts folder relative to it, a sha256 cut to 12 digits (the full
    values are in report.json)."""
    if isinstance(v, str) and root and v.startswith(root.rstrip("/") + "/"):
        return v[len(root.rstrip("/")) + 1:]
    if isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v):
        return v[:12] + "..."
    return v


def generic(obj: object, depth: int = 0, root: str | None = None) -> str:
    """Any JSON value as HTML: a list of row dicts -> a table; a dict -> its plain fields as
    rows, sibling dicts (variants, rows keyed by name) as one table, the rest as sub-blocks."""
    if isinstance(obj, list) and obj and all(isinstance(r, dict) for r in obj):
        keys = list(dict.fromkeys(k for r in obj for k in r))
        rows = [[_short(r.get(k), root) for k in keys] for r in obj[:MAX_TABLE_ROWS]]
        cut = (f'<p class="note">first {MAX_TABLE_ROWS} of {len(obj)} rows; all are in '
               f"report.json</p>" if len(obj) > MAX_TABLE_ROWS else "")
        return table(keys, rows, "generic") + cut
    if isinstance(obj, dict):
        if not obj:
            return missing("empty")
        flat = {k: v for k, v in obj.items() if _scalar(v)}
        nested = {k: v for k, v in obj.items() if k not in flat}
        out = (table(["", ""], [[k, _short(v, root)] for k, v in flat.items()], "kv generic")
               if flat else "")
        siblings = {k: v for k, v in nested.items() if isinstance(v, dict)}
        if len(siblings) >= 2:
            keys = list(dict.fromkeys(c for v in siblings.values() for c, x in v.items()
                                      if _scalar(x)))
            out += table([""] + keys, [[k] + [_short(v.get(c), root) for c in keys]
                                       for k, v in siblings.items()], "generic")
            for k, v in siblings.items():
                deeper = {c: x for c, x in v.items() if not _scalar(x)}
                if deeper:
                    out += details(f"{k}: more", generic(deeper, depth + 1, root))
            nested = {k: v for k, v in nested.items() if k not in siblings}
        for k, v in nested.items():
            if depth >= 3:
                out += f"<p><b>{escape(str(k))}</b>: <code>{escape(_fmt(v))}</code></p>"
            else:
                out += (f'<div class="sub"><h4>{escape(str(k))}</h4>'
                        f"{generic(v, depth + 1, root)}</div>")
        return out
    if isinstance(obj, list):
        return f"<p>{escape(', '.join(_fmt(x) for x in obj)) or 'none'}</p>"
    return f"<p>{escape(_fmt(obj))}</p>"


# ---------------------------------------------------------------------------------------------
# Figures: each returns a matplotlib Figure (or None when there is nothing to draw)


def _new_figure(width: float, height: float):
    """A figure outside pyplot (no global backend state; the Agg/SVG canvas draws it)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _runtime_color(name: str, seen: dict[str, str]) -> str:
    if name in RUNTIME_COLORS:
        return RUNTIME_COLORS[name]
    return seen.setdefault(name, OTHER_COLORS[len(seen) % len(OTHER_COLORS)])


def fig_training(ctx: Context):
    """Loss and accuracy per epoch, both frameworks on one figure."""
    fws = [fw for fw in ctx.ok_models()
           if (ctx.models[fw].get("training") or {}).get("history")]
    if not fws:
        return None
    fig = _new_figure(10, 3.4)
    from matplotlib.ticker import MaxNLocator

    ax_loss, ax_acc = fig.subplots(1, 2)
    for fw in fws:
        train = ctx.models[fw]["training"]
        hist = train["history"]
        epochs = [h["epoch"] for h in hist]
        color = FW_COLORS.get(fw)
        ax_loss.plot(epochs, [h["loss"] for h in hist], "o-", ms=3, color=color, label=title(fw))
        ax_acc.plot(epochs, [h["accuracy"] for h in hist], "o-", ms=3, color=color,
                    label=f"{title(fw)} (training)")
        if train.get("test_accuracy") is not None:
            ax_acc.plot([epochs[-1]], [train["test_accuracy"]], "*", ms=10, color=color,
                        label=f"{title(fw)} (test, final)")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="accuracy", xlabel="epoch", ylabel="accuracy")
    last = max(h["epoch"] for fw in fws for h in ctx.models[fw]["training"]["history"])
    for ax in (ax_loss, ax_acc):
        ax.set_xlim(0.5, last + 0.5)  # one epoch (--quick) still gets a readable axis
        if last <= 12:
            ax.set_xticks(range(1, last + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="best")
    return fig


def fig_confusion(ctx: Context):
    """10x10 confusion matrices of both models (onnxruntime CPU predictions)."""
    mats = [(fw, _confusion(ctx.models[fw])) for fw in ctx.ok_models()]
    mats = [(fw, m) for fw, m in mats if m is not None]
    if not mats:
        return None
    names = ctx.class_names()
    fig = _new_figure(5.4 * len(mats), 5.2)
    axes = np.atleast_1d(fig.subplots(1, len(mats)))
    for ax, (fw, (source, m)) in zip(axes, mats):
        m = np.asarray(m, dtype=float)
        rows = m.sum(1, keepdims=True)
        frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        ax.grid(False)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=6.5,
                            color="white" if frac[i, j] > 0.5 else "#222222")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(len(names)), names)
        ax.set(title=f"{title(fw)} ({source})", xlabel="predicted", ylabel="true class")
    return fig


def _confusion(m: dict) -> tuple[str, list] | None:
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


def fig_per_class(ctx: Context):
    """Per-class test accuracy, both models side by side."""
    acc = per_class(ctx)
    if not acc:
        return None
    names = ctx.class_names()
    fig = _new_figure(8, 4.2)
    ax = fig.subplots()
    y = np.arange(len(names))
    height = 0.8 / len(acc)
    for k, (fw, values) in enumerate(acc.items()):
        ax.barh(y - 0.4 + height * (k + 0.5), values, height, color=FW_COLORS.get(fw),
                label=title(fw))
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="test accuracy", title="accuracy per class (10,000 test images)")
    ax.grid(axis="y", visible=False)
    ax.legend(loc="lower right")
    return fig


def _hist_runtimes(m: dict) -> list[tuple[str, dict]]:
    return [(name, r) for name, r in (m.get("runtimes") or {}).items()
            if (r.get("diff_histogram") or {}).get("counts")]


def fig_parity(ctx: Context):
    """|native - ONNX| histograms per model and runtime, log axis, tolerance lines."""
    panels = [(fw, _hist_runtimes(ctx.models[fw])) for fw in ctx.ok_models()]
    panels = [(fw, rs) for fw, rs in panels if rs]
    if not panels:
        return None
    fig = _new_figure(5.2 * len(panels), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    seen: dict[str, str] = {}
    for ax, (fw, runtimes) in zip(axes, panels):
        lowest = 1.0
        tolerances = {}
        for k, (name, r) in enumerate(runtimes):
            edges = np.asarray(r["diff_histogram"]["edges"], dtype=float)
            counts = np.asarray(r["diff_histogram"]["counts"], dtype=float)
            positive = edges[edges > 0]
            # the first bin starts at 0 (exact matches): draw it one decade below its top
            floor = positive.min() / 10 if positive.size else 1e-13
            edges = np.where(edges > 0, edges, floor)
            lowest = min(lowest, floor)
            # thinner each time: runtimes that agree exactly still show as nested lines
            ax.stairs(counts, edges, color=_runtime_color(name, seen), lw=max(3.0 - 0.5 * k, 1.0),
                      ls=LINESTYLES[k % len(LINESTYLES)], label=name)
            if r.get("tolerance"):
                tolerances.setdefault(float(r["tolerance"]), []).append(name)
        for tol, names in sorted(tolerances.items()):
            ax.axvline(tol, color="#d62728", ls="--", lw=1.2)
            ax.text(tol, 0.98, f" tolerance {tol:g}" + (f" ({', '.join(names)})"
                                                         if len(tolerances) > 1 else ""),
                    transform=ax.get_xaxis_transform(), color="#d62728", fontsize=7.5,
                    va="top", ha="left")
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_xlim(lowest, 1.0)
        ticks = [lowest] + [10.0 ** e for e in range(-12, 1, 2) if 10.0 ** e > lowest]
        ax.set_xticks(ticks, ["0"] + [f"1e{int(round(np.log10(t)))}" if t < 1 else "1"
                                      for t in ticks[1:]])
        ax.minorticks_off()
        ax.set(title=f"{title(fw)}: |native - runtime| per probability",
               xlabel="absolute difference (10 probabilities x 10,000 images)",
               ylabel="count (symlog)")
        ax.legend(loc="center right")  # differences above 1e-4 are empty on a healthy run
    return fig


def _latency_label(fw: str, row: dict) -> str:
    if "runner" in row:
        return row["runner"]
    return f"native ({title(fw)})" if row.get("runtime") == NATIVE_RUNTIMES.get(fw) else str(
        row.get("runtime"))


def _slot(fw: str, row: dict) -> str:
    """The runtime a latency row belongs to, with every native framework as "native"."""
    label = _latency_label(fw, row)
    return "native" if label.startswith("native (") else label


def fig_latency(ctx: Context):
    """p50 per batch size with p90/p99 whiskers, every runtime, log axis; one panel per
    model and thread count."""
    fws = [fw for fw in ctx.ok_models() if ctx.models[fw].get("latency")]
    if not fws:
        return None
    threads = sorted({r["threads"] for fw in fws for r in ctx.models[fw]["latency"]})
    fig = _new_figure(5.4 * len(fws), 3.3 * len(threads) + 0.6)
    axes = np.atleast_2d(fig.subplots(len(threads), len(fws), sharey=True, squeeze=False))
    seen: dict[str, str] = {}
    handles: dict[str, object] = {}
    # one slot per runtime across every panel, so a runtime sits at the same offset everywhere
    slots = list(dict.fromkeys(_slot(fw, r) for fw in fws for r in ctx.models[fw]["latency"]))
    width = 0.8 / len(slots)
    for col, fw in enumerate(fws):
        rows = ctx.models[fw]["latency"]
        batches = sorted({r["batch_size"] for r in rows})
        for line, t in enumerate(threads):
            ax = axes[line, col]
            series: dict[str, list[dict]] = {}
            for r in rows:
                if r["threads"] == t:
                    series.setdefault(_latency_label(fw, r), []).append(r)
            for label, rs in series.items():
                k = slots.index(_slot(fw, rs[0]))
                color = (RUNTIME_COLORS["native"] if label.startswith("native")
                         else _runtime_color(label, seen))
                x = np.array([batches.index(r["batch_size"]) for r in rs]) - 0.4 + width * (k + .5)
                p50 = np.array([r["p50_ms"] for r in rs])
                p90 = np.array([r["p90_ms"] for r in rs])
                p99 = np.array([r["p99_ms"] for r in rs])
                ax.vlines(x, p50, p99, color=color, lw=1.0)
                ranged = [i for i, r in enumerate(rs) if "p50_min_ms" in r]
                if ranged:  # the range of the round p50s: how sure the dot is
                    ax.vlines(x[ranged], [rs[i]["p50_min_ms"] for i in ranged],
                              [rs[i]["p50_max_ms"] for i in ranged], color=color, lw=5,
                              alpha=0.35)
                ax.scatter(x, p90, marker="_", s=40, color=color, lw=1.5)
                ax.scatter(x, p99, marker="_", s=18, color=color, lw=1.0)
                handles[_slot(fw, rs[0])] = ax.scatter(x, p50, marker="o", s=22, color=color,
                                                       zorder=3)
            ax.set_yscale("log")
            ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
            ax.set_xlim(-0.5, len(batches) - 0.5)
            ax.grid(axis="x", visible=False)
            ax.set(title=f"{title(fw)}, {t} thread{'s' * (t > 1)}", ylabel="ms per batch")
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
               ncols=min(len(handles), 7), title="dot: p50 (median over rounds); bar: range "
               "of the round p50s; whisker: tick at p90, top at p99")
    return fig


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


def fig_flips(ctx: Context):
    """The first flipped test images, each with its label and both predictions."""
    rows = flips(ctx)
    images = ctx.test_images()
    if not rows or images is None:
        return None
    names = ctx.class_names()
    shown = rows[:MAX_FLIP_IMAGES]
    cols = min(len(shown), 8)
    lines = (len(shown) + cols - 1) // cols
    fig = _new_figure(1.45 * cols, 2.0 * lines)
    axes = np.atleast_1d(fig.subplots(lines, cols, squeeze=False)).ravel()

    def name(c):
        return "not recorded" if c is None else names[int(c)]

    for ax, row in zip(axes, shown):
        ax.imshow(images[0][row["index"]], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"#{row['index']} {title(row['model'])}\ntrue: {name(row['label'])}\n"
                     f"native: {name(row['native'])}\n"
                     f"{row['runtime']}: {name(row['runtime_prediction'])}", fontsize=6.5)
    for ax in axes:
        ax.set_axis_off()
    return fig


FIGURES: dict[str, Callable[[Context], object]] = {
    "training": fig_training, "confusion": fig_confusion, "per_class": fig_per_class,
    "parity": fig_parity, "latency": fig_latency, "flips": fig_flips,
}


def render_figure(fig, fmt: str = "svg", dpi: float | None = None) -> bytes:
    """A figure's bytes, deterministic for the same input (fixed salt, no dates)."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context(RC):
        meta = {"Date": None} if fmt == "svg" else {"Software": None}
        fig.savefig(buf, format=fmt, metadata=meta, dpi=dpi or RC["savefig.dpi"])
    return buf.getvalue()


def _make(name: str, ctx: Context):
    import matplotlib

    with matplotlib.rc_context(RC):
        return FIGURES[name](ctx)


def figure_html(ctx: Context, name: str, alt: str, fmt: str = "svg") -> str:
    """An <img> with the figure as a data URI, or a note that there is nothing to draw."""
    fig = _make(name, ctx)
    if fig is None:
        return ""
    data = render_figure(fig, fmt)
    w, h = (fig.get_size_inches() * RC["savefig.dpi"]).round().astype(int)
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return (f'<figure><img src="{uri}" width="{w}" height="{h}" alt="{escape(alt)}">'
            f"<figcaption>{escape(alt)}</figcaption></figure>")


# ---------------------------------------------------------------------------------------------
# Sections


def _main_table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """validate.report.markdown.main_table's Markdown lines as a header and rows."""
    lines = main_table(report)
    if not lines:
        return [], []
    split = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines]
    return split[0], [r for r in split[2:]]


def sec_verdict(ctx: Context) -> str:
    """The verdict, every failure, and the TensorFlow vs PyTorch table."""
    r = ctx.report
    passed = bool(r.get("passed"))
    tol = r.get("tolerances") or {}
    out = [f'<p class="verdict {"pass" if passed else "fail"}">'
           f'{"PASSED" if passed else "FAILED"}</p>',
           f'<p>Every available runtime within its tolerance of the native model on all test '
           f'images, top-1 agreement &ge; {percent(tol.get("min_agreement", 1.0))}, '
           f"accuracy equal, batch-invariant, deterministic.</p>"]
    try:

        bad = errors(r) + failures(r)
    except Exception as exc:  # an unexpected report shape: say it, keep the page
        bad = [f"(failures could not be listed: {one_line(exc)})"]
    if bad:
        out.append("<ul class=\"bad\">" + "".join(f"<li>{escape(b)}</li>" for b in bad)
                   + "</ul>")
    for fw, m in ctx.models.items():
        if "error" in m:
            out.append(missing(f"{title(fw)}: not validated: {m['error']}"))
    header, rows = _main_table_rows(r)
    if rows:
        out.append("<h3>TensorFlow vs PyTorch</h3>" + table(header, rows, "main"))
    elif not ctx.ok_models():
        out.append(missing("no model was validated: no comparison table"))
    else:  # validated, but alone (no reference.npz) or a model of another kind
        out.append(missing("no comparison table: it needs a LeNet-5 model validated against "
                           "its native model on the full test set (reference.npz)"))
    cross = r.get("cross_framework")
    if cross:
        out.append(f"<p>Across frameworks (two differently trained models, no tolerance): their "
                   f"ONNX predictions agree on {cross['agreement']:.2%} of the test images "
                   f"({cross['disagreements']:,} differ).</p>")
    unavailable: dict[str, str] = {}
    for m in ctx.models.values():
        for name, rt in (m.get("runtimes") or {}).items():
            if rt.get("status") == "unavailable":
                unavailable.setdefault(name, rt.get("reason") or (
                    (r.get("runners") or {}).get(name) or {}).get("reason", ""))
    if unavailable:
        out.append('<p class="note">Unavailable here: ' + escape("; ".join(
            f"{n} ({why})" if why else n for n, why in sorted(unavailable.items()))) + "</p>")
    return "".join(out)


def sec_training(ctx: Context) -> str:
    """Training curves, with the per-epoch numbers and each recipe."""
    if not ctx.ok_models():
        return missing("no model was validated: no training curves")
    out = [figure_html(ctx, "training", "Training loss and accuracy per epoch, both frameworks")]
    fws = [fw for fw in ctx.ok_models()
           if (ctx.models[fw].get("training") or {}).get("history")]
    for fw in ctx.ok_models():
        if fw not in fws:
            out.append(missing(f"{title(fw)}: no training history in report.json "
                               "(history.json missing or the model was not trained here)"))
    if fws:
        epochs = sorted({h["epoch"] for fw in fws for h in ctx.models[fw]["training"]["history"]})
        by = {fw: {h["epoch"]: h for h in ctx.models[fw]["training"]["history"]} for fw in fws}
        header = ["epoch"] + [f"{title(fw)} {k}" for fw in fws
                              for k in ("loss", "accuracy", "seconds", "images/s")]
        rows = [[e] + [v for fw in fws for v in (
            (by[fw][e]["loss"], by[fw][e]["accuracy"], by[fw][e].get("seconds"),
             by[fw][e].get("images_per_second")) if e in by[fw] else ("", "", "", ""))]
            for e in epochs]
        out.append(details("per-epoch numbers", table(header, rows)))
        recipe = [[title(fw)] + [ctx.models[fw]["training"].get("recipe", {}).get(k)
                                 for k in ("epochs", "batch_size", "learning_rate", "seed",
                                           "limit")]
                  + [ctx.models[fw]["training"].get("test_accuracy")] for fw in fws]
        out.append(table(["model", "epochs", "batch", "learning rate", "seed",
                          "training images (limit)", "test accuracy"], recipe))
    return "".join(out)


def sec_confusion(ctx: Context) -> str:
    """Both confusion matrices, with their counts."""
    if not ctx.ok_models():
        return missing("no model was validated: no confusion matrices")
    out = [figure_html(ctx, "confusion", "Confusion matrices (rows: true class; colour: "
                                         "fraction of the row; numbers: counts)")]
    names = ctx.class_names()
    for fw in ctx.ok_models():
        conf = _confusion(ctx.models[fw])
        if conf is None:
            out.append(missing(f"{title(fw)}: no confusion matrix in report.json"))
            continue
        rows = [[names[i] if i < len(names) else i] + list(r) for i, r in enumerate(conf[1])]
        out.append(details(f"{title(fw)} confusion matrix ({conf[0]}) as numbers",
                           table(["true \\ predicted"] + names, rows)))
    return "".join(out)


def sec_per_class(ctx: Context) -> str:
    """Per-class accuracy, both models, figure and table."""
    acc = per_class(ctx)
    if not acc:
        return missing("no per-class accuracy in report.json")
    names = ctx.class_names()
    rows = [[f"{i} {n}"] + [acc[fw][i] for fw in acc] for i, n in enumerate(names)]
    return (figure_html(ctx, "per_class", "Per-class test accuracy, both models")
            + table(["class"] + [title(fw) for fw in acc], rows))


def sec_parity(ctx: Context) -> str:
    """The |native - runtime| histograms and the parity table per runtime."""
    out = [figure_html(ctx, "parity", "Histogram of |native - runtime| over every probability "
                                      "of every test image, per model and runtime; dashed: "
                                      "the tolerance")]
    rows, reasons = [], {}
    for fw in ctx.ok_models():
        for name, r in (ctx.models[fw].get("runtimes") or {}).items():
            if r.get("status") == "unavailable":
                reasons[name] = r.get("reason", "")
                rows.append([title(fw), name] + [""] * 5 + [r.get("tolerance")] + [""] * 3
                            + [_Raw('<span class="muted">unavailable</span>')])
                continue
            if "max_abs_diff" not in r:  # failed before comparing: say why
                reasons[name] = r.get("reason", "")
            check, inv = r.get("tolerance_check") or {}, r.get("invariance") or {}
            if check.get("status") in ("flaky", "loose"):
                reasons[f"{title(fw)} {name}"] = f"warning: {check.get('message', '')}"
            rows.append([title(fw), name, r.get("max_abs_diff"), r.get("mean_abs_diff"),
                         r.get("vs_exact_max_abs_diff"), r.get("flip_count"), r.get("accuracy"),
                         r.get("tolerance"), check.get("status"),
                         inv.get("batch_max_abs_diff"), inv.get("rerun_identical"),
                         _Raw('<b class="ok">PASS</b>' if r.get("passed")
                              else '<b class="ko">FAIL</b>')])
    if rows:
        out.append(table(["model", "runtime", "max |diff|", "mean |diff|", "vs float64",
                          "flips", "accuracy", "tolerance", "noise floor check",
                          "batch 1 vs 256", "rerun identical", "result"], rows))
        by_reason: dict[str, list[str]] = {}
        for n, why in reasons.items():
            if why:
                by_reason.setdefault(why, []).append(n)
        out += [f'<p class="note">{escape(", ".join(ns))}: {escape(why)}</p>'
                for why, ns in by_reason.items()]
    else:
        out.append(missing("no runtime results in report.json"))
    hist = [[title(fw), name] + list(r["diff_histogram"]["counts"])
            for fw in ctx.ok_models() for name, r in _hist_runtimes(ctx.models[fw])]
    if hist:
        edges = next(r["diff_histogram"]["edges"] for fw in ctx.ok_models()
                     for _, r in _hist_runtimes(ctx.models[fw]))
        bins = [f"[{_fmt(a)}, {_fmt(b)})" for a, b in zip(edges, edges[1:])]
        out.append(details("histogram counts", table(["model", "runtime"] + bins, hist)))
    return "".join(out)


def sec_latency(ctx: Context) -> str:
    """p50/p90/p99 per batch size and runtime, figure and every row."""
    out = [figure_html(ctx, "latency", "Latency per batch: p50 (dot), p90 (tick), p99 (top of "
                                       "the whisker), log axis")]
    method = ctx.report.get("latency_method")
    if method:
        out.append(f'<p class="note">{escape(method)}.</p>')
    conditions = latency_conditions(ctx.report)
    if conditions:
        out.append("<ul>" + "".join(f"<li>{escape(text)}</li>" for _, text in conditions)
                   + "</ul>")
    rows = [[title(fw), _latency_label(fw, r), r.get("provider"), r.get("batch_size"),
             r.get("threads"), r.get("rounds", 1), r.get("runs"), r.get("p50_ms"),
             (f"{r['p50_min_ms']:g}-{r['p50_max_ms']:g}" if "p50_min_ms" in r else None),
             spread_cell(r) if "spread" in r else None,
             r.get("p90_ms"), r.get("p99_ms"),
             round(r["images_per_second"]) if r.get("images_per_second") else None]
            for fw in ctx.ok_models() for r in ctx.models[fw].get("latency") or []]
    if rows:
        noisy = sum(bool(r.get("noisy")) for fw in ctx.ok_models()
                    for r in ctx.models[fw].get("latency") or [])
        out.append(details(f"all {len(rows)} latency rows ({noisy} noisy)", table(
            ["model", "runtime", "provider", "batch", "threads", "rounds", "runs",
             "p50 ms", "p50 range ms", "spread", "p90 ms", "p99 ms", "images/s"], rows)))
    else:
        out.append(missing(NO_LATENCY))
    speed = [[title(fw), s["runner"], s["baseline"], s["batch_size"], s["threads"],
              f"{s['speedup']:.2f}x", f"{s['speedup_min']:.2f}-{s['speedup_max']:.2f}x",
              spread_cell(s), best_cell(s), s.get("rounds")]
             for fw in ctx.ok_models() for s in ctx.models[fw].get("speedups") or []]
    if speed:
        out.append(details("speed-up over the native framework, round by round", table(
            ["model", "runtime", "vs", "batch", "threads", "speed-up (median)", "range",
             "spread", "fastest rounds", "rounds"], speed)))
    return "".join(out)


def sec_flips(ctx: Context) -> str:
    """Flipped test images with both predictions, or "none"."""
    rows = flips(ctx)
    ran = any(r.get("status") not in ("unavailable", None) and "flips" in r
              for fw in ctx.ok_models() for r in (ctx.models[fw].get("runtimes") or {}).values())
    if not rows:
        return ('<p class="none">none: every runtime gave the native model\'s top-1 class on '
                "every test image</p>" if ran else missing("no runtime compared predictions"))
    names = ctx.class_names()

    def name(c):
        return "not recorded" if c is None else f"{c} {names[int(c)]}"

    out = [figure_html(ctx, "flips", f"Flipped test images (the first {MAX_FLIP_IMAGES})",
                       fmt="png")]
    if ctx.test_images() is None:
        out.append(missing("test images unavailable: indices and predictions only"))
    out.append(table(["model", "runtime", "test image", "true class", "native", "runtime says"],
                     [[title(r["model"]), r["runtime"], r["index"], name(r["label"]),
                       name(r["native"]), name(r["runtime_prediction"])] for r in rows]))
    return "".join(out)


def _model_part(key: str, what: str) -> Callable[[Context], str]:
    """A section rendering report["models"][fw][key] generically, when present."""
    def section(ctx: Context) -> str:
        root = ctx.report.get("target")
        parts = [f"<h3>{escape(title(fw))}</h3>{generic(ctx.models[fw][key], root=root)}"
                 for fw in ctx.models if ctx.models[fw].get(key) is not None]
        return "".join(parts) or missing(f"no {what} in this report")
    return section


def sec_conversion(ctx: Context) -> str:
    """Per trained model: every same-weights conversion against its own reference."""
    out = []
    for fw, m in ctx.models.items():
        c = m.get("conversion")
        if not c:
            continue
        gate = (f"same weights: each row within {c.get('atol', 1e-5):g} of the trained model's "
                f"own probabilities, {c.get('max_flips', 0)} flips, on {c.get('images', 0):,} "
                f"test images. Verdict: {'passed' if c.get('passed') else 'FAILED'}.")
        rows = []
        for r in c.get("rows", []):
            verdict = ("pass" if r.get("passed") else "FAIL" if r.get("passed") is False
                       else r.get("status", ""))
            if r.get("status") not in (None, "ok"):
                verdict = f"{verdict}: {r.get('status')}"
            if r.get("note"):  # e.g. what was changed for a converter (same function)
                verdict = f"{verdict} ({r['note']})"
            rows.append([r.get("name"), r.get("made_by"), r.get("runs_in"),
                         _sci(r.get("max_abs_diff")), r.get("flip_count"),
                         r.get("accuracy"), verdict])
        out.append(f"<h3>{escape(title(fw))}-trained model</h3><p>{escape(gate)}</p>")
        out.append(table(["conversion", "made by", "runs in", "max |diff|", "flips",
                          "accuracy", "verdict"], rows))
        if c.get("layers"):
            out.append(f"<p>twin.onnx, layer by layer: {escape(c['layers'].get('message', ''))}"
                       "</p>")
    return "".join(out) or missing("no conversion matrix in this report")


def _sci(x: object) -> str:
    return "—" if not isinstance(x, (int, float)) else f"{x:.2e}"


def sec_models(ctx: Context) -> str:
    """The ONNX files: size, sha256, opset, producer and metadata."""
    order = [fw for fw in ("tf", "torch") if fw in ctx.models]
    fws = [fw for fw in order + [k for k in ctx.models if k not in order]
           if ctx.models[fw].get("facts")]
    if not fws:
        return missing("no model facts in report.json")
    facts = {fw: ctx.models[fw]["facts"] for fw in fws}
    keys = ["file", "bytes", "sha256", "opset", "parameters", "producer"]
    rows = [[k] + [facts[fw].get(k) for fw in fws] for k in keys]
    meta_keys = list(dict.fromkeys(k for fw in fws for k in facts[fw].get("metadata") or {}))
    rows += [[f"metadata: {k}"] + [(facts[fw].get("metadata") or {}).get(k) for fw in fws]
             for k in meta_keys]
    rows += [["architecture (trained)"] + [(ctx.models[fw].get("training") or {}).get(
        "architecture") for fw in fws]]
    return table([""] + [title(fw) for fw in fws], rows, "kv wide")


def sec_runtimes(ctx: Context) -> str:
    """Every runtime, what it is, its tolerance, and whether it ran here."""
    runners = ctx.report.get("runners") or {}
    if not runners:
        return missing("no runtime list in report.json")
    return table(["runtime", "what it is", "tolerance", "here"], [
        [name, r.get("description"), r.get("tolerance"),
         "available" if r.get("available") else f"unavailable: {r.get('reason', '')}"]
        for name, r in runners.items()])


def sec_environment(ctx: Context) -> str:
    """Versions and hardware the run used."""
    env = dict(ctx.report.get("environment") or {})
    if not env:
        return missing("no environment in report.json")
    cuda = env.pop("cuda", None)
    if isinstance(cuda, dict):
        env["CUDA execution provider"] = ("available" if cuda.get("available")
                                          else f"unavailable: {cuda.get('reason', '')}")
    for fw in ctx.ok_models():
        versions = (ctx.models[fw].get("training") or {}).get("versions") or {}
        for k, v in versions.items():
            if k not in ("python", "numpy", "platform"):
                env.setdefault(k, v)
    return table(["", ""], [[k, v] for k, v in env.items()], "kv")


def sec_reproduce(ctx: Context) -> str:
    """The command, and the settings that make the run repeatable."""
    r = ctx.report
    command = r.get("command")
    out = [f"<pre><code>{escape(command or DEFAULT_COMMAND)}</code></pre>"]
    if not command:
        out.append('<p class="note">report.json does not record the exact command; this is '
                   "the full recipe (add <code>--quick</code> for the one-epoch smoke run). "
                   "The recipe each model was trained with is in the training section.</p>")
    if r.get("target"):
        out.append(f"<p>Validate the same models again (onnxruntime and numpy only):</p>"
                   f"<pre><code>python -m validate {escape(shlex.quote(str(r['target'])))}"
                   "</code></pre>")
    tol = r.get("tolerances") or {}
    lim = r.get("limits") or {}
    out.append(table(["", ""], [[f"tolerance: {k}", "each runtime's own" if v is None else v]
                                for k, v in tol.items()]
                     + [[f"limit: {k}", v] for k, v in lim.items()]
                     + [["report schema", r.get("schema_version")]], "kv"))
    return "".join(out)


SECTIONS: list[tuple[str, str, Callable[[Context], str]]] = [
    ("verdict", "Verdict", sec_verdict),
    ("training", "Training curves", sec_training),
    ("confusion", "Confusion matrices", sec_confusion),
    ("per-class", "Accuracy per class", sec_per_class),
    ("parity", "Parity: native vs ONNX, per runtime", sec_parity),
    ("latency", "Latency", sec_latency),
    ("flips", "Flipped images", sec_flips),
    ("conversion", "Conversion matrix", sec_conversion),
    ("precision", "Quantized models", _model_part("precision", "quantized models")),
    ("layers", "Per-layer diagnosis", _model_part("layers", "per-layer diagnosis")),
    ("models", "Models", sec_models),
    ("runtimes", "Runtimes", sec_runtimes),
    ("environment", "Environment", sec_environment),
    ("reproduce", "How to reproduce", sec_reproduce),
]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 margin:0;color:#1d2430;background:#f6f7f9;line-height:1.45;font-size:15px}
main{max-width:1160px;margin:0 auto;padding:24px 28px 60px;background:#fff;
 box-shadow:0 0 0 1px #e3e6ea}
h1{font-size:1.55em;margin:.2em 0 .1em}h2{font-size:1.2em;margin:1.8em 0 .5em;
 padding-bottom:.2em;border-bottom:2px solid #e3e6ea}h3{font-size:1.02em;margin:1.2em 0 .4em}
h4{font-size:.95em;margin:.8em 0 .3em}
nav{font-size:.88em;margin:.4em 0 1em;color:#5b6472}nav a{margin-right:.9em;color:#1f5fa8;
 text-decoration:none}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.86em;
 font-variant-numeric:tabular-nums}
th,td{border:1px solid #dde1e6;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef1f4}tbody tr:nth-child(even){background:#fafbfc}
table.main td:first-child,table.kv td:first-child{font-weight:600;white-space:nowrap}
table.wide td{word-break:break-all}
.verdict{display:inline-block;font-weight:700;font-size:1.3em;padding:.15em .7em;
 border-radius:6px;color:#fff;margin:.3em 0}
.verdict.pass{background:#1e8e3e}.verdict.fail{background:#c5221f}
.ok{color:#1e8e3e}.ko{color:#c5221f}.muted{color:#6b7380}
ul.bad{color:#c5221f}.missing{color:#9a6700;background:#fff8e1;padding:.3em .6em;
 border-left:3px solid #f2c744}
.none{color:#1e8e3e;font-weight:600}.note{color:#5b6472;font-size:.9em}
figure{margin:.6em 0}figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.85em;color:#5b6472}
details{margin:.3em 0 .8em}summary{cursor:pointer;color:#1f5fa8;font-size:.9em}
pre{background:#f1f3f5;padding:.6em .8em;border-radius:4px;overflow-x:auto}
code{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.92em}
.sub{margin-left:.8em}.scroll{overflow-x:auto;max-width:100%}
table.generic td{max-width:26em;overflow-wrap:break-word}
"""


def render(report: dict, data_dir: str | None = None) -> str:
    """The whole page as a string (same report and data -> same bytes)."""
    ctx = Context(report, data_dir)
    body = []
    for anchor, heading, build in SECTIONS:
        try:
            inner = build(ctx)
        except Exception as exc:  # one broken section must not cost the others
            inner = missing(f"this section could not be drawn: {one_line(exc)}")
        body.append(f'<section id="{anchor}"><h2>{escape(heading)}</h2>{inner}</section>')
    if ctx.notes:
        body.append('<section id="notes"><h2>Not shown</h2><ul>' + "".join(
            f"<li>{escape(n)}</li>" for n in dict.fromkeys(ctx.notes)) + "</ul></section>")
    nav = "".join(f'<a href="#{a}">{escape(h.split(":")[0])}</a>' for a, h, _ in SECTIONS)
    verdict = "PASSED" if report.get("passed") else "FAILED"
    head_title = f"LeNet-5 ONNX parity report: {verdict}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            # no network, ever: this page only shows what it carries
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "img-src data:; style-src 'unsafe-inline'\">"
            f"<title>{escape(head_title)}</title><style>{CSS}</style></head><body><main>"
            "<h1>LeNet-5 on Fashion-MNIST: TensorFlow vs PyTorch, and their ONNX exports</h1>"
            f"<nav>{nav}</nav>" + "".join(body) + "</main></body></html>\n")


def write_html(report: dict, folder: Path, data_dir: str | None = None) -> Path:
    """Write folder/report.html atomically; return its path."""
    path = Path(folder) / "report.html"
    write_text(path, render(report, data_dir))
    return path


def save_png(report: dict, name: str, path: Path, data_dir: str | None = None) -> Path:
    """Save one figure of the report (a FIGURES name) as a PNG, e.g. for a README."""
    if name not in FIGURES:
        raise ToolkitError(f"--png {name}: no such figure (one of {', '.join(FIGURES)})")
    fig = _make(name, Context(report, data_dir))
    if fig is None:
        raise ToolkitError(f"--png {name}: the report has nothing to draw for it")
    write_bytes(path, render_figure(fig, "png", dpi=PNG_DPI))
    return Path(path)
