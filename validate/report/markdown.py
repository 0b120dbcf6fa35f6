"""report.json for machines and CI, report.md for people."""

from __future__ import annotations

from pathlib import Path

from validate.model import report as model_report
from validate.report import consumers
from validate.report.text import NO_LATENCY, cell, percent, title
from validate.report.verdict import errors, failures, warnings

def _lat(model: dict, runner: str | None, batch: int, threads: int) -> dict | None:
    """The latency row of one runner (None: the native framework) at a batch and threads."""
    for row in model.get("latency", []):
        if (row.get("runner") == runner and row["batch_size"] == batch
                and row["threads"] == threads):
            return row
    return None


def _fmt_lat(row: dict | None) -> str:
    if row is None:
        return "n/a"
    text = f"{row['p50_ms']:.3f} ms ({row['images_per_second']:,.0f}/s)"
    if row.get("rounds"):
        text += f", {spread_text(row)}"
    return text


def spread_text(row: dict) -> str:
    """'range 0.99-1.02 ms over 5 rounds' (and NOISY) for a latency row measured in rounds."""
    text = (f"range {row['p50_min_ms']:.3g}-{row['p50_max_ms']:.3g} ms over {row['rounds']} "
            "rounds")
    return text + (" NOISY" if row.get("noisy") else "")


def spread_cell(row: dict) -> str:
    """'4%' or '27% NOISY': a latency row's or a speed-up's spread, for tables."""
    return f"{row['spread']:.0%}" + (" NOISY" if row.get("noisy") else "")


def latency_conditions(report: dict) -> list[tuple[int, str]]:
    """(level, sentence) per model and per runtime that could not be timed: rounds, time,
    cores, load average, native status; for report.md's list and report.html's."""
    out = []
    for label, m in (report.get("models") or {}).items():
        c = m.get("latency_conditions")
        if not c:
            continue
        cores = "; ".join(f"{t} thread{'s' * (int(t) > 1)} on core{'s' * (len(v or []) > 1)} "
                          + (",".join(map(str, v)) if v else "unpinned")
                          for t, v in c.get("cores", {}).items())
        load = c.get("load_average_start"), c.get("load_average_end")
        load_text = (f"load average (1 min) {load[0][0]:.2f} at start, {load[1][0]:.2f} at end"
                     if load[0] and load[1] else "load average not available")
        out.append((0, f"{title(label)}: {c['rounds']} rounds per configuration in "
                       f"{c.get('seconds', 0):.0f} s; {cores}; {load_text}; native: {c['native']}"))
        out += [(1, f"not timed: {e['runtime']} ({e['threads']} thread"
                    f"{'s' * (e['threads'] > 1)}): {e['error']}") for e in c.get("errors", [])]
    return out


