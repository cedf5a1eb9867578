"""The self-contained HTML report: verdict first, then plots (inline SVG) and the tables behind them."""

from __future__ import annotations

import math
from importlib import resources
from typing import Any

import jinja2

from gateway.loadtest import histograms as H
from gateway.loadtest.report import svg

# 1/(1-p) on a log axis spreads the tail out, as HdrHistogram's own plots do.
SPECTRUM_TICKS = [
    (1.0, "0%"),
    (2.0, "50%"),
    (10.0, "90%"),
    (100.0, "99%"),
    (1000.0, "99.9%"),
    (10000.0, "99.99%"),
    (100000.0, "99.999%"),
]


def _colors(names: list[str]) -> dict[str, str]:
    return {n: svg.PALETTE[i % len(svg.PALETTE)] for i, n in enumerate(names)}


def _label(level: dict[str, Any]) -> str:
    return f"{level['concurrency']} clients" if level["loop"] == "closed" else f"{level['rate']:g} req/s"


def spectrum_chart(group: dict[str, Any], colors: dict[str, str]) -> str:
    series = []
    for name, t in group["targets"].items():
        pts = [(1.0 / (1.0 - min(p, 99.999) / 100.0), ms) for p, ms in H.spectrum_ms(H.decode(t["histogram"]))]
        series.append(svg.Series(name, [pts], colors[name]))
        if group["level"]["loop"] == "open":
            spts = [
                (1.0 / (1.0 - min(p, 99.999) / 100.0), ms) for p, ms in H.spectrum_ms(H.decode(t["service_histogram"]))
            ]
            series.append(svg.Series(f"{name} (service)", [spts], colors[name], dashed=True))
    return svg.render(
        svg.Chart(
            f"Latency by percentile — {_label(group['level'])}",
            svg.Axis("percentile", log=True, ticks=SPECTRUM_TICKS, lo=1.0),
            svg.Axis("latency (ms)", log=True),
            series,
        )
    )


def timeline_charts(result: dict[str, Any], colors: dict[str, str]) -> tuple[str, str]:
    block_s = result["scenario"]["block_s"]
    lat_series, thr_series = [], []
    for name in result["scenario"]["targets"]:
        p50, p99, thr = [], [], []
        for s in result["steps"]:
            if s["target"] != name:
                continue
            seg50, seg99, segt = [], [], []
            for b in s["blocks"]:
                t = s["t_start"] + (b["index"] + 0.5) * block_s
                h = H.decode(b["hist"]) if b["hist"] else H.new_histogram()
                n = h.get_total_count()
                if n:
                    seg50.append((t, h.get_value_at_percentile(50) / 1000.0))
                    seg99.append((t, h.get_value_at_percentile(99) / 1000.0))
                segt.append((t, n / block_s))
            p50.append(seg50)
            p99.append(seg99)
            thr.append(segt[:-1] if len(segt) > 1 else segt)  # the last block is partial
        lat_series += [
            svg.Series(f"{name} p99", p99, colors[name], markers=True),
            svg.Series(f"{name} p50", p50, colors[name], dashed=True),
        ]
        thr_series.append(svg.Series(name, thr, colors[name], markers=True))
    lat_svg = svg.render(
        svg.Chart(
            "Latency over the run (one point per block)",
            svg.Axis("time since start (s)"),
            svg.Axis("latency (ms)", log=True),
            lat_series,
        )
    )
    thr_svg = svg.render(
        svg.Chart("Throughput over the run", svg.Axis("time since start (s)"), svg.Axis("responses/s"), thr_series)
    )
    return lat_svg, thr_svg


def sweep_chart(result: dict[str, Any], colors: dict[str, str]) -> str | None:
    if len(result["groups"]) < 2:
        return None
    series = []
    for name in result["scenario"]["targets"]:
        p99 = [
            (g["targets"][name]["throughput_rps"], g["targets"][name]["latency_ms"]["p99"])
            for g in result["groups"]
            if g["targets"][name]["latency_ms"]["p99"] is not None
        ]
        p50 = [
            (g["targets"][name]["throughput_rps"], g["targets"][name]["latency_ms"]["p50"])
            for g in result["groups"]
            if g["targets"][name]["latency_ms"]["p50"] is not None
        ]
        series += [
            svg.Series(f"{name} p99", [p99], colors[name], markers=True),
            svg.Series(f"{name} p50", [p50], colors[name], dashed=True, markers=True),
        ]
    return svg.render(
        svg.Chart(
            "Latency versus throughput (one point per load level)",
            svg.Axis("throughput (responses/s)"),
            svg.Axis("latency (ms)", log=True),
            series,
        )
    )


def breakdown_chart(group: dict[str, Any]) -> str:
    rows = []
    for name, t in group["targets"].items():
        mean = t["latency_ms"]["mean"] or 0.0
        srv = t["server_mean_ms"]
        if srv is None:
            why = "not attributable" if t.get("server_unattributable_steps") else "n/a"
            rows.append((f"{name} (server {why})", [(mean, "#8d96a3", "client-measured mean (no server metric)")]))
        else:
            rows.append(
                (
                    name,
                    [
                        (min(srv, mean), "#30638e", "server time (Prometheus, mean)"),
                        (max(mean - srv, 0.0), "#edae49", "network, serialization, queueing"),
                    ],
                )
            )
    return svg.stacked_bars(f"Where the mean latency goes — {_label(group['level'])}", rows)


def slo_chart(result: dict[str, Any], colors: dict[str, str]) -> str | None:
    if not result.get("slo"):
        return None
    series, slo_ms = [], None
    for name, r in result["slo"].items():
        slo_ms = r["slo_p99_ms"]
        pts = sorted((s["rate"], s["p99_ms"]) for s in r["steps"] if s["p99_ms"] is not None)
        series.append(svg.Series(name, [pts], colors[name], markers=True))
    return svg.render(
        svg.Chart(
            "SLO search: p99 at each rate tried",
            svg.Axis("offered rate (req/s)"),
            svg.Axis("p99 latency (ms)", log=True),
            series,
            hlines=[(slo_ms, f"SLO {slo_ms:g} ms")] if slo_ms else [],
        )
    )


def _num(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ci(ci: dict[str, list[float]], key: str, digits: int = 2) -> str:
    if key not in ci:
        return ""
    lo, hi = ci[key]
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def render_html(result: dict[str, Any]) -> str:
    names = result["scenario"]["targets"]
    colors = _colors(names)
    groups = []
    for g in result["groups"]:
        groups.append(
            {
                "label": _label(g["level"]),
                "data": g,
                "spectrum": spectrum_chart(g, colors),
                "breakdown": breakdown_chart(g),
            }
        )
    timeline_lat, timeline_thr = timeline_charts(result, colors) if result["steps"] else ("", "")
    env = jinja2.Environment(autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined)
    env.filters["num"] = _num
    env.filters["pct"] = lambda v: "n/a" if v is None else f"{v * 100:.2f}%"
    env.globals["ci"] = _ci
    template = env.from_string(
        resources.files("gateway.loadtest.report").joinpath("template.html.j2").read_text(encoding="utf-8")
    )
    return template.render(
        r=result,
        groups=groups,
        colors=colors,
        timeline_lat=timeline_lat,
        timeline_thr=timeline_thr,
        sweep=sweep_chart(result, colors),
        slo=slo_chart(result, colors),
    )
