"""Prometheus metrics in a registry of the app's own (so tests can build many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serving_core.batching import BatchStats

# Sub-millisecond resolution at the low end: the overhead budget of this service is ~1 ms.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Every series the service exports; the batcher feeds `observe_batch` from its worker threads."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "torch_service_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r
        )
        # No labels on purpose: scrapers (the load test) read one _sum/_count pair for predict + infer.
        self.latency = Histogram(
            "torch_service_request_latency_seconds",
            "Server-side latency of predict/infer requests, first byte in to response out",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "torch_service_queue_seconds",
            "Time a request waited in the batch queue",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_time = Histogram(
            "torch_service_inference_seconds",
            "Time to run one batch through the model",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "torch_service_batch_size",
            "Instances per executed batch (before padding)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.padded_batch_size = Histogram(
            "torch_service_padded_batch_size",
            "Batch size the model actually ran (after padding to allowed_batch_sizes)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("torch_service_in_flight_requests", "HTTP requests being handled now", registry=r)
        self.queued = Gauge(
            "torch_service_queued_instances",
            "Images waiting in the batch queues (batching off: requests waiting or running)",
            registry=r,
        )
        self.version_available = Gauge(
            "torch_service_model_version_available",
            "1 for each model version that is loaded and serving",
            ["model", "version"],
            registry=r,
        )
        self.latest_version = Gauge(
            "torch_service_model_latest_version", "Highest model version serving (0 = none)", ["model"], registry=r
        )

    def observe_batch(self, stats: BatchStats) -> None:
        for q in stats.queue_seconds:
            self.queue_time.observe(q)
        self.inference_time.observe(stats.run_seconds)
        self.batch_size.observe(stats.size)
        self.padded_batch_size.observe(stats.padded_size)

    def set_versions(self, model: str, known: list[int], available: list[int]) -> None:
        for v in known:
            self.version_available.labels(model, str(v)).set(1 if v in available else 0)
        self.latest_version.labels(model).set(max(available, default=0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