def latency_lines(report: dict) -> list[str]:
    """The Latency section: method, conditions, every row with median and spread, and the
    speed-ups over native computed round by round."""
    if not any(m.get("latency") for m in (report.get("models") or {}).values()):
        return [NO_LATENCY[0].upper() + NO_LATENCY[1:] + "."]
    out = [report.get("latency_method", "no method recorded") + "."]
    conditions = latency_conditions(report)
    if conditions:
        out += [""] + [f"{'  ' * level}- {text}" for level, text in conditions]
    out += ["", "p50/p90/p99: medians over the rounds of each round's percentile; range: the "
            "lowest and highest round p50; NOISY: that range is wider than 20% of the median.",
            "", "| model | runtime | provider | batch | threads | p50 ms | p50 range ms | spread "
            "| p90 ms | p99 ms | images/s | rounds |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, m in (report.get("models") or {}).items():
        for r in m.get("latency", []):
            rng = (f"{r['p50_min_ms']:.3f}-{r['p50_max_ms']:.3f}" if "p50_min_ms" in r else "n/a")
            spread = spread_cell(r) if "spread" in r else "n/a"
            out.append(f"| {title(label)} | {r.get('runner', r['runtime'])} | {r['provider']} | "
                       f"{r['batch_size']} | {r['threads']} | {r['p50_ms']:.3f} | {rng} | "
                       f"{spread} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | "
                       f"{r['images_per_second']:,.0f} | {r.get('rounds', 1)} |")
    speed = [(label, s) for label, m in (report.get("models") or {}).items()
             for s in m.get("speedups", [])]
    if speed:
        out += ["", "Speed-up over the native framework (native p50 / runtime p50, > 1: faster "
                "than native), computed round by round from rounds run in the same window; "
                "fastest rounds: the native's fastest round p50 / the runtime's (the figure to "
                "compare between runs on a shared machine whose speed comes and goes):", "",
                "| model | runtime | vs | batch | threads | speed-up (median) | range | spread "
                "| fastest rounds | rounds |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {title(label)} | {s['runner']} | {s['baseline']} | {s['batch_size']} | "
                f"{s['threads']} | {s['speedup']:.2f}x | {s['speedup_min']:.2f}-"
                f"{s['speedup_max']:.2f}x | {spread_cell(s)} | {best_cell(s)} | "
                f"{s.get('rounds', 'n/a')} |" for label, s in speed]
    return out


def best_cell(speedup: dict) -> str:
    """The fastest-rounds speed-up cell ("n/a" in reports made before it was recorded)."""
    return f"{speedup['speedup_best']:.2f}x" if "speedup_best" in speedup else "n/a"


def _ok(m: dict) -> bool:
    return "error" not in m and "accuracy" in m


def main_table(report: dict) -> list[str]:
    """The seed's TensorFlow vs PyTorch comparison, measured (LeNet-5 models only)."""
    models = report["models"]
    order = [fw for fw in ("tf", "torch") if fw in models] + [
        k for k in models if k not in ("tf", "torch")]
    fws = [fw for fw in order if _ok(models[fw])]
    if not fws:
        return []
    # "All cores": the most threads timed (the cores this process may use, which a container
    # or taskset can make fewer than os.cpu_count()).
    threads_all = max((r["threads"] for fw in fws for r in models[fw].get("latency", [])),
                      default=report["environment"]["cpu_count"])
    rows: list[tuple[str, list[str]]] = []

    def add(label, fn):
        rows.append((label, [fn(fw, models[fw]) for fw in fws]))

    add("architecture", lambda fw, m: m.get("training", {}).get("architecture") or "n/a")
    add("parameters", lambda fw, m: f"{m['facts']['parameters']:,}")
    add("epochs / training time", lambda fw, m: (
        f"{m['training']['epochs']} / {_num(m['training'].get('seconds'), '.0f')} s"
        if "training" in m else "n/a"))
    add("training images/s", lambda fw, m: (
        _num(m["training"].get("images_per_second"), ",.0f") if "training" in m else "n/a"))
    add("test accuracy, native", lambda fw, m: f"{m['accuracy']['native']:.4f}")
    add("test accuracy, ONNX (onnxruntime CPU)", lambda fw, m: (
        f"{m['accuracy']['onnxruntime']:.4f}" if "onnxruntime" in m["accuracy"] else "n/a"))
    add("parity: max abs diff (CPU)", lambda fw, m: (
        f"{m['parity']['max_abs_diff']:.2e}" if "parity" in m else "n/a"))
    add("parity: top-1 agreement", lambda fw, m: (
        f"{m['parity']['top1_agreement']:.2%} ({m['parity']['flip_count']} flips)"
        if "parity" in m else "n/a"))
    add("runtimes passed", lambda fw, m: (
        f"{sum(r['status'] == 'passed' for r in m['runtimes'].values())} of "
        f"{sum(r['status'] != 'unavailable' for r in m['runtimes'].values())} available"))
    add("verdict", lambda fw, m: "PASS" if m["passed"] else "FAIL")
    add("ONNX file / opset", lambda fw, m: f"{m['facts']['bytes'] / 1024:.0f} KiB / {m['facts']['opset']}")
    for batch, threads in ((1, 1), (256, threads_all)):
        add(f"latency p50, batch {batch}, {threads} thread{'s' * (threads > 1)}: native",
            lambda fw, m, b=batch, t=threads: _fmt_lat(_lat(m, None, b, t)))
        add(f"latency p50, batch {batch}, {threads} thread{'s' * (threads > 1)}: onnxruntime",
            lambda fw, m, b=batch, t=threads: _fmt_lat(_lat(m, "onnxruntime-cpu", b, t)))
    lines = ["| | " + " | ".join(title(fw) for fw in fws) + " |",
             "|---|" + "---|" * len(fws)]
    lines += [f"| {label} | " + " | ".join(vals) + " |" for label, vals in rows]
    return lines


def _num(x, fmt: str) -> str:
    return "n/a" if not isinstance(x, (int, float)) else format(x, fmt)


def _e(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2e}"


def runtime_rows(report: dict) -> list[str]:
    """Parity per model and runtime: vs native, vs the float64 reference, flips, tolerance."""
    out = ["| model | runtime | max abs diff vs native | mean abs diff | vs float64 | flips | "
           "accuracy | tolerance | noise floor check | batch 1 vs 256 | rerun identical | "
           "result |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, m in report["models"].items():
        if m.get("kind") == "model":  # its own table (validate.model.report)
            continue
        for name, r in m.get("runtimes", {}).items():
            if r["status"] == "unavailable" or "parity" not in r:
                what = ("unavailable: " if r["status"] == "unavailable" else "FAIL: ") + cell(
                    r.get("reason", ""))
                if "test_data_sets" in r and "parity" not in r:
                    what = "PASS" if r["passed"] else "FAIL"
                    sets = ", ".join(f"{Path(s['folder']).name} " + ", ".join(
                        f"{n} {o['max_abs_diff']:.2e}" if o["max_abs_diff"] is not None else n
                        for n, o in s["outputs"].items()) for s in r["test_data_sets"])
                    meta = r.get("metadata_accuracy")
                    acc = (f"{meta['measured']:.4f} (metadata {meta['recorded']:.4f})"
                           if meta else "")
                    out.append(f"| {title(label)} | {name} | {sets or 'no test_data_set'} | | | "
                               f"| {acc} | "
                               f"{r['tolerance']:g} | | | "
                               f"{'yes' if r['invariance']['rerun_identical'] else 'NO'} | "
                               f"{what} |")
                    continue
                out.append(f"| {title(label)} | {name} | {what} | | | | | "
                           f"{r['tolerance']:g} | | | | |")
                continue
            flips = ", ".join(map(str, r["flips"][:10])) or "none"
            inv = r["invariance"]
            check = r["tolerance_check"]
            out.append(
                f"| {title(label)} | {name} | {r['max_abs_diff']:.2e} | {r['mean_abs_diff']:.2e} | "
                f"{_e(r['vs_exact_max_abs_diff'])} | {r['flip_count']} ({flips}) | "
                f"{r['accuracy']:.4f} | {r['tolerance']:g} | {check['status']} | "
                f"{inv['batch_max_abs_diff']:.2e} | {'yes' if inv['rerun_identical'] else 'NO'} | "
                f"{'PASS' if r['passed'] else 'FAIL'} |")
    return out


def noise_floor_lines(report: dict) -> list[str]:
    """The float64 reference's view: how far each side is from the exact answer."""
    out = []
    for label, m in report["models"].items():
        nf = m.get("noise_floor")
        if not nf or m.get("kind") == "model":  # per output, in validate.model.report
            continue
        if nf["exact_runner"] is None:
            out.append(f"- {title(label)}: no float64 reference ran; noise floor not measured")
            continue
        parts = [f"native {_e(nf['native_vs_exact'])}"] + [
            f"{name} {_e(v)}" for name, v in nf["runtimes"].items() if name != nf["exact_runner"]]
        out.append(f"- {title(label)}: max |diff| from the exact (float64) answer: "
                   + ", ".join(parts))
        for name, r in m["runtimes"].items():
            chk = r.get("tolerance_check", {})
            if chk.get("status") in ("flaky", "loose"):
                out.append(f"  - WARNING {name}: {chk['message']}")
    return out


def markdown(report: dict) -> str:
    """The page a person reads."""
    env = report["environment"]
    out = _verdict_lines(report)
    out += main_table(report)
    out += _conversion_lines(report)
    table = consumers.markdown(report)
    if table:
        out += ["", "## Consumers: who loads the shipped file as it is", "",
                "Each lenet5.onnx, byte for byte the file SHA256SUMS covers, in every runtime "
                "and converter that took it (a failure on figures still loaded the file).", ""]
        out += table
    out += _cross_framework_lines(report)
    out += _parity_lines(report)
    out += model_report.markdown_lines(report)
    out += _layer_lines(report)
    out += _precision_lines(report)
    floor = noise_floor_lines(report)
    if floor:
        out += ["", "## Noise floor", "",
                "A tolerance below the noise floor makes a flaky gate; one more than 1000x above "
                "it is too loose to catch a real bug.", ""] + floor
    out += ["", "## Latency", ""] + latency_lines(report)
    out += _models_lines(report)
    out += _runtimes_lines(report)
    out += _environment_lines(env)
    return "\n".join(out)


def only_exports(report: dict) -> bool:
    """Does the report hold model exports (docs/byom.md) and nothing else?"""
    found = report.get("models") or {}
    return bool(found) and all(m.get("kind") == "model" for m in found.values())


def heading(report: dict) -> str:
    """The page's title: LeNet-5's, or the model exports' names when the report holds only
    those."""
    if only_exports(report):
        return f"ONNX exports of {', '.join(report['models'])}: parity, noise floor and latency"
    return "LeNet-5 on Fashion-MNIST: TensorFlow vs PyTorch, and their ONNX exports"


def _verdict_lines(report: dict) -> list[str]:
    """The title, the verdict and, first, why it failed."""
    what = ("on every output and real input" if only_exports(report) else
            "on all test images")
    out = [f"# {heading(report)}", "",
           f"**Verdict: {'PASSED' if report['passed'] else 'FAILED'}** "
           f"(every available runtime within its tolerance of the native model {what}, top-1 "
           f"agreement >= {percent(report['tolerances']['min_agreement'])}, "
           "accuracy equal, batch-invariant, deterministic)", ""]
    bad = [f"**{title(label)}: not validated**: {m['error']}"
           for label, m in report["models"].items() if "error" in m] + failures(report)
    if bad:  # why, first: the lines stderr had (a list, then a blank line before the table)
        out += ["**Failures**", ""] + [f"- {line}" for line in bad] + [""]
    if warnings(report):
        out += ["**Warnings**", ""] + [f"- {line}" for line in warnings(report)] + [""]
    return out


def _conversion_lines(report: dict) -> list[str]:
    matrices = {label: m["conversion"] for label, m in report["models"].items()
                if "conversion" in m}
    if not matrices:
        return []
    from validate.compare import conversion

    return ["", "## Conversion: the same weights in both frameworks", "",
            "Each trained model rebuilt in the other framework with its own weights (its "
            "twin), both models exported by both exporters, and each ONNX file brought "
            "back into a framework by onnx2torch and onnx2tf (and TFLite).", ""
            ] + conversion.markdown(matrices)


def _cross_framework_lines(report: dict) -> list[str]:
    cross = report.get("cross_framework")
    if not cross:
        return []
    out = ["", "## Across frameworks: two different trained models", "",
           "| class | TensorFlow | PyTorch |", "|---|---|---|"]
    for i, name in enumerate(cross["per_class"]["class_names"]):
        out.append(f"| {i} {name} | {cross['per_class']['tf'][i]:.3f} | "
                   f"{cross['per_class']['torch'][i]:.3f} |")
    return out + ["", f"Per-class accuracy in onnxruntime. Note: the two models were trained "
                  f"separately (no tolerance applies); their predictions agree on "
                  f"{cross['agreement']:.2%} of the 10,000 test images ({cross['disagreements']} "
                  "differ). The conversion matrix above is the cross-framework verdict."]


def _parity_lines(report: dict) -> list[str]:
    if only_exports(report):  # their parity is per output (validate.model.report)
        return []
    return ["", "## Parity per model and runtime", "",
            "Each runtime against the native framework's probabilities on all 10,000 test images "
            "(vs float64: against the ONNX reference implementation run in double precision). "
            "Tolerances: " + ", ".join(f"{name} {r['tolerance']:g}"
                                       for name, r in report.get("runners", {}).items()) + ".",
            ""] + runtime_rows(report)


def _layer_lines(report: dict) -> list[str]:
    diagnosed = {label: m["layers"] for label, m in report["models"].items() if "layers" in m}
    if not diagnosed:
        return []
    from validate.diagnose import layers

    out = ["", "## Layer by layer", "",
           "Each mapped layer of the ONNX graph against the native model's own layer "
           "outputs on the first test images (both brought to one layout); the first "
           "layer over its tolerance is where a failure starts."]
    for label, result in diagnosed.items():
        out += ["", f"**{title(label)}**", ""]
        out += layers.markdown(result) if result.get("rows") else [result["message"]]
    return out


def _precision_lines(report: dict) -> list[str]:
    """The quantized variants' table, after a line per model whose variants were not evaluated."""
    lenet = {label: m for label, m in report["models"].items() if m.get("kind") != "model"}
    variants = {label: m["precision"] for label, m in lenet.items()
                if "precision" in m and "error" not in m["precision"]}
    out = [f"- {title(label)} quantized models not evaluated: {m['precision']['error']}"
           for label, m in lenet.items() if "error" in m.get("precision", {})]
    if variants:
        from validate.compare import precision

        out += [""] + precision.markdown(variants)
    return out


def _models_lines(report: dict) -> list[str]:
    out = ["", "## Models", ""]
    for label, m in report["models"].items():
        if "facts" not in m:
            continue
        f = m["facts"]
        out += [f"- **{title(label)}**: `{f['file']}`, {f['bytes']:,} bytes, sha256 "
                f"`{f['sha256']}`, opset {f['opset']}, {f['parameters']:,} parameters, producer "
                f"{f['producer']}, exporter {f['metadata'].get('exporter', '?')} "
                f"{f['metadata'].get('exporter_version', '')}"]
    return out


def _runtimes_lines(report: dict) -> list[str]:
    out = ["", "## Runtimes", ""]
    for name, r in report.get("runners", {}).items():
        out.append(f"- **{name}** ({r['description']}): "
                   + ("available" if r["available"] else f"unavailable: {r['reason']}"))
    return out


def _environment_lines(env: dict) -> list[str]:
    return ["", "## Environment", "",
            f"- CPU: {env['cpu']} ({env['cpu_count']} cores); {env['platform']}",
            f"- python {env['python']}, numpy {env['numpy']}, onnx {env['onnx']}, "
            f"onnxruntime {env['onnxruntime']}",
            f"- providers available: {', '.join(env['providers_available'])}",
            f"- CUDA execution provider: "
            f"{'available' if env['cuda']['available'] else 'unavailable: ' + env['cuda']['reason']}",
            ""]


def summary(report: dict) -> str:
    """The short Markdown verdict: the main table and every failure (for CI job summaries)."""
    out = [f"### LeNet-5 ONNX parity: {'PASSED' if report['passed'] else 'FAILED'}", ""]
    out += main_table(report)
    bad = errors(report) + failures(report)
    if bad:
        out += ["", "**Failures**", ""] + [f"- {line}" for line in bad]
    if warnings(report):
        out += ["", "**Warnings**", ""] + [f"- {line}" for line in warnings(report)]
    unavailable = sorted({name for m in report["models"].values()
                          for name, r in m.get("runtimes", {}).items()
                          if r["status"] == "unavailable"})
    if unavailable:
        out += ["", "Unavailable here: " + ", ".join(
            f"{n} ({report['runners'][n]['reason']})" for n in unavailable
            if n in report.get("runners", {}))]
    return "\n".join(out) + "\n\n"
