"""Server-side latency from the backends' Prometheus endpoints, as deltas around each measured step.

torch_service: `torch_service_request_latency_seconds` (seconds). TF Serving and the compat server:
`:tensorflow:serving:request_latency` (microseconds; labels model_name, API, entrypoint). A missing
endpoint or metric gives None, which reports show as "n/a".
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

TORCH_METRIC = "torch_service_request_latency_seconds"
TF_METRIC = ":tensorflow:serving:request_latency"


@dataclass
class Snapshot:
    sum_s: float
    count: float


def scrape(url: str, kind: str, entrypoint: str = "", timeout: float = 2.0) -> Snapshot | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    return parse(text, kind, entrypoint)


def parse(text: str, kind: str, entrypoint: str = "") -> Snapshot | None:
    """Sum of `_sum` and `_count` over the series that belong to predict calls of this target."""
    name, scale = (TORCH_METRIC, 1.0) if kind == "torch" else (TF_METRIC, 1e-6)
    total_sum = total_count = 0.0
    found = False
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:
        return None
    for fam in families:
        if fam.name != name:
            continue
        for s in fam.samples:
            labels = s.labels
            if kind == "tf":
                if labels.get("model_name", "cnn") != "cnn":
                    continue
                if labels.get("API", "predict").lower() != "predict":
                    continue
                if entrypoint and labels.get("entrypoint", entrypoint).upper() != entrypoint:
                    continue
            if s.name == name + "_sum":
                total_sum += s.value * scale
                found = True
            elif s.name == name + "_count":
                total_count += s.value
    return Snapshot(total_sum, total_count) if found else None


def scrape_all(urls: tuple[str, ...], kind: str, entrypoint: str = "") -> Snapshot | None:
    snaps = [scrape(u, kind, entrypoint) for u in urls]
    if not snaps or any(s is None for s in snaps):
        return None
    return Snapshot(sum(s.sum_s for s in snaps if s), sum(s.count for s in snaps if s))


def delta_mean_ms(before: Snapshot | None, after: Snapshot | None) -> dict[str, float] | None:
    """Mean server time per request over the step, from the histogram's sum/count deltas."""
    if before is None or after is None:
        return None
    dc = after.count - before.count
    if dc <= 0:
        return None
    return {"requests": dc, "mean_ms": (after.sum_s - before.sum_s) / dc * 1000.0}
