"""report.html: the report as one self-contained page, with figures drawn by matplotlib.

One file, nothing fetched: figures are inline SVG (PNG for the test images) data URIs, the CSS
is inline, there is no script. Every figure has its numbers beside it in a table, or in
report.json. The page is made from report.json alone (plus the test images and the
reference.npz files, when they can be read, to draw flipped images); a missing piece (a model
that failed, a runtime that could not run, no training history) is said, never a crash.

Here: the page around the sections (sections.py), which draw from the Context (context.py)
with the figures (figures.py) and the HTML blocks (markup.py).
`python -m validate.html` (validate/html.py) rewrites it from a report.json.
Needs numpy and matplotlib only (no framework).
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from train.core.fileio import write_text
from validate.report.context import Context, one_line
from validate.report.markdown import heading as page_heading, only_exports
from validate.report.markup import missing
from validate.report.sections import SECTIONS

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
ul.bad{color:#c5221f}ul.warn{color:#9a6700}.missing{color:#9a6700;background:#fff8e1;padding:.3em .6em;
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
    body, shown = [], []
    for anchor, heading, build in SECTIONS:
        try:
            inner = build(ctx)
        except Exception as exc:  # one broken section must not cost the others
            inner = missing(f"this section could not be drawn: {one_line(exc)}")
        if inner is None:  # a section only some reports have (model exports)
            continue
        shown.append((anchor, heading))
        body.append(f'<section id="{anchor}"><h2>{escape(heading)}</h2>{inner}</section>')
    if ctx.notes:
        body.append('<section id="notes"><h2>Not shown</h2><ul>' + "".join(
            f"<li>{escape(n)}</li>" for n in dict.fromkeys(ctx.notes)) + "</ul></section>")
    nav = "".join(f'<a href="#{a}">{escape(h.split(":")[0])}</a>' for a, h in shown)
    verdict = "PASSED" if report.get("passed") else "FAILED"
    head_title = (f"ONNX parity report of {', '.join(report.get('models') or {})}: {verdict}"
                  if only_exports(report) else f"LeNet-5 ONNX parity report: {verdict}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            # no network, ever: this page only shows what it carries
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "img-src data:; style-src 'unsafe-inline'\">"
            f"<title>{escape(head_title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{escape(page_heading(report))}</h1>"
            f"<nav>{nav}</nav>" + "".join(body) + "</main></body></html>\n")


def write_html(report: dict, folder: Path, data_dir: str | None = None) -> Path:
    """Write folder/report.html atomically; return its path."""
    path = Path(folder) / "report.html"
    write_text(path, render(report, data_dir))
    return path
