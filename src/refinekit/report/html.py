"""A self-contained HTML report: sections of text, tables and embedded PNG figures (no external files).

A domain's demo builds a :class:`Section` from its results; :func:`render_report` puts the sections
in one page and writes it atomically.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..core.atomic import atomic_write_text


@dataclass
class Section:
    """One part of the report: a title, a one-line summary and an HTML body (already escaped)."""

    title: str
    summary: str
    body: str
    ok: bool = True
    figures: dict[str, Any] = field(default_factory=dict)  # name -> key figure, for the JSON summary


def figure_to_html(fig: Any, alt: str, width: int = 640) -> str:
    """Render a matplotlib figure as an embedded PNG ``<img>`` and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110)
    finally:  # a figure that fails to render is closed too: pyplot keeps every open one alive
        plt.close(fig)
    return png_to_html(buffer.getvalue(), alt, width)


def png_to_html(png: bytes, alt: str, width: int = 640) -> str:
    """PNG bytes as an embedded ``<img>``."""
    data = base64.b64encode(png).decode("ascii")
    return (f'<img alt="{html.escape(alt)}" width="{width}" '
            f'src="data:image/png;base64,{data}">')


def table_html(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table; cells are escaped; floats get 6 significant digits."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.6g}"
        return html.escape("-" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:980px;margin:2em auto;
     padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f2f2f2}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em}
.ok{color:#17702a}.bad{color:#b3261e}.summary{font-weight:600}
nav li{margin:.2em 0}
"""


def render_report(sections: Sequence[Section], path: str | os.PathLike[str],
                  title: str = "refinekit demo report", preamble: str = "") -> None:
    """Write the sections as one self-contained HTML page (atomically)."""
    atomic_write_text(path, render_html(sections, title, preamble))


def render_html(sections: Sequence[Section], title: str = "refinekit demo report", preamble: str = "") -> str:
    """The sections as one self-contained HTML page (for writing it together with other files)."""
    from .. import __version__

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    toc = "".join(
        f'<li><a href="#s{i}">{html.escape(s.title)}</a> '
        f'<span class="{"ok" if s.ok else "bad"}">{html.escape(s.summary)}</span></li>'
        for i, s in enumerate(sections)
    )
    parts = "".join(
        f'<section id="s{i}"><h2>{html.escape(s.title)}</h2>'
        f'<p class="summary {"ok" if s.ok else "bad"}">{html.escape(s.summary)}</p>{s.body}</section>'
        for i, s in enumerate(sections)
    )
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>refinekit {__version__}, {stamp}.</p>{preamble}"
            f"<nav><ul>{toc}</ul></nav>{parts}</body></html>\n")
    return page
