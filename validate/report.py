"""report.json for machines and CI, report.md for people."""

from __future__ import annotations

from pathlib import Path

from convert.fileio import write_json, write_text

NAMES = {"torch": "PyTorch", "tf": "TensorFlow"}


def _lat(model: dict, runtime_prefix: str, batch: int, threads: int) -> dict | None:
    for row in model["latency"]:
        if (row["runtime"].startswith(runtime_prefix) and row["batch_size"] == batch
                and row["threads"] == threads and row["provider"] in ("cpu", "CPUExecutionProvider")):
            return row
    return None


def _fmt_lat(row: dict | None) -> str:
    return "n/a" if row is None else f"{row['p50_ms']:.3f} ms ({row['images_per_second']:,.0f}/s)"


def _native(fw: str) -> str:
    return "torch" if fw == "torch" else "tensorflow"


def main_table(report: dict) -> list[str]:
    """The seed's TensorFlow vs PyTorch comparison, measured."""
    fws = [fw for fw in ("tf", "torch") if fw in report["models"]]
    models = report["models"]
    threads_all = report["environment"]["cpu_count"]
    rows: list[tuple[str, list[str]]] = []

    def add(label, fn):
        rows.append((label, [fn(fw, models[fw]) for fw in fws]))

    add("architecture", lambda fw, m: m.get("training", {}).get("architecture") or "n/a")
    add("parameters", lambda fw, m: f"{m['facts']['parameters']:,}")
    add("epochs / training time", lambda fw, m: (
        f"{m['training']['epochs']} / {m['training']['seconds']:.0f} s" if "training" in m else "n/a"))
    add("training images/s", lambda fw, m: (
        f"{m['training']['images_per_second']:,.0f}" if "training" in m else "n/a"))
    add("test accuracy, native", lambda fw, m: f"{m['accuracy']['native']:.4f}")
    add("test accuracy, ONNX (onnxruntime CPU)", lambda fw, m: f"{m['accuracy']['onnxruntime']:.4f}")
    add("parity: max abs diff (CPU)", lambda fw, m: f"{m['parity']['max_abs_diff']:.2e}")
    add("parity: top-1 agreement", lambda fw, m: (
        f"{m['parity']['top1_agreement']:.2%} ({m['parity']['flip_count']} flips)"))
    add("parity", lambda fw, m: "PASS" if m["passed"] else "FAIL")
    add("ONNX file / opset", lambda fw, m: f"{m['facts']['bytes'] / 1024:.0f} KiB / {m['facts']['opset']}")
    for batch, threads in ((1, 1), (256, threads_all)):
        add(f"latency p50, batch {batch}, {threads} thread{'s' * (threads > 1)}: native",
            lambda fw, m, b=batch, t=threads: _fmt_lat(_lat(m, _native(fw), b, t)))
        add(f"latency p50, batch {batch}, {threads} thread{'s' * (threads > 1)}: onnxruntime",
            lambda fw, m, b=batch, t=threads: _fmt_lat(_lat(m, "onnxruntime", b, t)))
    lines = ["| | " + " | ".join(NAMES[fw] for fw in fws) + " |",
             "|---|" + "---|" * len(fws)]
    lines += [f"| {label} | " + " | ".join(vals) + " |" for label, vals in rows]
    return lines


def markdown(report: dict) -> str:
    """The page a person reads."""
    env = report["environment"]
    out = ["# LeNet-5 on Fashion-MNIST: TensorFlow vs PyTorch, and their ONNX exports", "",
           f"**Parity: {'PASSED' if report['passed'] else 'FAILED'}** "
           f"(max |diff| <= {report['tolerances']['atol']:g} on CPU, top-1 agreement >= "
           f"{report['tolerances']['min_agreement']:.0%}, accuracy equal)", ""]
    out += main_table(report)
    cross = report.get("cross_framework")
    if cross:
        out += ["", "## Across frameworks",
                f"Two different trained models (no tolerance applies): their ONNX predictions "
                f"agree on {cross['agreement']:.2%} of the 10,000 test images "
                f"({cross['disagreements']} differ).", "",
                "| class | TensorFlow | PyTorch |", "|---|---|---|"]
        for i, name in enumerate(cross["per_class"]["class_names"]):
            out.append(f"| {i} {name} | {cross['per_class']['tf'][i]:.3f} | "
                       f"{cross['per_class']['torch'][i]:.3f} |")
    out += ["", "## Parity per model and provider", "",
            "| model | provider | max abs diff | mean abs diff | top-1 agreement | flips | result |",
            "|---|---|---|---|---|---|---|"]
    for fw, m in report["models"].items():
        for key in ("parity", "parity_cuda"):
            p = m.get(key)
            if p and "passed" in p:
                flips = ", ".join(map(str, p["flips"][:10])) or "none"
                out.append(f"| {NAMES[fw]} | {p['provider']} | {p['max_abs_diff']:.2e} | "
                           f"{p['mean_abs_diff']:.2e} | {p['top1_agreement']:.4%} | "
                           f"{p['flip_count']} ({flips}) | {'PASS' if p['passed'] else 'FAIL'} |")
            elif p:
                out.append(f"| {NAMES[fw]} | CUDAExecutionProvider | unavailable: {p['reason']} "
                           "| | | | |")
    out += ["", "## Latency", "", report["latency_method"] + ".", "",
            "| model | runtime | provider | batch | threads | p50 ms | p90 ms | p99 ms | images/s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for fw, m in report["models"].items():
        for r in m["latency"]:
            out.append(f"| {NAMES[fw]} | {r['runtime']} | {r['provider']} | {r['batch_size']} | "
                       f"{r['threads']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
                       f"{r['p99_ms']:.3f} | {r['images_per_second']:,.0f} |")
    out += ["", "## Models", ""]
    for fw, m in report["models"].items():
        f = m["facts"]
        out += [f"- **{NAMES[fw]}**: `{f['file']}`, {f['bytes']:,} bytes, sha256 `{f['sha256']}`, "
                f"opset {f['opset']}, {f['parameters']:,} parameters, producer {f['producer']}, "
                f"exporter {f['metadata'].get('exporter', '?')} "
                f"{f['metadata'].get('exporter_version', '')}"]
    out += ["", "## Environment", "",
            f"- CPU: {env['cpu']} ({env['cpu_count']} cores); {env['platform']}",
            f"- python {env['python']}, numpy {env['numpy']}, onnx {env['onnx']}, "
            f"onnxruntime {env['onnxruntime']}",
            f"- providers available: {', '.join(env['providers_available'])}",
            f"- CUDA execution provider: "
            f"{'available' if env['cuda']['available'] else 'unavailable: ' + env['cuda']['reason']}",
            ""]
    return "\n".join(out)


def write(report: dict, artifacts: Path) -> tuple[Path, Path]:
    """Write both reports atomically."""
    write_json(artifacts / "report.json", report)
    write_text(artifacts / "report.md", markdown(report))
    return artifacts / "report.json", artifacts / "report.md"
