"""HTML building blocks of report.html: table cells, tables, collapsed blocks, notes, and any
JSON value as HTML."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from html import escape

MAX_TABLE_ROWS = 500   # a generic table longer than this is cut (report.json has it all)


def cell_text(v: object) -> str:
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
    """An HTML table; cells are escaped (pass Raw for markup)."""
    def cell(v: object) -> str:
        return v.html if isinstance(v, Raw) else escape(cell_text(v))

    head = ("<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr></thead>"
            if any(header) else "")  # a key/value table needs no header row
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in rows)
    # a wide table scrolls inside the page instead of widening it
    return f'<div class="scroll"><table class="{cls}">{head}<tbody>{body}</tbody></table></div>'


@dataclass(frozen=True)
class Raw:
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
                out += f"<p><b>{escape(str(k))}</b>: <code>{escape(cell_text(v))}</code></p>"
            else:
                out += (f'<div class="sub"><h4>{escape(str(k))}</h4>'
                        f"{generic(v, depth + 1, root)}</div>")
        return out
    if isinstance(obj, list):
        return f"<p>{escape(', '.join(cell_text(x) for x in obj)) or 'none'}</p>"
    return f"<p>{escape(cell_text(obj))}</p>"
