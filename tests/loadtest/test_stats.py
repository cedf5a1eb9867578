"""Bootstrap confidence intervals cover a known difference and do not invent one."""

import numpy as np

from gateway.loadtest import histograms as H
from gateway.loadtest import stats


def _blocks(rng, scale_s: float, n_blocks: int = 30, per_block: int = 300) -> stats.Blocks:
    hists = []
    for _ in range(n_blocks):
        h = H.new_histogram()
        for v in 0.002 + rng.exponential(scale_s, size=per_block):
            H.record_s(h, float(v))
        hists.append(h)
    return stats.Blocks(hists, np.ones(n_blocks), np.array([per_block] * n_blocks, float))


def _point(blocks: stats.Blocks) -> dict[str, float]:
    m = H.merge(blocks.hists)
    s = H.summary_ms(m)
    return {"mean": s["mean"], "p50": s["p50"], "p99": s["p99"], "throughput": float(blocks.counts.mean())}


def test_ci_covers_a_known_difference():
    rng = np.random.default_rng(3)
    base = _blocks(rng, 0.010)
    slower = _blocks(rng, 0.013)  # latency beyond the 2 ms floor is 30% longer
    bb, bo = stats.bootstrap(base, 1000, 1), stats.bootstrap(slower, 1000, 2)
    cmp = stats.compare(bb, bo, "a", "b", _point(base), _point(slower))
    # true ratios: mean (2+13)/(2+10)-1 = 25%; p50 (2+13 ln2)/(2+10 ln2)-1 ~ 23%; p99 ~ 28%
    for metric, truth in (("mean", 0.25), ("p50", 0.227), ("p99", 0.28)):
        lo, hi = cmp[metric]["ci"]
        assert lo <= truth <= hi, (metric, lo, hi)
        assert cmp[metric]["significant"]
    assert "higher" in cmp["p99"]["text"] and "a is better" in cmp["p99"]["text"]
    ci = stats.confidence_intervals(bb)
    p99 = H.merge(base.hists).get_value_at_percentile(99) / 1000
    assert ci["p99"][0] <= p99 <= ci["p99"][1]


def test_no_difference_is_reported_as_such():
    rng = np.random.default_rng(4)
    a, b = _blocks(rng, 0.010), _blocks(rng, 0.010)
    cmp = stats.compare(stats.bootstrap(a, 1000, 1), stats.bootstrap(b, 1000, 2), "a", "b", _point(a), _point(b))
    assert not cmp["p50"]["significant"]
    assert "no significant difference" in cmp["p50"]["text"]


def test_agreement_counts_same_images():
    assert stats.agreement({"1": [3], "2": [4, 5]}, {"1": [3], "2": [4, 6], "9": [0]}) == {
        "images": 3,
        "agree": 2,
        "rate": 2 / 3,
    }
