"""Small inline-SVG charts (no JavaScript, no external files): lines on linear or log axes, and bars."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

PALETTE = ["#d1495b", "#00798c", "#edae49", "#30638e", "#66a182", "#8d96a3", "#6a4c93"]


@dataclass
class Series:
    name: str
    segments: list[list[tuple[float, float]]]  # each segment is drawn as one polyline
    color: str = "#333"
    dashed: bool = False
    markers: bool = False


@dataclass
class Axis:
    label: str
    log: bool = False
    ticks: list[tuple[float, str]] | None = None
    lo: float | None = None
    hi: float | None = None


@dataclass
class Chart:
    title: str
    x: Axis
    y: Axis
    series: list[Series] = field(default_factory=list)
    hlines: list[tuple[float, str]] = field(default_factory=list)
    width: int = 760
    height: int = 340


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v <= hi + step * 0.5:
        if v >= lo - 1e-12:
            ticks.append(round(v, 10))
        v += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{v:.2g}"


def render(chart: Chart) -> str:
    w, h = chart.width, chart.height
    ml, mr, mt, mb = 64, 150, 34, 46
    pw, ph = w - ml - mr, h - mt - mb
    pts = [
        p
        for s in chart.series
        for seg in s.segments
        for p in seg
        if all(math.isfinite(c) for c in p) and (not chart.x.log or p[0] > 0) and (not chart.y.log or p[1] > 0)
    ]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
        f'role="img" aria-label="{escape(chart.title)}" font-family="sans-serif" font-size="11">',
        f'<text x="{ml}" y="20" font-size="14" font-weight="bold">{escape(chart.title)}</text>',
    ]
    if not pts:
        out.append(f'<text x="{ml + 10}" y="{mt + ph / 2}">no data</text></svg>')
        return "".join(out)

    def bounds(axis: Axis, vals: list[float], extra: list[float]) -> tuple[float, float]:
        vs = vals + extra
        lo = axis.lo if axis.lo is not None else min(vs)
        hi = axis.hi if axis.hi is not None else max(vs)
        if axis.log:
            lo, hi = math.log10(max(lo, 1e-9)), math.log10(max(hi, 1e-9))
            lo, hi = math.floor(lo), math.ceil(hi) if hi > lo else lo + 1
        else:
            if axis.lo is None:
                lo = min(lo, 0.0)
            if hi <= lo:
                hi = lo + 1.0
            hi = hi + (hi - lo) * 0.05
        return lo, hi

    xlo, xhi = bounds(chart.x, [p[0] for p in pts], [])
    ylo, yhi = bounds(chart.y, [p[1] for p in pts], [v for v, _ in chart.hlines])

    def sx(v: float) -> float:
        v = math.log10(v) if chart.x.log else v
        return ml + (v - xlo) / (xhi - xlo) * pw

    def sy(v: float) -> float:
        v = math.log10(max(v, 1e-9)) if chart.y.log else v
        return mt + ph - (v - ylo) / (yhi - ylo) * ph

    out.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>')
    xt = chart.x.ticks or (
        [(10**e, _fmt(10**e)) for e in range(int(xlo), int(xhi) + 1)]
        if chart.x.log
        else [(t, _fmt(t)) for t in _nice_ticks(xlo, xhi)]
    )
    for v, label in xt:
        if v <= 0 and chart.x.log:
            continue
        x = sx(v)
        if ml - 0.5 <= x <= ml + pw + 0.5:
            out.append(
                f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" stroke="#e3e3e3"/>'
                f'<text x="{x:.1f}" y="{mt + ph + 15}" text-anchor="middle">{escape(label)}</text>'
            )
    yt = chart.y.ticks or (
        [(10**e, _fmt(10**e)) for e in range(int(ylo), int(yhi) + 1)]
        if chart.y.log
        else [(t, _fmt(t)) for t in _nice_ticks(ylo, yhi)]
    )
    for v, label in yt:
        y = sy(v)
        if mt - 0.5 <= y <= mt + ph + 0.5:
            out.append(
                f'<line x1="{ml}" y1="{y:.1f}" x2="{ml + pw}" y2="{y:.1f}" stroke="#e3e3e3"/>'
                f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>'
            )
    out.append(
        f'<text x="{ml + pw / 2}" y="{h - 8}" text-anchor="middle">{escape(chart.x.label)}</text>'
        f'<text transform="translate(14,{mt + ph / 2}) rotate(-90)" text-anchor="middle">'
        f"{escape(chart.y.label)}</text>"
    )
    for v, label in chart.hlines:
        y = sy(v)
        out.append(
            f'<line x1="{ml}" y1="{y:.1f}" x2="{ml + pw}" y2="{y:.1f}" stroke="#000" stroke-dasharray="6 3"/>'
            f'<text x="{ml + pw - 4}" y="{y - 4:.1f}" text-anchor="end">{escape(label)}</text>'
        )
    for i, s in enumerate(chart.series):
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        for seg in s.segments:
            seg = [p for p in seg if (not chart.x.log or p[0] > 0) and (not chart.y.log or p[1] > 0)]
            if not seg:
                continue
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in seg)
            out.append(
                f'<polyline fill="none" stroke="{s.color}" stroke-width="1.8"{dash} points="{path}">'
                f"<title>{escape(s.name)}</title></polyline>"
            )
            if s.markers or len(seg) == 1:
                out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.6" fill="{s.color}"/>' for x, y in seg)
        ly = mt + 8 + i * 16
        out.append(
            f'<line x1="{ml + pw + 10}" y1="{ly}" x2="{ml + pw + 30}" y2="{ly}" stroke="{s.color}" '
            f'stroke-width="2.5"{dash}/><text x="{ml + pw + 35}" y="{ly + 4}">{escape(s.name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def stacked_bars(
    title: str, rows: list[tuple[str, list[tuple[float, str, str]]]], unit: str = "ms", width: int = 760
) -> str:
    """Horizontal stacked bars: rows of (label, [(value, color, legend)])."""
    ml, mr, bar_h, gap = 120, 40, 22, 12
    h = 40 + len(rows) * (bar_h + gap) + 30
    total_max = max((sum(v for v, _, _ in parts) for _, parts in rows), default=0.0) or 1.0
    pw = width - ml - mr
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {h}" width="{width}" height="{h}" '
        f'role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="11">',
        f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    legend: dict[str, str] = {}
    for i, (label, parts) in enumerate(rows):
        y = 34 + i * (bar_h + gap)
        out.append(f'<text x="{ml - 8}" y="{y + bar_h / 2 + 4}" text-anchor="end">{escape(label)}</text>')
        x = float(ml)
        for value, color, name in parts:
            bw = max(value, 0.0) / total_max * pw
            legend[name] = color
            out.append(
                f'<rect x="{x:.1f}" y="{y}" width="{bw:.1f}" height="{bar_h}" fill="{color}">'
                f"<title>{escape(name)}: {value:.2f} {unit}</title></rect>"
            )
            if bw > 40:
                out.append(
                    f'<text x="{x + bw / 2:.1f}" y="{y + bar_h / 2 + 4}" text-anchor="middle" fill="#fff">'
                    f"{value:.2f}</text>"
                )
            x += bw
        total = sum(v for v, _, _ in parts)
        out.append(f'<text x="{x + 4:.1f}" y="{y + bar_h / 2 + 4}">{total:.2f} {unit}</text>')
    ly = h - 14
    for j, (name, color) in enumerate(legend.items()):
        lx = ml + j * 230
        out.append(
            f'<rect x="{lx}" y="{ly - 9}" width="12" height="12" fill="{color}"/>'
            f'<text x="{lx + 16}" y="{ly + 1}">{escape(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)
