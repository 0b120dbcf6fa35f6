"""report.html: one self-contained page, checked in a real headless Chromium (Playwright, with
Debian's /usr/bin/chromium: no browser is downloaded), and robust to reports with parts
missing. $LENET5_SCREENSHOT_DIR, when set, is a folder that also receives the screenshot
(report.png: CI uploads it with the reports)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import DATA_DIR, error_lines, run
from validate.report.context import Context, title
from validate.report.figures import make_figure, render_figure
from validate.report.markup import cell_text
from validate.report.page import render, write_html

SECTIONS = ("verdict", "training", "confusion", "per-class", "parity", "latency", "flips",
            "conversion", "precision", "layers", "models", "runtimes", "environment",
            "reproduce")


@pytest.fixture(scope="module")
def quick_report(quick_artifacts) -> dict:
    return json.loads((quick_artifacts / "report.json").read_text())


@pytest.fixture(scope="module")
def quick_html(quick_artifacts, quick_report, tmp_path_factory) -> Path:
    """The quick run's report.html, written by `convert all` beside report.json."""
    written = quick_artifacts / "report.html"
    assert written.is_file()
    return written


def _chromium():
    """Playwright driving Debian's Chromium, with the browser runner's flags."""
    from playwright import sync_api  # a test dependency: missing is a failure, not a skip

    from validate.runners.browser import CHROMIUM_ARGS, chromium_path

    path = chromium_path()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"no Chromium at {path}: `apt-get install chromium` (or set "
                    f"LENET5_CHROMIUM); .ci/run installs it")
    return sync_api, path, list(CHROMIUM_ARGS)


