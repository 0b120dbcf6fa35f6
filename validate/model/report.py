"""How report.md, report.html and the verdict show a model export (`"kind": "model"` in
report.json): its spec, parity per runtime and per output under the gate of
validate.model.gate, the noise floor, batch invariance, accuracy, INT8/FP16. The latency and
the layer-by-layer sections are the ones LeNet-5 has. Nothing here runs a model.
"""

from __future__ import annotations

from html import escape

from validate.model import variants
from validate.model.gate import FLOOR_FACTOR
from validate.model.judge import failure_reasons
from validate.report.text import cell, title

GATE = ("each output within max(tolerance x its magnitude, {f:g} x the float64 noise floor) "
        "of the native model (integers equal), top-1 flips beyond ties within that limit "
        "counted against --min-agreement, batch 1 vs one batch within the same limit, "
        "reruns bit-identical").format(f=FLOOR_FACTOR)
HEADER = ["model", "runtime", "inputs", "output", "max abs diff", "scale", "relative",
          "limit", "vs float64", "flips (ties)", "batch 1 vs N", "rerun identical", "result"]


def models(report: dict) -> dict[str, dict]:
    """The model exports of a report that were validated."""
    return {k: m for k, m in (report.get("models") or {}).items()
            if m.get("kind") == "model" and "error" not in m}


def _e(x) -> str:
    return "n/a" if x is None else f"{x:.2e}"


def _result(r: dict) -> str:
    if r["status"] == "unavailable":
        return "unavailable: " + r.get("reason", "")
    if r["status"] == "failed" and "outputs" not in r:
        return "FAIL: " + "; ".join(failure_reasons(r))
    return "PASS" if r["passed"] else "FAIL"


def _output_cells(o: dict) -> list[str]:
    if o.get("kind") == "exact":
        return [f"{o['mismatches']} differ", "", "", "equal", "", ""]
    if o.get("max_abs_diff") is None:
        return [o.get("reason", "n/a"), "", "", "", "", ""]
    flips = (f"{o['flip_count']} ({len(o.get('ties', []))})" if "flip_count" in o else "")
    return [_e(o["max_abs_diff"]), f"{o['scale']:.3g}", _e(o["relative"]), _e(o["limit"]),
            _e(o.get("vs_exact")), flips]


def parity_rows(label: str, m: dict) -> list[list[str]]:
    """One row per runtime and output (one per runtime that did not run)."""
    rows = []
    for name, r in m.get("runtimes", {}).items():
        if "outputs" not in r:
            rows.append([title(label), name, str(r.get("inputs", "")), "", "", "", "", "",
                         "", "", "", "", _result(r)])
            continue
        inv = r["invariance"]
        for k, (out, o) in enumerate(r["outputs"].items()):
            tail = ([_e(inv["per_output"].get(out)), "yes" if inv["rerun_identical"] else "NO",
                     ("PASS" if o["passed"] else "FAIL") if k else _result(r)])
            rows.append([title(label), name, str(r["inputs"]), out] + _output_cells(o) + tail)
    return rows


def _spec_lines(label: str, m: dict) -> list[str]:
    s, data = m.get("spec", {}), m.get("spec", {}).get("data", {})
    ins = ", ".join(f"{i['name']} {i['dtype']} {i['shape']} ({i.get('layout', 'none')})"
                    for i in s.get("inputs", []))
    outs = ", ".join(f"{o['name']} {o['dtype']} {o['shape']}" for o in s.get("outputs", []))
    source = f"{data.get('source', '?')}" + (" (RANDOM inputs, as asked)" if data.get("random")
                                              else "")
    acc = m.get("model_accuracy")
    lines = [f"- {title(label)}: {s.get('framework', '?')} model `{s.get('factory', '?')}`, "
             f"{m['facts']['parameters']:,} parameters, opset {m['facts']['opset']}; inputs "
             f"{ins}; outputs {outs}; {m['inputs']} real inputs from {source}, labels "
             f"{'yes' if m.get('labels') else 'no'}"]
    if acc:
        lines.append(f"  - accuracy on output {acc['output']!r}: native {acc['native']:.4f} on "
                     f"{acc['inputs']} inputs; " + ", ".join(
                         f"{n} {a['accuracy']:.4f} ({a['inputs']})"
                         for n, a in acc["runtimes"].items()))
    unmapped = s.get("unmapped_layers") or {}
    if unmapped:
        items = (unmapped.items() if isinstance(unmapped, dict) else
                 ((u.get("layer"), u.get("reason")) for u in unmapped if isinstance(u, dict)))
        by_reason: dict[str, list[str]] = {}
        for layer, why in items:  # one reason usually covers many layers: name it once
            by_reason.setdefault(str(why), []).append(str(layer))
        lines.append(f"  - {sum(map(len, by_reason.values()))} layers not mapped for diagnosis: "
                     + "; ".join(f"{why}: {', '.join(names)}"
                                 for why, names in by_reason.items()))
    lines.append(f"  - not run: {m.get('lenet_only', 'LeNet-5 only parts')}")
    return lines


