"""report.html's figures, drawn by matplotlib: each returns a Figure, or None when the report
has nothing to draw for it; FIGURES names them for the page and for --png.

Needs numpy and matplotlib only (no framework).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np

from train.core.errors import ToolkitError
from train.core.fileio import write_bytes
from validate.report.context import (
    Context, confusion, flips, hist_runtimes, latency_label, per_class, title)

FW_COLORS = {"tf": "#e8710a", "torch": "#1f5fa8"}
RUNTIME_COLORS = {
    "native": "#222222", "onnxruntime-cpu": "#2ca02c", "onnxruntime-cuda": "#bcbd22",
    "onnx-reference": "#7f7f7f", "onnxruntime-node": "#9467bd", "onnxruntime-web": "#8c564b",
    "browser": "#e377c2",
}
OTHER_COLORS = ("#17becf", "#d62728", "#ff7f0e", "#1f77b4", "#aec7e8", "#98df8a")
LINESTYLES = ("-", "--", "-.", ":")
MAX_FLIP_IMAGES = 16   # drawn; every flip is listed in the table
PNG_DPI = 150          # --png figures (a README): sharper than the page's

# Fixed style, so the same report.json gives the same bytes: matplotlib's own font (DejaVu
# Sans, drawn as paths: no font needed to view), a fixed SVG id salt, no dates in metadata.
RC = {
    "svg.hashsalt": "lenet5-onnx",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.titley": 1.0,  # just above the axes (nothing is drawn there): no measuring of axes
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


def _new_figure(width: float, height: float):
    """A figure outside pyplot (no global backend state; the Agg/SVG canvas draws it), with no
    layout engine: each figure places its axes itself (_grid), in inches. A layout engine
    measures every label again before drawing: it took half of a report's figure time."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=None)


def _grid(fig, rows: int, cols: int, left: float, right: float, bottom: float, top: float,
          wgap: float = 0.0, hgap: float = 0.0) -> dict:
    """gridspec_kw placing a rows x cols grid of axes with these margins and gaps (inches)."""
    width, height = fig.get_size_inches()
    axes_w = (width - left - right - wgap * (cols - 1)) / cols
    axes_h = (height - top - bottom - hgap * (rows - 1)) / rows
    return dict(left=left / width, right=1 - right / width, bottom=bottom / height,
                top=1 - top / height, wspace=wgap / axes_w, hspace=hgap / axes_h)


def _text_width(labels, size: float) -> float:
    """The widest label's width in inches at this font size (the style's font)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    prop = FontProperties(family=RC["font.family"], size=size)
    measure = TextToPath().get_text_width_height_descent
    return max((measure(str(t), prop, ismath=False)[0] for t in labels), default=0.0) / 72


def _runtime_color(name: str, seen: dict[str, str]) -> str:
    """A runtime's fixed colour; an unknown runtime takes the next spare one."""
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

    ax_loss, ax_acc = fig.subplots(1, 2, gridspec_kw=_grid(fig, 1, 2, left=0.7, right=0.15,
                                                            bottom=0.5, top=0.3, wgap=0.85))
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
    mats = [(fw, confusion(ctx.models[fw])) for fw in ctx.ok_models()]
    mats = [(fw, m) for fw, m in mats if m is not None]
    if not mats:
        return None
    names = ctx.class_names()
    fig = _new_figure(5.4 * len(mats), 5.2)
    # room for the class names: beside the rows, and below the columns (turned 45 degrees)
    label = _text_width(names, RC["ytick.labelsize"])
    side = 0.4 + label
    axes = np.atleast_1d(fig.subplots(1, len(mats), gridspec_kw=_grid(
        fig, 1, len(mats), left=side, right=0.15, bottom=0.45 + 0.72 * label, top=0.3,
        wgap=side + 0.1)))
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


def fig_per_class(ctx: Context):
    """Per-class test accuracy, both models side by side."""
    acc = per_class(ctx)
    if not acc:
        return None
    names = ctx.class_names()
    fig = _new_figure(8, 4.2)
    left = 0.25 + _text_width(names, RC["ytick.labelsize"])
    ax = fig.subplots(gridspec_kw=_grid(fig, 1, 1, left=left, right=0.2, bottom=0.5, top=0.3))
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


