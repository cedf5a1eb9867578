"""The metrics page is valid Prometheus text with TF Serving's names and microsecond buckets."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tf_serving.compat.metrics import LATENCY_BUCKETS_US, ServingMetrics


def test_exposition_parses_and_accumulates() -> None:
    m = ServingMetrics()
    m.request_count.inc("cnn", "OK")
    m.request_count.inc("cnn", "OK")
    m.request_count.inc("cnn", "INVALID_ARGUMENT")
    for us in (5, 900, 900, 5e9):
        m.request_latency.observe(us, "cnn", "predict", "REST")
    m.queuing_latency.observe(150, "batch_threads")
    families = {f.name: f for f in text_string_to_metric_families(m.render())}

    counts = {s.labels["status"]: s.value for s in families[":tensorflow:serving:request_count"].samples}
    assert counts == {"OK": 2, "INVALID_ARGUMENT": 1}

    hist = families[":tensorflow:serving:request_latency"]
    assert hist.type == "histogram"
    buckets = [s for s in hist.samples if s.name.endswith("_bucket")]
    assert all(s.labels["API"] == "predict" and s.labels["entrypoint"] == "REST" for s in buckets)
    assert len(buckets) == len(LATENCY_BUCKETS_US) + 1
    by_le = {s.labels["le"]: s.value for s in buckets}
    assert by_le["10"] == 1  # 5 us
    assert by_le["+Inf"] == 4  # 5e9 us is beyond the last bound
    values = [s.value for s in buckets]
    assert values == sorted(values)  # cumulative
    total = next(s.value for s in hist.samples if s.name.endswith("_sum"))
    assert total == 5 + 900 + 900 + 5e9
    assert ":tensorflow:serving:batching_session:queuing_latency" in families


def test_empty_registry_renders_headers_only() -> None:
    text = ServingMetrics().render()
    assert "# TYPE :tensorflow:serving:request_latency histogram" in text
    list(text_string_to_metric_families(text))
