"""HdrHistogram merging is exact: encode/decode + add equals recording everything in one histogram."""

import numpy as np

from gateway.loadtest import histograms as H


def test_merge_of_encoded_parts_equals_one_histogram():
    rng = np.random.default_rng(1)
    values = rng.lognormal(mean=-5, sigma=1.2, size=20_000)  # seconds, ~7 ms median, long tail
    whole = H.new_histogram()
    parts = [H.new_histogram() for _ in range(4)]
    for i, v in enumerate(values):
        H.record_s(whole, float(v))
        H.record_s(parts[i % 4], float(v))
    merged = H.merge(H.encode(p) for p in parts)
    assert merged.get_total_count() == whole.get_total_count() == len(values)
    for p in (50, 90, 99, 99.9, 99.99, 100):
        assert merged.get_value_at_percentile(p) == whole.get_value_at_percentile(p)
    assert merged.get_max_value() == whole.get_max_value()
    assert merged.get_min_value() == whole.get_min_value()
    # The decoded+merged histogram re-encodes to the same counts (lossless round trip).
    again = H.decode(H.encode(merged))
    assert again.get_value_at_percentile(99.9) == whole.get_value_at_percentile(99.9)


def test_summary_and_spectrum_are_in_milliseconds():
    h = H.new_histogram()
    for ms in range(1, 101):
        H.record_s(h, ms / 1000.0)
    s = H.summary_ms(h)
    assert s["count"] == 100
    assert abs(s["p50"] - 50) < 0.1 and abs(s["p99"] - 99) < 0.1 and abs(s["max"] - 100) < 0.1
    spectrum = H.spectrum_ms(h)
    assert spectrum[0][0] <= 1.0 and spectrum[-1][1] >= 99.9
    assert H.summary_ms(H.new_histogram())["p99"] is None


def test_counts_matrix_percentile_matches_histogram():
    rng = np.random.default_rng(2)
    hists = []
    for _ in range(5):
        h = H.new_histogram()
        for v in rng.exponential(0.01, size=2000):
            H.record_s(h, float(v))
        hists.append(h)
    cm = H.CountsMatrix(hists)
    merged = H.merge(hists)
    got = cm.percentile(np.ones((1, 5)), 99.0)[0]
    want = merged.get_value_at_percentile(99.0) / 1000.0
    assert abs(got - want) <= want * 0.002
