"""HTML building blocks of the evaluation report: escaping, number formats, tables and inline SVG charts.

Everything here returns HTML or SVG text with every piece of user text escaped; `report.py`
assembles the sections from these pieces.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac")


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def shorten(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def html_table(columns: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """`rows` cells are already-escaped HTML; the first `text_columns` are left-aligned."""
    head = "".join(f'<th class="{"text" if i < text_columns else ""}">{esc(c)}</th>' for i, c in enumerate(columns))
    body = "".join(
        "<tr>" + "".join(cell if cell.startswith("<td") else f'<td class="{"text" if i < text_columns else ""}">{cell}</td>'
                         for i, cell in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def heat_matrix(names: Sequence[str], values: Sequence[Sequence[float | None]], *, low: float, neutral: float,
                high: float, fmt: Callable[[float], str]) -> str:
    """A square table, rows and columns named by `names`, each cell tinted by its value: white at
    `neutral`, deepening to green at `high` and to red at `low` (values outside are held at the ends).
    A None cell is printed as a dash, untinted."""
    def cell(value: float | None) -> str:
        if value is None:
            return "—"
        span = (high - neutral) if value >= neutral else (neutral - low)
        strength = min(1.0, abs(value - neutral) / span) if span > 0 else 1.0
        r, g, b = (int(255 - strength * (255 - c)) for c in ((99, 190, 123) if value >= neutral else (248, 105, 107)))
        return f'<td style="background: rgb({r}, {g}, {b})">{esc(fmt(value))}</td>'

    rows = [[esc(name)] + [cell(v) for v in values[i]] for i, name in enumerate(names)]
    return html_table([""] + [shorten(n, 16) for n in names], rows)


# ============================================================================ SVG charts

def _linear(d0: float, d1: float, r0: float, r1: float) -> Callable[[float], float]:
    span = (d1 - d0) or 1.0
    return lambda v: r0 + (v - d0) / span * (r1 - r0)


def _ticks(low: float, high: float, target: int = 5) -> list[float]:
    """Round-numbered ticks (steps of 1, 2 or 5 times a power of ten) covering [low, high]."""
    span = high - low
    if span <= 0:
        return [low]
    raw = span / target
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1)]


def _svg(css_class: str, width: float, height: float, body: list[str], label: str) -> str:
    return (f'<svg class="chart {css_class}" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
            f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{esc(label)}">'
            + "".join(body) + "</svg>")


def _legend(names: Sequence[str], x: float, y: float) -> list[str]:
    parts = []
    for i, name in enumerate(names):
        parts.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>'
                     f'<text x="{x + 14:.1f}" y="{y:.1f}">{esc(shorten(name, 32))}</text>')
        x += 24 + 6.5 * min(len(name), 32)
    return parts


@dataclass
class Mark:
    series: int  # colour index into the legend
    value: float | None
    low: float | None = None
    high: float | None = None
    text: str = ""  # printed right of the mark


@dataclass
class Row:
    label: str
    marks: list[Mark] = field(default_factory=list)


def horizontal_chart(
    rows: Sequence[Row], series: Sequence[str], *, domain: tuple[float, float], css_class: str, label: str,
    dots: bool = False, reference: float | None = None, tick_format: Callable[[float], str] = num,
    show_axis: bool = True, width: float = 760,
) -> str:
    """Bars (or dots) with optional error bars, one row per label and one mark per series."""
    mark_h, gap, left, right = 14.0, 10.0, 200.0, 90.0
    top = 28.0 if len(series) > 1 else 10.0
    height = top + sum(max(1, len(r.marks)) * mark_h + gap for r in rows) + (26 if show_axis else 4)
    x = _linear(domain[0], domain[1], left, width - right)
    body: list[str] = []
    if len(series) > 1:
        body += _legend(series, left, 16)
    plot_bottom = height - (26 if show_axis else 4)
    if show_axis:
        for tick in _ticks(*domain):
            body.append(f'<line class="grid" x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top - 4:.1f}" y2="{plot_bottom:.1f}"/>'
                        f'<text x="{x(tick):.1f}" y="{plot_bottom + 16:.1f}" text-anchor="middle">{esc(tick_format(tick))}</text>')
        body.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{plot_bottom:.1f}" y2="{plot_bottom:.1f}"/>')
    if reference is not None:
        body.append(f'<line class="refline" x1="{x(reference):.1f}" x2="{x(reference):.1f}" '
                    f'y1="{top - 4:.1f}" y2="{plot_bottom:.1f}"/>')
    y = top
    base = x(max(domain[0], min(0.0, domain[1])))
    for row in rows:
        row_h = max(1, len(row.marks)) * mark_h
        body.append(f'<text x="{left - 8}" y="{y + row_h / 2 + 4:.1f}" text-anchor="end">'
                    f'<title>{esc(row.label)}</title>{esc(shorten(row.label))}</text>')
        for k, mark in enumerate(row.marks):
            mid = y + k * mark_h + mark_h / 2
            colour = PALETTE[mark.series % len(PALETTE)]
            end = base
            if mark.value is not None:
                tip = f"<title>{esc(row.label)} · {esc(series[mark.series])}: {esc(mark.text)}</title>"
                if dots:
                    body.append(f'<circle class="point" cx="{x(mark.value):.1f}" cy="{mid:.1f}" r="5" fill="{colour}">{tip}</circle>')
                else:
                    x0, x1 = sorted((base, x(mark.value)))
                    body.append(f'<rect class="bar" x="{x0:.1f}" y="{mid - mark_h / 2 + 1.5:.1f}" width="{x1 - x0:.1f}" '
                                f'height="{mark_h - 3:.1f}" fill="{colour}">{tip}</rect>')
                end = max(base, x(mark.value))
            if mark.low is not None and mark.high is not None:
                lo, hi = x(mark.low), x(mark.high)
                body.append(f'<path class="errbar" fill="none" d="M{lo:.1f},{mid:.1f}H{hi:.1f}'
                            f'M{lo:.1f},{mid - 4:.1f}V{mid + 4:.1f}M{hi:.1f},{mid - 4:.1f}V{mid + 4:.1f}"/>')
                end = max(end, hi)
            body.append(f'<text x="{end + 5:.1f}" y="{mid + 4:.1f}">{esc(mark.text if mark.value is not None else "n/a")}</text>')
        y += row_h + gap
    return _svg(css_class, width, height, body, label)


def histogram(title: str, bins: list[int], counts: list[int], y_max: int, colour: str) -> str:
    width, height, left, bottom, top = 280.0, 186.0, 30.0, 24.0, 34.0
    x = _linear(0, len(bins), left, width - 8)
    y = _linear(0, max(1, y_max), height - bottom, top)
    slot = x(1) - x(0)
    body = [f'<text x="{left}" y="14"><title>{esc(title)}</title>{esc(shorten(title, 40))}</text>',
            f'<line class="axis" x1="{left}" x2="{width - 8}" y1="{height - bottom}" y2="{height - bottom}"/>']
    for i, (grade, count) in enumerate(zip(bins, counts)):
        bar_top = y(count)
        body.append(f'<rect class="bar" x="{x(i) + 1:.1f}" y="{bar_top:.1f}" width="{slot - 2:.1f}" '
                    f'height="{height - bottom - bar_top:.1f}" fill="{colour}"><title>grade {grade}: {count}</title></rect>'
                    f'<text x="{x(i) + slot / 2:.1f}" y="{height - 8}" text-anchor="middle">{grade}</text>')
        if count:
            body.append(f'<text x="{x(i) + slot / 2:.1f}" y="{bar_top - 3:.1f}" text-anchor="middle">{count}</text>')
    return _svg("histogram", width, height, body, f"score histogram: {title}")


def _plot_frame(xs: list[float], ys: list[float], names: list[str], x_label: str, y_label: str):
    """Axes, grid, ticks, labels and legend of an x/y plot: (body, x scale, y scale). The x axis starts at
    0 when the data are positive; the y axis pads the data's range by 5% on both sides."""
    width, height, left, right, top, bottom = 760.0, 380.0, 54.0, 16.0, 30.0, 44.0
    xs, ys = xs or [0.0], ys or [0.0]
    x_domain = (min(0.0, min(xs)), max(xs) if max(xs) > min(0.0, min(xs)) else 1.0)
    y_pad = (max(ys) - min(ys)) * 0.05 or 0.5
    y_domain = (min(ys) - y_pad, max(ys) + y_pad)
    x = _linear(*x_domain, left, width - right)
    y = _linear(*y_domain, height - bottom, top)
    body = _legend(names, left, 16)
    for tick in _ticks(*x_domain):
        body.append(f'<line class="grid" x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top}" y2="{height - bottom}"/>'
                    f'<text x="{x(tick):.1f}" y="{height - bottom + 15}" text-anchor="middle">{num(tick)}</text>')
    for tick in _ticks(*y_domain):
        body.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>'
                    f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{num(tick)}</text>')
    body.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{height - bottom}" y2="{height - bottom}"/>'
                f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}"/>'
                f'<text x="{(left + width - right) / 2:.1f}" y="{height - 8}" text-anchor="middle">{esc(x_label)}</text>'
                f'<text x="14" y="{(top + height - bottom) / 2:.1f}" text-anchor="middle" '
                f'transform="rotate(-90 14 {(top + height - bottom) / 2:.1f})">{esc(y_label)}</text>')
    return body, x, y, (width, height)


