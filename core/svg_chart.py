"""Small dependency-free SVG charts: line/scatter charts and grouped bar charts.

The pipeline images carry no plotting library, and a report must be one self-contained
file, so charts are written as SVG text by hand. Both chart functions return a complete
``<svg>`` document (str) with ``width``/``height`` in px and a ``viewBox`` (it scales when
a page sets ``max-width``), a ``<title>`` (the accessible name), axes with "nice" ticks
(1/2/5 x 10^k steps, or powers of ten on a log axis), axis labels and a legend.

Every drawn data element carries a class, so tests and style sheets can find them:
``circle.point`` (one per line-chart point), ``polyline.series`` (one per series with
two or more points), ``rect.bar`` (one per non-missing bar value), ``circle.mark``
(highlighted points), ``line.vline`` (vertical reference lines). Every text that comes
from the caller is XML-escaped.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Optional, Sequence
from xml.sax.saxutils import escape, quoteattr

#: Colour cycle (the matplotlib "tab10" palette, readable on white and in greyscale order).
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
#: Rough width of one character at FONT_PX, used to size the legend and margins (px).
FONT_PX = 11
CHAR_PX = 6.3
#: Smallest positive value drawn on a log axis (values <= 0 are clamped to it).
LOG_FLOOR = 1e-9


@dataclass
class Series:
    """One line of a line chart.

    Attributes:
        name: legend label ("" = not in the legend).
        points: (x, y) pairs in data units, drawn in the given order.
        colour: CSS colour; None = the next palette colour.
        line: join the points with a polyline (False = markers only).
    """

    name: str
    points: Sequence[tuple[float, float]]
    colour: Optional[str] = None
    line: bool = True


@dataclass
class Mark:
    """A highlighted point (a ring around it and an optional label), in data units."""

    x: float
    y: float
    label: str = ""


@dataclass
class VLine:
    """A dashed vertical reference line at ``x`` (data units), labelled at the top."""

    x: float
    label: str = ""
    colour: str = "#d62728"


@dataclass
class BarSeries:
    """One bar per category for a grouped bar chart; ``values[i]`` None = no bar (n/a)."""

    name: str
    values: Sequence[Optional[float]]
    colour: Optional[str] = None


@dataclass
class _Frame:
    """Plot area geometry (px) and the data ranges it maps."""

    left: float
    top: float
    width: float
    height: float
    x0: float = 0.0
    x1: float = 1.0
    y0: float = 0.0
    y1: float = 1.0
    log_y: bool = False
    parts: list[str] = field(default_factory=list)

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / ((self.x1 - self.x0) or 1.0) * self.width

    def py(self, y: float) -> float:
        if self.log_y:
            y = math.log10(max(y, LOG_FLOOR))
        return self.top + (self.y1 - y) / ((self.y1 - self.y0) or 1.0) * self.height


# ---------------------------------------------------------------- ticks and numbers
def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """About ``target`` round tick values covering [lo, hi] (step 1, 2 or 5 x 10^k).

    The first tick is <= lo and the last >= hi, so the axis range can be set to them.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"nice_ticks: non-finite range [{lo}, {hi}]")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 0.5
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9)
    ticks = []
    for i in range(first, first + 10 * max(target, 1) + 2):
        # Multiply rather than accumulate so 0.1 + 0.2 style drift never reaches the labels.
        ticks.append(round(i * step, 12))
        if ticks[-1] >= hi - 1e-9 * step:
            break
    return ticks


