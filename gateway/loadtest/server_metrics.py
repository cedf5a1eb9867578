"""Server-side latency from the backends' Prometheus endpoints, as deltas around each measured step.

torch_service: `torch_service_request_latency_seconds` (seconds). TF Serving and the compat server:
`:tensorflow:serving:request_latency` (microseconds; labels model_name, API, entrypoint). A missing
endpoint or metric gives None, which reports show as "n/a". So does a step whose server counted far
fewer requests than the client had answered through the target (`step_server`): those figures are
another server's, or not only ours, and are not reported as the target's.
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


# A step's server-side figures are the target's only if the server counted at least this share of the
# requests the client had answered through it (the rest of the difference: scrape timing, retries)...
MIN_SERVER_SHARE = 0.5
# ... and not many more than the client sent (a gateway retries a call at most once): beyond that,
# other traffic is mixed into the server's figures.
MAX_SERVER_FACTOR = 2.0
SLACK_REQUESTS = 10


def step_server(
    before: Snapshot | None, after: Snapshot | None, answered: int, sent: int | None = None
) -> tuple[dict[str, float] | None, str | None]:
    """(mean server time of the step, or None; why it is not attributable, or None).

    `answered`: requests of the step that the backend itself answered (2xx, wrong answers included);
    `sent`: all requests the client sent in the step.
    """
    if before is None or after is None:
        return None, None  # no metric: plain "n/a"
    dc = after.count - before.count
    if answered > 0 and dc < MIN_SERVER_SHARE * answered:
        return None, (
            f"the server's request counter grew by {dc:.0f} while {answered} requests were answered through "
            f"this target (under {MIN_SERVER_SHARE:.0%}): its figures are not this target's"
        )
    if sent is not None and dc > MAX_SERVER_FACTOR * max(sent, answered) + SLACK_REQUESTS:
        return None, (
            f"the server's request counter grew by {dc:.0f} while {max(sent, answered)} requests were sent "
            "through this target: other traffic is mixed into its figures"
        )
    return delta_mean_ms(before, after), None