def noise_lines(label: str, m: dict) -> list[str]:
    nf = m.get("noise_floor") or {}
    if not nf.get("exact_runner"):
        return [f"- {title(label)}: no float64 reference ran; noise floor not measured"]
    return [f"- {title(label)}, output {o}: max |diff| from the exact (float64) answer on "
            f"{nf['inputs']} inputs: native {_e(v['native_vs_exact'])}, runtimes at least "
            f"{_e(v['floor'])} (the floor); scale {v['scale']:.3g}"
            for o, v in nf["outputs"].items()]


def precision_lines(found: dict[str, dict]) -> list[str]:
    out = []
    for label, m in found.items():
        p = m.get("precision")
        if not p:
            continue
        if "error" in p:
            out.append(f"- {title(label)} quantized models not evaluated: {p['error']}")
            continue
        made = (m.get("spec") or {}).get("variants") or {}
        for k in variants.PRECISIONS:
            e = p.get(k)
            if not e:
                if (made.get(k) or {}).get("reason"):  # the export could not make it: why
                    out.append(f"- {title(label)} {k.upper()}: not made at export: "
                               f"{made[k]['reason']}")
                continue
            what = (f"accuracy {e['accuracy']:.4f} vs FP32 {e['fp32_accuracy']:.4f} "
                    f"({e['delta_points']:+.2f} points)" if e["gate"] == "accuracy" else
                    f"top-1 agreement {e['top1_agreement']:.2%}" if "top1_agreement" in e
                    else "no class output")
            rel = ", ".join(f"{o} {v:.2e}" for o, v in e["relative_error"].items())
            out.append(f"- {title(label)} {k.upper()} ({e['file']}, {e['bytes'] / 1024:.0f} KiB"
                       f"): {what}; output error vs FP32 (relative) {rel}; gate "
                       f"{e['gate']}: {e['lost_inputs']} of {p['inputs']} inputs lost, at most "
                       f"{e['allowed_inputs']}: {'PASS' if e['passed'] else 'FAIL'}; speed "
                       f"{variants.precision.speed_text(e) or 'not timed'}")
    return out


def parity_table(report: dict) -> list[str]:
    """The parity table of every model export, per runtime and output ([] when none): in
    report.md, and on stdout after a validation."""
    found = models(report)
    if not found:
        return []
    return (["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
            + ["| " + " | ".join(cell(c) for c in row) + " |"
               for label, m in found.items() for row in parity_rows(label, m)])


def markdown_lines(report: dict) -> list[str]:
    """report.md's section for model exports ([] when the report has none)."""
    found = models(report)
    if not found:
        return []
    out = ["", "## Models of your own (model exports)", ""]
    for label, m in found.items():
        out += _spec_lines(label, m)
    out += ["", f"Gate: {GATE}. The float64 reference and the JavaScript runtimes run the first "
            "inputs only (column inputs).", ""] + parity_table(report)
    out += ["", "Noise floor:", ""] + [x for label, m in found.items()
                                       for x in noise_lines(label, m)]
    prec = precision_lines(found)
    if prec:
        out += ["", f"INT8 and FP16 variants (onnxruntime CPU, 1 thread; {variants.GATE_TEXT}):",
                ""] + prec
    return out


def failure_line(label: str, m: dict, layers: str = "") -> list[str]:
    """The verdict's parts for a failed model export (validate.report.verdict); LAYERS: where
    the layer-by-layer comparison puts the failure, when it ran."""
    parts = []
    failed = [(n, r) for n, r in m.get("runtimes", {}).items() if not r["passed"]]
    if failed:
        name, r = failed[0]
        parts.append(f"parity failed: {label} ({name}): {'; '.join(failure_reasons(r))}")
        if len(failed) > 1:
            parts.append(f"also failed in {', '.join(n for n, _ in failed[1:])}")
        if layers:
            parts.append(layers)
    if m.get("precision") and not m["precision"]["passed"]:
        parts += ([f"precision: {m['precision']['error']}"] if "error" in m["precision"]
                  else variants.failures(label, m["precision"]))
    return parts


def html_section(ctx) -> str | None:
    """report.html's section for model exports (None when the report has none: no section)."""
    from validate.report.markup import Raw, table

    found = models(ctx.report)
    if not found:
        return None
    out = [f"<p>{escape(line.lstrip('- '))}</p>" for label, m in found.items()
           for line in _spec_lines(label, m)]
    out.append(f'<p class="note">Gate: {escape(GATE)}.</p>')
    rows = [r[:-1] + [Raw(f'<b class="{"ok" if r[-1] == "PASS" else "ko"}">'
                          f"{escape(r[-1])}</b>")] for label, m in found.items()
            for r in parity_rows(label, m)]
    out.append(table(HEADER, rows))
    out += [f"<p>{escape(x.lstrip('- '))}</p>" for label, m in found.items()
            for x in noise_lines(label, m) + precision_lines({label: m})]
    return "".join(out)
