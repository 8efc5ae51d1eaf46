"""The pieces every DAO HTML report is made of: one self-contained page (inline CSS, images as base64 PNG
data URIs, no external URL at all), escaped text, tables, and matplotlib figures as PNG bytes."""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from dao.structure_io import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left}th{background:#f3f3f3}section.structure{margin:1.6em 0}.figs{display:flex;flex-wrap:wrap;gap:1em}
.figs img{max-width:100%;border:1px solid #eee}.note{color:#555;font-size:.9em}.miss{color:#a33}.ok{color:#285}
"""


def esc(value: Any) -> str:
    """``value`` as escaped HTML text (None → empty, floats with 4 significant digits where not integral)."""
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        value = f"{value:.4g}"
    return html.escape(str(value), quote=True)


def figure_png(fig: Figure, dpi: int = 90) -> bytes:
    """A matplotlib figure (made with ``matplotlib.figure.Figure``, no pyplot state) as PNG bytes (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def img(png: bytes, alt: str) -> str:
    """An ``<img>`` holding ``png`` as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def link(href: str, text: str) -> str:
    """A link to a file beside the report (a relative path; anything with a scheme or ``//`` is refused)."""
    if "://" in href or href.startswith("//") or ":" in href.split("/")[0]:
        raise ValueError(f"report links must be relative paths, got {href!r}")
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], raw: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped except in the columns listed in ``raw`` (already HTML)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header) if any(header) else ""
    body = "".join("<tr>" + "".join(f"<td>{c if i in raw else esc(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def page(title: str, body: str) -> str:
    """A complete HTML5 document (UTF-8, inline CSS)."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
            f"<body><h1>{esc(title)}</h1>\n{body}\n</body></html>\n")


def write_page(path: str | Path, title: str, body: str) -> Path:
    """Write :func:`page` atomically to ``path``."""
    atomic_write_text(path, page(title, body))
    return Path(path)
