"""The sections of report.html, in page order (SECTIONS): each turns the Context into HTML,
its figure beside the numbers it draws."""

from __future__ import annotations

import base64
import shlex
from html import escape
from typing import Callable

from validate.model import report as model_report
from validate.report import consumers
from validate.report.context import (
    Context, confusion, flips, hist_runtimes, latency_label, one_line, per_class, title)
from validate.report.figures import MAX_FLIP_IMAGES, RC, make_figure, render_figure
from validate.report.markdown import (best_cell, latency_conditions, main_table, only_exports,
                                      spread_cell)
from validate.report.markup import Raw, cell_text, details, generic, missing, table
from validate.report.text import NO_LATENCY, percent
from validate.report.verdict import errors, failures, warnings

DEFAULT_COMMAND = "python -m convert all"


def figure_html(ctx: Context, name: str, alt: str, fmt: str = "svg") -> str:
    """An <img> with the figure as a data URI; empty when there is nothing to draw."""
    fig = make_figure(name, ctx)
    if fig is None:
        return ""
    data = render_figure(fig, fmt)
    w, h = (fig.get_size_inches() * RC["savefig.dpi"]).round().astype(int)
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return (f'<figure><img src="{uri}" width="{w}" height="{h}" alt="{escape(alt)}">'
            f"<figcaption>{escape(alt)}</figcaption></figure>")


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
           f"<p>Every available runtime within its tolerance of the native model "
           f"{'on every output and real input' if only_exports(r) else 'on all test images'}, "
           f'top-1 agreement &ge; {percent(tol.get("min_agreement", 1.0))}, '
           f"accuracy equal, batch-invariant, deterministic.</p>"]
    try:
        bad, warned = errors(r) + failures(r), warnings(r)
    except Exception as exc:  # an unexpected report shape: say it, keep the page
        bad, warned = [f"(failures could not be listed: {one_line(exc)})"], []
    if bad:
        out.append("<ul class=\"bad\">" + "".join(f"<li>{escape(b)}</li>" for b in bad)
                   + "</ul>")
    if warned:
        out.append("<ul class=\"warn\">" + "".join(f"<li>{escape(w)}</li>" for w in warned)
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
            out.append(missing(f"{title(fw)}: a model export: training curves are LeNet-5 only"
                               if ctx.models[fw].get("kind") == "model" else
                               f"{title(fw)}: no training history in report.json "
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
        conf = confusion(ctx.models[fw])
        if conf is None:
            out.append(missing(f"{title(fw)}: a model export: the confusion matrix is LeNet-5 "
                               "only" if ctx.models[fw].get("kind") == "model" else
                               f"{title(fw)}: no confusion matrix in report.json"))
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
    exports = only_exports(ctx.report)
    out = [figure_html(ctx, "parity", "Histogram of |native - runtime| / the output's magnitude "
                                      "over every value of every output and input, per model "
                                      "and runtime; dashed: the tolerance" if exports else
                                      "Histogram of |native - runtime| over every probability "
                                      "of every test image, per model and runtime; dashed: "
                                      "the tolerance")]
    rows, reasons = [], {}
    for fw in ctx.ok_models():
        if ctx.models[fw].get("kind") == "model":  # per output: its own section
            continue
        for name, r in (ctx.models[fw].get("runtimes") or {}).items():
            if r.get("status") == "unavailable":
                reasons[name] = r.get("reason", "")
                rows.append([title(fw), name] + [""] * 5 + [r.get("tolerance")] + [""] * 3
                            + [Raw('<span class="muted">unavailable</span>')])
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
                         Raw('<b class="ok">PASS</b>' if r.get("passed")
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
    elif not exports:  # a model export's table is per output, in its own section
        out.append(missing("no runtime results in report.json"))
    hist = [[title(fw), name] + list(r["diff_histogram"]["counts"])
            for fw in ctx.ok_models() for name, r in hist_runtimes(ctx.models[fw])]
    if hist:
        edges = next(r["diff_histogram"]["edges"] for fw in ctx.ok_models()
                     for _, r in hist_runtimes(ctx.models[fw]))
        bins = [f"[{cell_text(a)}, {cell_text(b)})" for a, b in zip(edges, edges[1:])]
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
    rows = [[title(fw), latency_label(fw, r), r.get("provider"), r.get("batch_size"),
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
    """A difference in scientific notation, a dash when there is none."""
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


def sec_consumers(ctx: Context) -> str:
    """Per shipped lenet5.onnx, the consumers that load it as it is."""
    rows = consumers.rows(ctx.models)
    if not rows:
        return missing("no LeNet-5 model was validated: no consumers table")
    return table(["consumer"] + [title(fw) for fw in consumers.labels(ctx.models)], rows)


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


def _lenet_only(build: Callable[[Context], str]) -> Callable[[Context], str | None]:
    """A section about LeNet-5's training, test set or twins: left out of a report that holds
    model exports only (their section says what is LeNet-5 only)."""
    def section(ctx: Context) -> str | None:
        return None if only_exports(ctx.report) else build(ctx)
    return section


SECTIONS: list[tuple[str, str, Callable[[Context], str | None]]] = [
    ("verdict", "Verdict", sec_verdict),
    ("training", "Training curves", _lenet_only(sec_training)),
    ("confusion", "Confusion matrices", _lenet_only(sec_confusion)),
    ("per-class", "Accuracy per class", _lenet_only(sec_per_class)),
    ("parity", "Parity: native vs ONNX, per runtime", sec_parity),
    ("model-exports", "Models of your own: parity per output", model_report.html_section),
    ("latency", "Latency", sec_latency),
    ("flips", "Flipped images", _lenet_only(sec_flips)),
    ("conversion", "Conversion matrix", _lenet_only(sec_conversion)),
    ("consumers", "Consumers of the shipped files", _lenet_only(sec_consumers)),
    ("precision", "Quantized models", _model_part("precision", "quantized models")),
    ("layers", "Per-layer diagnosis", _model_part("layers", "per-layer diagnosis")),
    ("models", "Models", sec_models),
    ("runtimes", "Runtimes", sec_runtimes),
    ("environment", "Environment", sec_environment),
    ("reproduce", "How to reproduce", sec_reproduce),
]
