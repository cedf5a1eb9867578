"""Statistics over measured blocks: bootstrap confidence intervals and a verdict on differences.

Each round is cut into time blocks (1 s by default), each with its own histogram. Resampling blocks
with replacement keeps the within-block dependence of latencies intact (a block bootstrap), and the
percentile of the merged resample is computed from bucket counts, so nothing is ever averaged
that should not be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.loadtest import histograms as H

METRICS = ("mean", "p50", "p90", "p95", "p99", "p99_9", "throughput")
_PCT = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99_9": 99.9}


@dataclass
class Blocks:
    """All measured blocks of one target: histograms, and each block's duration for throughput."""

    hists: list
    durations: np.ndarray
    counts: np.ndarray

    @classmethod
    def from_steps(cls, steps: list[dict[str, Any]], block_s: float) -> Blocks:
        hists, durs, counts = [], [], []
        for step in steps:
            n = len(step["blocks"])
            for b in step["blocks"]:
                hist = H.decode(b["hist"]) if b["hist"] else H.new_histogram()
                last = b["index"] == n - 1
                # The last block of a step is partial: its share of the step's elapsed time.
                dur = max(step["elapsed_s"] - b["index"] * block_s, 1e-3) if last else block_s
                hists.append(hist)
                durs.append(min(dur, block_s))
                counts.append(hist.get_total_count())
        return cls(hists, np.array(durs, dtype=float), np.array(counts, dtype=float))


def bootstrap(blocks: Blocks, n_boot: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """n_boot resampled values of every metric (resampling blocks with replacement)."""
    k = len(blocks.hists)
    if k == 0 or blocks.counts.sum() == 0:
        return {}
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, k, size=(n_boot, k))
    weights = np.zeros((n_boot, k))
    np.add.at(weights, (np.arange(n_boot)[:, None], picks), 1.0)
    cm = H.CountsMatrix(blocks.hists)
    out = {name: cm.percentile(weights, p) for name, p in _PCT.items()}
    out["mean"] = cm.mean(weights)
    out["throughput"] = (weights @ blocks.counts) / np.maximum(weights @ blocks.durations, 1e-9)
    return out


def confidence_intervals(samples: dict[str, np.ndarray], level: float = 0.95) -> dict[str, list[float]]:
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {m: [float(np.percentile(v, lo)), float(np.percentile(v, hi))] for m, v in samples.items()}


def compare(
    base: dict[str, np.ndarray],
    other: dict[str, np.ndarray],
    base_name: str,
    other_name: str,
    point_base: dict[str, float],
    point_other: dict[str, float],
) -> dict[str, Any]:
    """Relative difference other/base - 1 per metric with a 95% CI and a sentence saying what it means.

    The two sides were resampled independently (their rounds are different time blocks), so the ratio
    of resamples estimates the sampling distribution of the ratio.
    """
    out: dict[str, Any] = {}
    for m in METRICS:
        if m not in base or m not in other:
            continue
        ratio = other[m] / np.maximum(base[m], 1e-12) - 1.0
        lo, hi = (float(x) for x in np.percentile(ratio, [2.5, 97.5]))
        pb, po = point_base.get(m), point_other.get(m)
        est = (po / pb - 1.0) if pb and po is not None else float(np.median(ratio))
        significant = lo > 0 or hi < 0
        out[m] = {
            "relative": est,
            "ci": [lo, hi],
            "significant": significant,
            "text": _sentence(m, est, lo, hi, significant, base_name, other_name),
        }
    return out


def _sentence(metric: str, est: float, lo: float, hi: float, significant: bool, base: str, other: str) -> str:
    label = "throughput" if metric == "throughput" else metric.replace("_", ".")
    if not significant:
        return (
            f"{label}: no significant difference between {other} and {base} ({est:+.0%}, 95% CI {lo:+.0%} to {hi:+.0%})"
        )
    higher = est > 0
    word = "higher" if higher else "lower"
    a, b = (lo, hi) if higher else (-hi, -lo)
    better = (not higher) if metric != "throughput" else higher
    return (
        f"{other} {label} is {abs(est):.0%} {word} than {base} (95% CI {a:.0%} to {b:.0%})"
        f" — {other if better else base} is better"
    )


def agreement(preds_a: dict[str, list[int]], preds_b: dict[str, list[int]]) -> dict[str, Any]:
    """Share of images (same request bodies) on which two targets predicted the same class."""
    common = preds_a.keys() & preds_b.keys()
    total = same = 0
    for k in common:
        a, b = preds_a[k], preds_b[k]
        total += len(a)
        same += sum(1 for x, y in zip(a, b, strict=False) if x == y)
    return {"images": total, "agree": same, "rate": (same / total) if total else None}
