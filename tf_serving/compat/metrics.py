"""TF Serving's Prometheus metrics, under TF Serving's own names, rendered in the text exposition format.

prometheus_client refuses metric names that start with ':' (TF Serving turns `/tensorflow/serving/x`
into `:tensorflow:serving:x`), so this module keeps the few counters and histograms itself. Bucket
limits are TF's (`monitoring::Buckets::Exponential` in util.cc and batching_session.cc), so a
dashboard built on real TF Serving reads the same `le` values here.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Sequence


def exponential_buckets(scale: float, growth: float, count: int) -> tuple[float, ...]:
    return tuple(scale * growth**i for i in range(count))


# util.cc: request_latency and runtime_latency, in microseconds (~20 minutes at the top).
LATENCY_BUCKETS_US = exponential_buckets(10, 1.8, 33)
# batching_session.cc: queuing_latency, microseconds (~1 second at the top).
QUEUING_BUCKETS_US = exponential_buckets(100, 1.2, 52)
BATCH_SIZE_BUCKETS = exponential_buckets(1, 2, 15)


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def _fmt_bound(value: float) -> str:
    # absl::StrCat(double) prints 6 significant digits; TF Serving's `le` labels read like that.
    return "+Inf" if math.isinf(value) else f"{value:.6g}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Counter:
    def __init__(self, name: str, help_text: str, labels: Sequence[str]) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            for key, v in sorted(self._values.items()):
                lines.append(f"{self.name}{_labels(self.label_names, key)} {_fmt(v)}")
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, labels: Sequence[str], buckets: Sequence[float]) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self.bounds = tuple(buckets)
        # per label set: [bucket counts..., +Inf count], sum
        self._cells: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        # TF buckets are upper-inclusive like Prometheus' `le`.
        idx = bisect_left(self.bounds, value)
        with self._lock:
            cell = self._cells.get(labels)
            if cell is None:
                cell = ([0] * (len(self.bounds) + 1), [0.0])
                self._cells[labels] = cell
            cell[0][idx] += 1
            cell[1][0] += value

    def count(self, *labels: str) -> int:
        with self._lock:
            cell = self._cells.get(labels)
            return sum(cell[0]) if cell else 0

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            for key, (counts, total) in sorted(self._cells.items()):
                running = 0
                for bound, c in zip((*self.bounds, math.inf), counts, strict=True):
                    running += c
                    le = f'le="{_fmt_bound(bound)}"'
                    lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
                lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_fmt(total[0])}")
                lines.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return lines


class ServingMetrics:
    """The metrics TF Serving exports that the load test's server-side breakdown reads."""

    def __init__(self) -> None:
        self.request_count = Counter(
            ":tensorflow:serving:request_count", "The total number of requests.", ("model_name", "status")
        )
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ("model_name", "API", "entrypoint"),
            LATENCY_BUCKETS_US,
        )
        self.runtime_latency = Histogram(
            ":tensorflow:serving:runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            ("model_name", "API", "runtime"),
            LATENCY_BUCKETS_US,
        )
        self.queuing_latency = Histogram(
            ":tensorflow:serving:batching_session:queuing_latency",
            "Distribution of wall time spent (in microseconds) in queuing",
            ("thread_pool_name",),
            QUEUING_BUCKETS_US,
        )
        self.input_batch_size = Histogram(
            ":tensorflow:serving:batching:input_batch_size",
            "Tracks the batch size distribution on the inputs by model_name (if available).",
            ("model_name", "op_name"),
            BATCH_SIZE_BUCKETS,
        )
        self.wrapped_run_count = Counter(
            ":tensorflow:serving:batching_session:wrapped_run_count",
            "Total count of run calls on the wrapped session",
            (),
        )
        self.load_latency = Histogram(
            ":tensorflow:serving:model_load_latency",
            "Distribution of wall time (in microseconds) to load and warm up one model version (compat server).",
            ("model_name",),
            LATENCY_BUCKETS_US,
        )

    def render(self) -> str:
        lines: list[str] = []
        for m in (
            self.request_count,
            self.request_latency,
            self.runtime_latency,
            self.queuing_latency,
            self.input_batch_size,
            self.wrapped_run_count,
            self.load_latency,
        ):
            lines.extend(m.render())
        return "\n".join(lines) + "\n"
