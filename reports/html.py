"""A tiny document builder that renders the same content as HTML and as Markdown.

A stage report is a list of blocks (headings, paragraphs, key/value facts, tables, charts,
notes). :class:`Report` collects them once and renders:

- :meth:`Report.to_html`: one self-contained page (inline CSS, no scripts, no external
  URLs); charts are ``<img src="data:image/svg+xml;base64,...">`` with alt text, so the
  page works inside a sandboxed iframe and as a downloaded file.
- :meth:`Report.to_markdown`: headline numbers and tables for the KFP UI's Markdown
  viewer; charts become their alt text (the viewer may drop data: images).

Every value is escaped in both outputs (dead-letter rows carry user input): HTML with
``html.escape``; Markdown by escaping its own syntax and writing ``<``/``>``/``&`` as
entities, because Markdown renderers pass raw HTML through.
"""

from __future__ import annotations

import base64
import html
import json
import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Sequence

#: Note kinds -> (CSS class, Markdown prefix).
NOTE_KINDS = {"info": ("info", "Note"), "ok": ("ok", "OK"), "warn": ("warn", "Warning"), "bad": ("bad", "Failed")}

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:1.2em;color:#222;
max-width:1000px;line-height:1.4}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}
.sub{color:#666;margin:0 0 1em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.92em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.facts th{width:14em}
.note{padding:6px 10px;border-left:4px solid;margin:.6em 0}
.info{border-color:#1f77b4;background:#eef5fb}.ok{border-color:#2ca02c;background:#eef8ee}
.warn{border-color:#ff7f0e;background:#fff5e8}.bad{border-color:#d62728;background:#fcecec}
figure{margin:.6em 0 1.2em}img{max-width:100%;height:auto}figcaption{color:#555;font-size:.9em}
code,pre{font-family:Menlo,Consolas,monospace;font-size:.9em}pre{white-space:pre-wrap;word-break:break-all}
ul{margin:.3em 0 1em}
""".strip()


@dataclass
class Cell:
    """A table cell whose display text differs from a plain format (e.g. bold "best" rows)."""

    text: str
    strong: bool = False
    numeric: bool = False


def fmt(value: Any, digits: int = 4) -> str:
    """Display text for a value: None -> "n/a", bool -> yes/no, int with separators,
    float rounded to ``digits`` decimals (or 3 significant digits when tiny/huge),
    containers as compact JSON."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if abs(v) >= 1e4:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:,.2f}"
        if v != 0 and abs(v) < 10 ** -digits:
            return f"{v:.3g}"
        return f"{v:.{digits}f}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def svg_data_uri(svg: str) -> str:
    """``data:image/svg+xml;base64,...`` of an SVG document (base64 so no character of the
    SVG can end the attribute it sits in)."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def md_escape(text: Any) -> str:
    """Markdown-safe inline text: syntax characters backslash-escaped, HTML as entities,
    line breaks as spaces (a newline would end a table row)."""
    s = str(text)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = re.sub(r"([\\`*_\[\]|#!])", r"\\\1", s)
    return re.sub(r"[\r\n]+", " ", s)


def _is_num(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Report:
    """Blocks of a report page; add with the methods below, then render both ways."""

    def __init__(self, title: str, subtitle: str = ""):
        self.title = title
        self.subtitle = subtitle
        self._blocks: list[tuple] = []

    # ------------------------------------------------------------ building
    def heading(self, text: str) -> "Report":
        self._blocks.append(("heading", text))
        return self

    def paragraph(self, text: str) -> "Report":
        self._blocks.append(("paragraph", text))
        return self

    def note(self, text: str, kind: str = "info") -> "Report":
        """A highlighted line; ``kind`` one of info / ok / warn / bad."""
        if kind not in NOTE_KINDS:
            raise ValueError(f"note kind must be one of {sorted(NOTE_KINDS)}, got {kind!r}")
        self._blocks.append(("note", text, kind))
        return self

    def facts(self, pairs: Sequence[tuple[str, Any]]) -> "Report":
        """A two-column label / value table (the headline numbers)."""
        self._blocks.append(("facts", list(pairs)))
        return self

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> "Report":
        """A table; cells are values (formatted by :func:`fmt`) or :class:`Cell`."""
        for row in rows:
            if len(row) != len(headers):
                raise ValueError(f"table row has {len(row)} cells for {len(headers)} headers: {row!r}")
        self._blocks.append(("table", list(headers), [list(r) for r in rows]))
        return self

    def bullets(self, items: Sequence[Any]) -> "Report":
        self._blocks.append(("bullets", list(items)))
        return self

    def chart(self, svg: str, alt: str, caption: str = "") -> "Report":
        """An SVG chart (a complete ``<svg>`` document) with its alt text."""
        self._blocks.append(("chart", svg, alt, caption))
        return self

    # ------------------------------------------------------------ rendering
    def to_html(self) -> str:
        e = html.escape
        out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
               '<meta name="viewport" content="width=device-width, initial-scale=1">',
               f"<title>{e(self.title)}</title>", f"<style>{_CSS}</style>", "</head><body>",
               f"<h1>{e(self.title)}</h1>"]
        if self.subtitle:
            out.append(f'<p class="sub">{e(self.subtitle)}</p>')
        for block in self._blocks:
            kind = block[0]
            if kind == "heading":
                out.append(f"<h2>{e(block[1])}</h2>")
            elif kind == "paragraph":
                out.append(f"<p>{e(block[1])}</p>")
            elif kind == "note":
                out.append(f'<div class="note {NOTE_KINDS[block[2]][0]}">{e(block[1])}</div>')
            elif kind == "facts":
                out.append('<table class="facts">')
                out.extend(f"<tr><th>{e(k)}</th>{_html_cell(v)}</tr>" for k, v in block[1])
                out.append("</table>")
            elif kind == "table":
                out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in block[1]) + "</tr>")
                out.extend("<tr>" + "".join(_html_cell(v) for v in row) + "</tr>" for row in block[2])
                out.append("</table>")
            elif kind == "bullets":
                out.append("<ul>" + "".join(f"<li>{e(_text(v))}</li>" for v in block[1]) + "</ul>")
            elif kind == "chart":
                _, svg, alt, caption = block
                cap = f"<figcaption>{e(caption)}</figcaption>" if caption else ""
                out.append(f'<figure><img src="{svg_data_uri(svg)}" alt="{e(alt, quote=True)}">{cap}</figure>')
        out.append("</body></html>")
        return "\n".join(out) + "\n"

    def to_markdown(self) -> str:
        out = [f"# {md_escape(self.title)}", ""]
        if self.subtitle:
            out += [f"_{md_escape(self.subtitle)}_", ""]
        for block in self._blocks:
            kind = block[0]
            if kind == "heading":
                out += [f"## {md_escape(block[1])}", ""]
            elif kind == "paragraph":
                out += [md_escape(block[1]), ""]
            elif kind == "note":
                out += [f"> **{NOTE_KINDS[block[2]][1]}:** {md_escape(block[1])}", ""]
            elif kind == "facts":
                out += ["| | |", "|---|---|"]
                out += [f"| **{md_escape(k)}** | {_md_cell(v)} |" for k, v in block[1]]
                out.append("")
            elif kind == "table":
                out.append("| " + " | ".join(md_escape(h) for h in block[1]) + " |")
                out.append("|" + "|".join("---:" if _numeric_column(block[2], i) else "---"
                                          for i in range(len(block[1]))) + "|")
                out += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in block[2]]
                out.append("")
            elif kind == "bullets":
                out += [f"- {md_escape(_text(v))}" for v in block[1]]
                out.append("")
            elif kind == "chart":
                out += [f"_Chart: {md_escape(block[2])} (see the HTML report)._", ""]
        return "\n".join(out).rstrip("\n") + "\n"


def _text(value: Any) -> str:
    return value.text if isinstance(value, Cell) else fmt(value)


def _numeric_column(rows: Sequence[Sequence[Any]], i: int) -> bool:
    cells = [r[i] for r in rows if r[i] is not None]
    return bool(cells) and all(_is_num(c) or (isinstance(c, Cell) and c.numeric) for c in cells)


def _html_cell(value: Any) -> str:
    text = html.escape(_text(value))
    numeric = _is_num(value) or (isinstance(value, Cell) and value.numeric)
    if isinstance(value, Cell) and value.strong:
        text = f"<strong>{text}</strong>"
    return f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>"


def _md_cell(value: Any) -> str:
    text = md_escape(_text(value))
    return f"**{text}**" if isinstance(value, Cell) and value.strong and text else text