def fig_parity(ctx: Context):
    """|native - ONNX| histograms per model and runtime, log axis, tolerance lines."""
    panels = [(fw, hist_runtimes(ctx.models[fw])) for fw in ctx.ok_models()]
    panels = [(fw, rs) for fw, rs in panels if rs]
    if not panels:
        return None
    fig = _new_figure(5.2 * len(panels), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True, gridspec_kw=_grid(
        fig, 1, len(panels), left=0.75, right=0.15, bottom=0.5, top=0.3, wgap=0.2)))
    seen: dict[str, str] = {}
    for ax, (fw, runtimes) in zip(axes, panels):
        lowest = 1.0
        tolerances = {}
        several = len({r.get("tolerance") for _, r in runtimes if r.get("tolerance")}) > 1
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
                      ls=LINESTYLES[k % len(LINESTYLES)],
                      label=f"{name} (tolerance {r['tolerance']:g})" if several else name)
            if r.get("tolerance"):
                tolerances.setdefault(float(r["tolerance"]), []).append(name)
        # the runtimes each line belongs to are in the legend: names here would not fit
        for i, tol in enumerate(sorted(tolerances)):
            ax.axvline(tol, color="#d62728", ls="--", lw=1.2)
            ax.text(tol, 0.98 - 0.06 * i, f" tolerance {tol:g}",
                    transform=ax.get_xaxis_transform(), color="#d62728", fontsize=7.5,
                    va="top", ha="left")
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_xlim(lowest, 1.0)
        ticks = [lowest] + [10.0 ** e for e in range(-12, 1, 2) if 10.0 ** e > lowest]
        ax.set_xticks(ticks, ["0"] + [f"1e{int(round(np.log10(t)))}" if t < 1 else "1"
                                      for t in ticks[1:]])
        ax.minorticks_off()
        relative = ctx.models[fw].get("kind") == "model"  # outputs of any magnitude
        ax.set(title=f"{title(fw)}: |native - runtime|" + (" / output magnitude" if relative
                                                           else " per probability"),
               xlabel=("relative difference (every value of every output)" if relative
                       else "absolute difference (10 probabilities x 10,000 images)"),
               ylabel="count (symlog)")
        ax.legend(loc="lower left")  # small differences are never rare: that corner stays empty
    return fig


def _slot(fw: str, row: dict) -> str:
    """The runtime a latency row belongs to, with every native framework as "native"."""
    label = latency_label(fw, row)
    return "native" if label.startswith("native (") else label


LEGEND_COLUMNS = 4  # the latency legend's runtimes per row: wider rows crowd out the axes


def fig_latency(ctx: Context):
    """p50 per batch size with p90/p99 whiskers, every runtime, log axis; one panel per
    model and thread count."""
    fws = [fw for fw in ctx.ok_models() if ctx.models[fw].get("latency")]
    if not fws:
        return None
    threads = sorted({r["threads"] for fw in fws for r in ctx.models[fw]["latency"]})
    # one slot per runtime across every panel, so a runtime sits at the same offset everywhere
    slots = list(dict.fromkeys(_slot(fw, r) for fw in fws for r in ctx.models[fw]["latency"]))
    legend_rows = -(-len(slots) // LEGEND_COLUMNS)  # each row of the legend needs its height
    # the legend's title on one line, or on two under a single column of panels
    legend_title = ("dot: p50 (median over rounds); bar: range of the round p50s;"
                    + (" " if len(fws) > 1 else "\n") + "whisker: tick at p90, top at p99")
    legend_h = 0.2 * (legend_title.count("\n") + 1) + 0.2 * legend_rows  # title, runtimes
    fig = _new_figure(5.4 * len(fws), 3.3 * len(threads) + 0.2 + legend_h)
    axes = np.atleast_2d(fig.subplots(len(threads), len(fws), sharey=True, squeeze=False,
                                      gridspec_kw=_grid(fig, len(threads), len(fws), left=0.7,
                                                        right=0.15, bottom=0.35 + legend_h,
                                                        top=0.3, wgap=0.35, hgap=0.6)))
    seen: dict[str, str] = {}
    handles: dict[str, object] = {}
    width = 0.8 / len(slots)
    for col, fw in enumerate(fws):
        rows = ctx.models[fw]["latency"]
        batches = sorted({r["batch_size"] for r in rows})
        for line, t in enumerate(threads):
            ax = axes[line, col]
            series: dict[str, list[dict]] = {}
            for r in rows:
                if r["threads"] == t:
                    series.setdefault(latency_label(fw, r), []).append(r)
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
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center",
               bbox_to_anchor=(0.5, 0.02 / fig.get_size_inches()[1]),
               ncols=min(len(handles), LEGEND_COLUMNS), title=legend_title)
    return fig


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
    # Each cell a 1.45 x 2.0 in box, its four title lines in the top 0.6 in.
    titles, margin = 0.6, 0.05
    fig = _new_figure(1.45 * cols, 2.0 * lines)
    axes = np.atleast_1d(fig.subplots(lines, cols, squeeze=False, gridspec_kw=_grid(
        fig, lines, cols, left=margin, right=margin, bottom=margin, top=titles, wgap=0.08,
        hgap=titles))).ravel()

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


def make_figure(name: str, ctx: Context):
    """A FIGURES figure drawn in the fixed style, or None when there is nothing to draw."""
    import matplotlib

    with matplotlib.rc_context(RC):
        return FIGURES[name](ctx)


def save_png(report: dict, name: str, path: Path, data_dir: str | None = None) -> Path:
    """Save one figure of the report (a FIGURES name) as a PNG, e.g. for a README."""
    if name not in FIGURES:
        raise ToolkitError(f"--png {name}: no such figure (one of {', '.join(FIGURES)})")
    fig = make_figure(name, Context(report, data_dir))
    if fig is None:
        raise ToolkitError(f"--png {name}: the report has nothing to draw for it")
    write_bytes(path, render_figure(fig, "png", dpi=PNG_DPI))
    return Path(path)
