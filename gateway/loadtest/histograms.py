"""HdrHistogram helpers: one layout for every recorder, lossless merge, percentile summaries.

Latencies are recorded in integer microseconds from 1 us to 120 s with 3 significant digits, so
every histogram in a run has the same bucket layout and merging is an exact add of counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 120_000_000
SIG_FIGS = 3
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIG_FIGS)


def record_s(hist: HdrHistogram, seconds: float) -> None:
    """Record a latency given in seconds; values outside the range are clamped, never dropped."""
    us = int(seconds * 1e6)
    hist.record_value(min(max(us, LOWEST_US), HIGHEST_US))


def from_seconds(values: np.ndarray) -> HdrHistogram:
    """A histogram of many latencies (seconds) at once: one record_value call per distinct microsecond."""
    hist = new_histogram()
    if len(values):
        us = np.clip(np.rint(np.asarray(values, dtype=np.float64) * 1e6), LOWEST_US, HIGHEST_US).astype(np.int64)
        uniq, counts = np.unique(us, return_counts=True)
        for v, c in zip(uniq.tolist(), counts.tolist(), strict=True):
            hist.record_value(v, c)
    return hist


def encode(hist: HdrHistogram) -> str:
    return hist.encode().decode("ascii")


def decode(blob: str) -> HdrHistogram:
    # Decoding yields a histogram sized from the header; add() it into a standard one so layouts agree.
    hist = new_histogram()
    if blob:
        hist.add(HdrHistogram.decode(blob.encode("ascii")))
    return hist


def merge(blobs_or_hists: Iterable[str | HdrHistogram]) -> HdrHistogram:
    """Lossless merge: counts are added bucket by bucket (percentiles are never averaged)."""
    out = new_histogram()
    for item in blobs_or_hists:
        other = decode(item) if isinstance(item, str) else item
        if other.get_total_count():
            out.add(other)
    return out


def summary_ms(hist: HdrHistogram) -> dict[str, Any]:
    """count, mean, min, max and the standard percentiles, all in milliseconds."""
    n = hist.get_total_count()
    if n == 0:
        return {"count": 0, "mean": None, "min": None, "max": None, **{_pkey(p): None for p in PERCENTILES}}
    out: dict[str, Any] = {
        "count": n,
        "mean": hist.get_mean_value() / 1000.0,
        "min": hist.get_min_value() / 1000.0,
        "max": hist.get_max_value() / 1000.0,
    }
    for p in PERCENTILES:
        out[_pkey(p)] = hist.get_value_at_percentile(p) / 1000.0
    return out


def _pkey(p: float) -> str:
    return "p" + (f"{p:g}".replace(".", "_") if p % 1 else str(int(p)))


def percentile_key(p: float) -> str:
    """50 -> 'p50', 99.9 -> 'p99_9' (the keys of summary_ms)."""
    return _pkey(p)


def spectrum_ms(hist: HdrHistogram, max_points: int = 200) -> list[tuple[float, float]]:
    """(percentile, latency ms) pairs along the HdrHistogram percentile spectrum (5 ticks per half)."""
    if hist.get_total_count() == 0:
        return []
    points: list[tuple[float, float]] = []
    for item in hist.get_percentile_iterator(5):
        pct = float(item.percentile_level_iterated_to)
        points.append((min(pct, 99.9999), item.value_iterated_to / 1000.0))
        if pct >= 100.0:
            break
    if len(points) > max_points:
        step = len(points) / max_points
        points = [points[int(i * step)] for i in range(max_points)] + [points[-1]]
    return points


class CountsMatrix:
    """Counts of many same-layout histograms as one matrix (only buckets that ever hold a value).

    Bootstrapping percentiles then costs a matrix product instead of thousands of histogram merges.
    """

    def __init__(self, hists: list[HdrHistogram]):
        if not hists:
            self.matrix = np.zeros((0, 0))
            self.values_ms = np.zeros(0)
            return
        full = np.stack([np.ctypeslib.as_array(h.counts)[: h.counts_len].astype(np.float64) for h in hists])
        used = np.flatnonzero(full.sum(axis=0))
        self.matrix = full[:, used]
        ref = hists[0]
        # Median of each bucket's range, which is how HdrHistogram reports a bucket's value for the mean.
        self.values_ms = (
            np.array([ref.get_highest_equivalent_value(ref.get_value_from_index(int(i))) for i in used]) / 1000.0
        )

    def percentile(self, weights: np.ndarray, p: float) -> np.ndarray:
        """Percentile p for each row of `weights` (resamples x blocks): weights @ counts, then the CDF."""
        counts = weights @ self.matrix
        cum = np.cumsum(counts, axis=1)
        total = cum[:, -1:]
        target = np.maximum(np.ceil(total * p / 100.0), 1)
        idx = (cum < target).sum(axis=1)
        idx = np.minimum(idx, len(self.values_ms) - 1)
        return self.values_ms[idx]

    def mean(self, weights: np.ndarray) -> np.ndarray:
        counts = weights @ self.matrix
        return (counts @ self.values_ms) / np.maximum(counts.sum(axis=1), 1)
