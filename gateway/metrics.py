"""Prometheus metrics of the gateway, in a registry per app (so test apps never share counters)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Sub-millisecond to seconds: the gateway's own overhead is ~0.1-1 ms, a stuck backend takes seconds.
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_requests_total",
            "Requests answered, by endpoint, backend and HTTP status.",
            ["endpoint", "backend", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_request_latency_seconds",
            "Time from request received to response sent, by endpoint and backend.",
            ["endpoint", "backend"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "gateway_upstream_latency_seconds",
            "Time of the upstream call alone (what the backend plus the network took), by backend.",
            ["backend"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total",
            "Failed upstream calls, by backend, replica and kind (unavailable, timeout, error).",
            ["backend", "replica", "kind"],
            registry=self.registry,
        )
        self.replica_up = Gauge(
            "gateway_replica_in_rotation",
            "1 when the replica takes traffic (healthy and not ejected), else 0.",
            ["backend", "replica"],
            registry=self.registry,
        )

        self._upstream_series: dict[str, Any] = {}

    def observe_upstream(self, backend: str, seconds: float) -> None:
        # The labelled child is cached: prometheus_client's labels() lookup costs microseconds per call.
        series = self._upstream_series.get(backend)
        if series is None:
            series = self._upstream_series[backend] = self.upstream_latency.labels(backend)
        series.observe(seconds)

    def upstream_error(self, backend: str, replica: str, kind: str) -> None:
        self.upstream_errors.labels(backend, replica, kind).inc()