def test_report_html_in_headless_chromium(quick_html, tmp_path):
    sync_api, chromium, args = _chromium()
    url = quick_html.resolve().as_uri()
    requests, console_errors = [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error"
                    else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.goto(url, wait_until="load")
            images = page.evaluate("""() => [...document.images].map(i => ({
                alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
                shown: i.getBoundingClientRect().width}))""")
            svgs = page.evaluate("""() => [...document.querySelectorAll('svg')].map(s => {
                const r = s.getBoundingClientRect(); return [r.width, r.height]; })""")
            ids = page.evaluate("() => [...document.querySelectorAll('section')].map(s => s.id)")
            verdict = page.inner_text(".verdict")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    # nothing fetched but the file itself (data: URIs are not requests to anywhere)
    assert [u for u in requests if u != url and not u.startswith("data:")] == []
    assert console_errors == []
    # training, confusion, per class, parity, latency (a healthy run has no flipped image)
    assert len(images) >= 5, images
    for img in images:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, img
        assert img["shown"] > 100, img
    for w, h in svgs:
        assert w > 0 and h > 0
    assert [s for s in SECTIONS if s not in ids] == []
    assert verdict == "PASSED"
    assert shot.stat().st_size > 50_000
    keep = os.environ.get("LENET5_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(keep) / "report.png")


def test_report_html_is_self_contained_and_complete(quick_html, quick_report):
    text = quick_html.read_text(encoding="utf-8")
    # no reference to anything outside the file: no src/href/url() but data: and anchors
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text) + re.findall(r"url\(([^)]*)\)",
                                                                          text)
    assert [r for r in refs if not r.startswith(("data:", "#"))] == []
    assert "<script" not in text and "<link" not in text
    assert "default-src 'none'" in text  # the page may not fetch even if something slipped in
    assert "could not be drawn" not in text
    # every figure's numbers are on the page too
    for fw in ("tf", "torch"):
        m = quick_report["models"][fw]
        hist = m["training"]["history"][0]
        assert cell_text(hist["loss"]) in text
        assert cell_text(m["runtimes"]["onnxruntime-cpu"]["max_abs_diff"]) in text
        assert cell_text(m["latency"][0]["p99_ms"]) in text
        assert f"<td>{m['accuracy']['confusion']['onnxruntime'][0][0]}</td>" in text
        # the parity table has the Markdown report's columns: noise-floor check, batch, rerun
        cpu = m["runtimes"]["onnxruntime-cpu"]
        row = re.search(rf"<tr><td>{title(fw)}</td><td>onnxruntime-cpu</td>"
                        r"((?:<td>.*?</td>)+)</tr>", text).group(1)
        cells = re.findall(r"<td>(.*?)</td>", row)
        assert cells[6:9] == [cpu["tolerance_check"]["status"],
                               cell_text(cpu["invariance"]["batch_max_abs_diff"]),
                               "yes" if cpu["invariance"]["rerun_identical"] else "no"], cells
    for name in quick_report["cross_framework"]["per_class"]["class_names"]:
        assert name in text
    assert "none: every runtime gave the native model" in text
    assert "python -m convert all" in text


def test_same_report_same_figures(quick_report):
    """Fixed SVG ids and no dates: a report rendered twice is the same bytes (diffable)."""
    for name in ("per_class", "parity"):
        one, two = (render_figure(make_figure(name, Context(quick_report)))
                    for _ in range(2))
        assert one == two and b"<dc:date>" not in one


def test_flipped_images_are_drawn_with_both_predictions(quick_report, quick_artifacts):
    report = copy.deepcopy(quick_report)
    r = report["models"]["torch"]["runtimes"]["onnxruntime-cpu"]
    r["flips"], r["flip_count"] = [0, 12], 2
    r["flip_predictions"] = [{"index": 12, "native": 5, "runtime": 7}]
    page = render(report, str(DATA_DIR))
    section = page.split('<section id="flips">')[1].split("</section>")[0]
    assert "data:image/png;base64," in section
    import numpy as np

    native = np.load(quick_artifacts / "torch" / "reference.npz")["probabilities"].argmax(1)
    names = report["cross_framework"]["per_class"]["class_names"]
    # image 0: the native prediction read from reference.npz, the runtime's not recorded
    assert f"<td>0</td><td>9 {names[9]}</td><td>{native[0]} {names[native[0]]}</td>" \
           "<td>not recorded</td>" in section
    # image 12: the predictions the report recorded
    assert f"<td>5 {names[5]}</td><td>7 {names[7]}</td>" in section


def test_missing_pieces_are_said_never_a_crash(quick_report, tmp_path):
    report = copy.deepcopy(quick_report)
    report["models"]["tf"] = {"error": "tf/lenet5.onnx: not an ONNX model"}
    torch = report["models"]["torch"]
    del torch["training"]["history"]
    torch["latency"] = []
    for r in torch["runtimes"].values():
        r.update(status="unavailable", reason="not here", passed=True)
        for k in ("diff_histogram", "flips", "max_abs_diff"):
            r.pop(k, None)
    report.pop("cross_framework")
    report["passed"] = False
    torch["conversion"] = {"rows": [{"key": "twin", "name": "torch -> tf twin", "status": "ok",
                                     "max_abs_diff": 2e-7, "flip_count": 0, "passed": True}],
                           "passed": True}
    path = write_html(report, tmp_path, data_dir=str(tmp_path / "no-data"))
    text = path.read_text()
    assert "could not be drawn" not in text
    assert "TensorFlow: not validated: tf/lenet5.onnx: not an ONNX model" in text
    assert "PyTorch: no training history" in text
    assert "no latency measured" in text
    assert ">FAILED<" in text
    assert "<td>torch -&gt; tf twin</td>" in text  # a conversion row without its other fields
    # an empty report still gives a page
    bare = render({"models": {}, "passed": False})
    assert "no model was validated" in bare and "could not be drawn" not in bare


def test_cli_writes_html_and_png(quick_artifacts, tmp_path):
    report = tmp_path / "report.json"
    shutil.copyfile(quick_artifacts / "report.json", report)
    # A bad --png is said before anything is written.
    for bad in (f"nope={tmp_path / 'x.png'}", "parity", f"parity={tmp_path / 'p.svg'}"):
        proc = run("validate.html", str(report), "--png", f"parity={tmp_path / 'parity.png'}",
                   "--png", bad)
        assert proc.returncode == 2, proc.stderr
        assert error_lines(proc) == [error_lines(proc)[0]]
        assert error_lines(proc)[0].startswith(f"error: --png {bad}: ")
        assert not (tmp_path / "report.html").exists() and not (tmp_path / "parity.png").exists()
    proc = run("validate.html", str(report), "--png", f"parity={tmp_path / 'parity.png'}")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "report.html").is_file()
    assert (tmp_path / "parity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_json_file_that_is_not_a_report_is_refused(tmp_path):
    """Any other JSON (a history.json, `{}`, a list): one line, exit 2, no page written."""
    for text in ('{"epochs": [], "threads": 1}', "{}", "[1, 2]"):
        path = tmp_path / "other.json"
        path.write_text(text)
        proc = run("validate.html", str(path))
        assert proc.returncode == 2, proc.stderr
        assert error_lines(proc) == [f"error: {path}: not a report of `python -m validate` "
                                     "(no schema_version and models)"]
        assert not (tmp_path / "report.html").exists()