def scatter(series: list[dict[str, Any]], x_label: str) -> str:
    body, x, y, size = _plot_frame([v for s in series for v in s["lengths"]], [v for s in series for v in s["scores"]],
                                   [s["model"] for s in series], x_label, "score")
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        for length, score in zip(s["lengths"], s["scores"]):
            body.append(f'<circle class="point" cx="{x(length):.1f}" cy="{y(score):.1f}" r="3.5" fill="{colour}">'
                        f'<title>{esc(s["model"])}: length {num(length)}, score {num(score)}</title></circle>')
    return _svg("scatter", *size, body, "score against response length")


def line_chart(series: list[dict[str, Any]], x_label: str, y_label: str, label: str) -> str:
    """One line per series ({"name", "x", "y"}), points in the order given, each point with a tooltip."""
    body, x, y, size = _plot_frame([v for s in series for v in s["x"]], [v for s in series for v in s["y"]],
                                   [s["name"] for s in series], x_label, y_label)
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        points = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in zip(s["x"], s["y"]))
        body.append(f'<polyline class="curve" fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        for a, b in zip(s["x"], s["y"]):
            body.append(f'<circle class="point" cx="{x(a):.1f}" cy="{y(b):.1f}" r="2.5" fill="{colour}">'
                        f'<title>{esc(s["name"])}: {esc(x_label)} {num(a)}, {esc(y_label)} {num(b)}</title></circle>')
    return _svg("curve", *size, body, label)
