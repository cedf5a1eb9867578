"""Reports of a load-test run: report.json (everything, histograms encoded), summary.csv, report.html."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.loadtest.report.html import render_html

SUMMARY_FIELDS = [
    "level",
    "target",
    "requests",
    "failed",
    "error_rate",
    "throughput_rps",
    "throughput_ci_lo",
    "throughput_ci_hi",
    "mean_ms",
    "p50_ms",
    "p50_ci_lo",
    "p50_ci_hi",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "p99_ci_lo",
    "p99_ci_hi",
    "p99_9_ms",
    "max_ms",
    "service_p99_ms",
    "server_mean_ms",
    "accuracy",
    "cpu_percent",
    "memory_mb",
    "valid",
    # Appended (older readers keep their columns): wrong answers are part of `failed` when counted.
    "wrong_answers",
    "golden_agreement",
    "golden_counted",
    "server_unattributable_steps",
]


def level_label(level: dict[str, Any]) -> str:
    return f"c={level['concurrency']}" if level["loop"] == "closed" else f"rate={level['rate']:g}/s"


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for g in result.get("groups", []):
        for name, t in g["targets"].items():
            lat, ci = t["latency_ms"], t.get("ci95", {})
            rows.append(
                {
                    "level": level_label(g["level"]),
                    "target": name,
                    "requests": t["requests"],
                    "failed": t["failed"],
                    "error_rate": t["error_rate"],
                    "throughput_rps": t["throughput_rps"],
                    "throughput_ci_lo": ci.get("throughput", [None, None])[0],
                    "throughput_ci_hi": ci.get("throughput", [None, None])[1],
                    "mean_ms": lat["mean"],
                    "p50_ms": lat["p50"],
                    "p50_ci_lo": ci.get("p50", [None, None])[0],
                    "p50_ci_hi": ci.get("p50", [None, None])[1],
                    "p90_ms": lat["p90"],
                    "p95_ms": lat["p95"],
                    "p99_ms": lat["p99"],
                    "p99_ci_lo": ci.get("p99", [None, None])[0],
                    "p99_ci_hi": ci.get("p99", [None, None])[1],
                    "p99_9_ms": lat["p99_9"],
                    "max_ms": lat["max"],
                    "service_p99_ms": t["service_ms"]["p99"],
                    "server_mean_ms": t["server_mean_ms"],
                    "accuracy": t["accuracy"],
                    "cpu_percent": t["resources"]["cpu_percent_mean"],
                    "memory_mb": t["resources"]["memory_mb_max"],
                    "valid": t["valid"],
                    # n/a where answers were not checked against the served version's golden predictions.
                    "wrong_answers": t.get("wrong_answers", 0)
                    if (t.get("golden_check") or {}).get("counted")
                    else None,
                    "golden_agreement": t.get("golden_agreement"),
                    "golden_counted": (t.get("golden_check") or {}).get("counted"),
                    "server_unattributable_steps": t.get("server_unattributable_steps", 0),
                }
            )
    for name, r in result.get("slo", {}).items():
        rows.append(
            {
                "level": f"slo p99<={r['slo_p99_ms']:g}ms",
                "target": name,
                "throughput_rps": r["max_rate"],
                "valid": r["limited_by_generator_at"] is None,
            }
        )
    return rows


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def summary_table(result: dict[str, Any]) -> str:
    """The plain-text table the CLI prints at the end."""
    cols = [
        ("level", "level", 0),
        ("target", "target", 0),
        ("requests", "requests", 0),
        ("failed", "failed", 0),
        ("wrong_answers", "wrong", 0),
        ("throughput_rps", "req/s", 1),
        ("mean_ms", "mean", 2),
        ("p50_ms", "p50", 2),
        ("p90_ms", "p90", 2),
        ("p99_ms", "p99", 2),
        ("p99_ci", "p99 95% CI", 2),
        ("p99_9_ms", "p99.9", 2),
        ("max_ms", "max", 2),
        ("server_mean_ms", "server", 2),
        ("accuracy", "acc", 3),
    ]
    rows = []
    for r in summary_rows(result):
        r = dict(r)
        lo, hi = r.get("p99_ci_lo"), r.get("p99_ci_hi")
        r["p99_ci"] = f"{lo:.2f}-{hi:.2f}" if lo is not None and hi is not None else "n/a"
        cells = [_fmt(r.get(k), d) for k, _, d in cols]
        if r.get("server_unattributable_steps"):
            # Marked: some rounds' server figures were another server's (see the warnings).
            cells[[k for k, _, _ in cols].index("server_mean_ms")] += "!"
        rows.append(cells)
    head = [h for _, h, _ in cols]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)) + "   (latency in ms)"]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    if any(r.get("server_unattributable_steps") for r in summary_rows(result)):
        lines.append("server ...!: not attributable to the target in some or all rounds (see the warnings)")
    return "\n".join(lines)


def run_folder(report_dir: str | Path, name: str) -> Path:
    base = Path(report_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = base / f"{stamp}-{name}"
    n = 1
    while folder.exists():
        n += 1
        folder = base / f"{stamp}-{name}-{n}"
    folder.mkdir(parents=True)
    return folder


def write_report(result: dict[str, Any], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "csv": folder / "summary.csv", "html": folder / "report.html"}
    paths["json"].write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in summary_rows(result):
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    paths["csv"].write_text(buf.getvalue(), encoding="utf-8")
    paths["html"].write_text(render_html(result), encoding="utf-8")
    return paths