def format_number(value: float, step: Optional[float] = None) -> str:
    """A short label: decimals from the tick ``step`` (or 4 significant digits), k/M for big values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    a = abs(value)
    if a >= 1e6:
        return f"{value / 1e6:.3g}M"
    if a >= 1e4:
        return f"{value / 1e3:.3g}k"
    if step is not None and step > 0:
        decimals = max(0, -int(math.floor(math.log10(step) + 1e-9)))
        return f"{value:.{decimals}f}"
    if value == int(value):
        return str(int(value))
    return f"{value:.4g}"


def _text(x: float, y: float, text: str, anchor: str = "middle", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>'
            f'{escape(str(text))}</text>')


def _open_svg(width: int, height: int, title: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="{FONT_PX}" role="img">',
            f"<title>{escape(title)}</title>",
            f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>']


def _legend_width(names: Sequence[str]) -> int:
    names = [n for n in names if n]
    if not names:
        return 0
    return int(min(300, 30 + CHAR_PX * max(len(n) for n in names)))


def _legend(frame: _Frame, entries: Sequence[tuple[str, str]]) -> None:
    """Colour swatches + names to the right of the plot area."""
    x = frame.left + frame.width + 12
    for i, (name, colour) in enumerate(e for e in entries if e[0]):
        y = frame.top + 8 + 16 * i
        frame.parts.append(f'<rect class="legend" x="{x:.1f}" y="{y - 8:.1f}" width="10" height="10" '
                           f'fill={quoteattr(colour)}/>')
        frame.parts.append(_text(x + 15, y + 1, name, "start"))


def _axes(frame: _Frame, title: str, x_label: str, y_label: str, total_height: int) -> None:
    cx = frame.left + frame.width / 2
    if title:
        frame.parts.append(_text(cx, 18, title, extra=' font-weight="bold" font-size="13"'))
    frame.parts.append(f'<rect x="{frame.left:.1f}" y="{frame.top:.1f}" width="{frame.width:.1f}" '
                       f'height="{frame.height:.1f}" fill="none" stroke="#333"/>')
    if x_label:
        frame.parts.append(_text(cx, total_height - 8, x_label))
    if y_label:
        cy = frame.top + frame.height / 2
        frame.parts.append(_text(14, cy, y_label, extra=f' transform="rotate(-90 14 {cy:.1f})"'))


def _y_grid(frame: _Frame, ticks: Sequence[float], labels: Sequence[str]) -> None:
    for value, label in zip(ticks, labels):
        y = frame.py(10 ** value if frame.log_y else value)
        frame.parts.append(f'<line class="grid" x1="{frame.left:.1f}" y1="{y:.1f}" '
                           f'x2="{frame.left + frame.width:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        frame.parts.append(_text(frame.left - 6, y + 4, label, "end"))


def _y_scale(values: Sequence[float], log_y: bool, y_range: Optional[tuple[float, float]],
             zero: bool) -> tuple[float, float, list[float], list[str]]:
    """(y0, y1, tick positions in axis units, tick labels); log axes work in log10 units."""
    if log_y:
        logs = [math.log10(max(v, LOG_FLOOR)) for v in values] or [0.0]
        if y_range:
            logs = [math.log10(max(y_range[0], LOG_FLOOR)), math.log10(max(y_range[1], LOG_FLOOR))]
        lo, hi = math.floor(min(logs)), math.ceil(max(logs))
        hi = hi if hi > lo else lo + 1
        ticks = [float(e) for e in range(lo, hi + 1)]
        return lo, hi, ticks, [format_number(10.0 ** e) if -3 <= e <= 8 else f"1e{e}" for e in range(lo, hi + 1)]
    if y_range:
        lo, hi = y_range
    else:
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        if zero:
            lo, hi = min(lo, 0.0), max(hi, 0.0)
    ticks = nice_ticks(lo, hi)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else None
    if y_range:  # a fixed range keeps its ends; ticks outside it are dropped
        ticks = [t for t in ticks if lo - 1e-12 <= t <= hi + 1e-12]
        return lo, hi, ticks, [format_number(t, step) for t in ticks]
    return ticks[0], ticks[-1], ticks, [format_number(t, step) for t in ticks]


# ---------------------------------------------------------------- line chart
def line_chart(series: Sequence[Series], *, title: str = "", x_label: str = "", y_label: str = "",
               width: int = 640, height: int = 360, log_y: bool = False,
               x_range: Optional[tuple[float, float]] = None, y_range: Optional[tuple[float, float]] = None,
               integer_x: bool = False, marks: Sequence[Mark] = (), vlines: Sequence[VLine] = ()) -> str:
    """A line (or scatter) chart; returns the SVG document.

    Args:
        series: the lines; points are (x, y) in data units. Non-finite points are skipped.
        title / x_label / y_label: texts (units belong in the labels, e.g. "loss (nats)").
        width, height: the image size in px; the legend (when any series is named) takes
            room on the right of the plot area.
        log_y: log10 y axis (ticks at powers of ten); y values <= 0 are clamped to 1e-9.
        x_range, y_range: fixed axis ranges in data units (default: from the data, rounded
            out to nice ticks; ``x_range`` ends are used as given).
        integer_x: x ticks only at integers (epochs, steps).
        marks: points to ring (e.g. the best epoch, the chosen configuration).
        vlines: dashed vertical reference lines (e.g. a recall target), labelled at their foot.
    """
    clean = [[(float(x), float(y)) for x, y in s.points if _finite(x) and _finite(y)] for s in series]
    xs = [x for pts in clean for x, _ in pts] + [m.x for m in marks] + [v.x for v in vlines]
    ys = [y for pts in clean for _, y in pts] + [m.y for m in marks]
    names = [s.name for s in series]
    legend = _legend_width(names)
    frame = _Frame(left=64, top=32, width=max(60, width - 64 - 16 - legend), height=max(40, height - 32 - 46),
                   log_y=log_y)
    frame.parts = _open_svg(width, height, title or y_label or "chart")

    if x_range:
        frame.x0, frame.x1 = x_range
        xt = [t for t in nice_ticks(*x_range) if x_range[0] - 1e-12 <= t <= x_range[1] + 1e-12]
    else:
        lo, hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
        xt = nice_ticks(lo, hi)
        frame.x0, frame.x1 = xt[0], xt[-1]
    if integer_x:
        xt = sorted({float(round(t)) for t in xt if abs(t - round(t)) < 1e-9})
        if not xt and xs:
            xt = sorted({float(round(x)) for x in xs})
    xstep = xt[1] - xt[0] if len(xt) > 1 else None
    frame.y0, frame.y1, yt, ylabels = _y_scale(ys, log_y, y_range, zero=False)

    _y_grid(frame, yt, ylabels)
    for t in xt:
        frame.parts.append(_text(frame.px(t), frame.top + frame.height + 15, format_number(t, xstep)))
    _axes(frame, title, x_label, y_label, height)
    if not any(clean):
        frame.parts.append(_text(frame.left + frame.width / 2, frame.top + frame.height / 2, "no data"))

    for v in vlines:
        x = frame.px(v.x)
        frame.parts.append(f'<line class="vline" x1="{x:.1f}" y1="{frame.top:.1f}" x2="{x:.1f}" '
                           f'y2="{frame.top + frame.height:.1f}" stroke={quoteattr(v.colour)} '
                           f'stroke-dasharray="4,3"/>')
        if v.label:
            # At the foot of the line: marks (e.g. the fastest point) tend to sit near the top.
            frame.parts.append(_text(x + 3, frame.top + frame.height - 6, v.label, "start",
                                     f" fill={quoteattr(v.colour)}"))
    entries = []
    for i, (s, pts) in enumerate(zip(series, clean)):
        colour = s.colour or PALETTE[i % len(PALETTE)]
        entries.append((s.name, colour))
        coords = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in pts)
        if s.line and len(pts) > 1:
            frame.parts.append(f'<polyline class="series" points="{coords}" fill="none" '
                               f'stroke={quoteattr(colour)} stroke-width="1.8"/>')
        for x, y in pts:
            frame.parts.append(f'<circle class="point" cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="3" '
                               f'fill={quoteattr(colour)}><title>{escape(s.name)} '
                               f'({format_number(x)}, {format_number(y)})</title></circle>')
    for m in marks:
        cx, cy = frame.px(m.x), frame.py(m.y)
        frame.parts.append(f'<circle class="mark" cx="{cx:.1f}" cy="{cy:.1f}" r="7" fill="none" '
                           f'stroke="#000" stroke-width="2"/>')
        if m.label:
            # Label on the inner side of the ring, so a mark at the plot's edge keeps its text.
            right_half = cx > frame.left + frame.width / 2
            frame.parts.append(_text(cx - 9 if right_half else cx + 9, cy - 9 if cy > frame.top + 20 else cy + 18,
                                     m.label, "end" if right_half else "start", ' font-weight="bold"'))
    _legend(frame, entries)
    frame.parts.append("</svg>")
    return "\n".join(frame.parts) + "\n"


# ---------------------------------------------------------------- grouped bar chart
def bar_chart(categories: Sequence[str], series: Sequence[BarSeries], *, title: str = "",
              x_label: str = "", y_label: str = "", width: int = 640, height: int = 360,
              y_range: Optional[tuple[float, float]] = None, value_labels: bool = True) -> str:
    """A grouped bar chart: one group per category, one bar per series in each group.

    Args:
        categories: group labels along x (e.g. "recall@10").
        series: ``values[i]`` is the bar height for ``categories[i]`` (data units);
            None draws no bar and writes "n/a" (a metric not measured, a slice with no pairs).
        y_range: fixed y range; default from 0 (or the smallest negative value) to the
            largest value, rounded out to nice ticks.
        value_labels: write each bar's value above it.
    """
    for s in series:
        if len(s.values) != len(categories):
            raise ValueError(f"bar series {s.name!r} has {len(s.values)} values for {len(categories)} categories")
    values = [float(v) for s in series for v in s.values if _finite(v)]
    legend = _legend_width([s.name for s in series])
    frame = _Frame(left=64, top=32, width=max(60, width - 64 - 16 - legend), height=max(40, height - 32 - 46))
    frame.parts = _open_svg(width, height, title or y_label or "chart")
    frame.y0, frame.y1, yt, ylabels = _y_scale(values, False, y_range, zero=True)
    _y_grid(frame, yt, ylabels)
    _axes(frame, title, x_label, y_label, height)

    n_groups, n_series = max(1, len(categories)), max(1, len(series))
    group_w = frame.width / n_groups
    bar_w = group_w * 0.8 / n_series
    base = frame.py(min(max(0.0, frame.y0), frame.y1))
    entries = []
    for j, s in enumerate(series):
        colour = s.colour or PALETTE[j % len(PALETTE)]
        entries.append((s.name, colour))
        for i, v in enumerate(s.values):
            x = frame.left + group_w * i + group_w * 0.1 + bar_w * j
            if not _finite(v):
                frame.parts.append(_text(x + bar_w / 2, base - 4, "n/a", extra=' fill="#777" font-size="9"'))
                continue
            top = frame.py(float(v))
            y, h = min(top, base), abs(base - top)
            frame.parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                               f'fill={quoteattr(colour)}><title>{escape(s.name)} {escape(categories[i])}: '
                               f'{format_number(float(v))}</title></rect>')
            if value_labels:
                frame.parts.append(_text(x + bar_w / 2, y - 3, format_number(float(v)), extra=' font-size="9"'))
    for i, name in enumerate(categories):
        frame.parts.append(_text(frame.left + group_w * (i + 0.5), frame.top + frame.height + 15, name))
    _legend(frame, entries)
    frame.parts.append("</svg>")
    return "\n".join(frame.parts) + "\n"


def _finite(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
