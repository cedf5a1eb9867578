"""benchmarks/h2loadrun.py: h2load as the direct-gRPC client of the overhead benchmark.

Real h2load against a real grpcio server on loopback; skipped (with the reason) where h2load is not
installed, since it comes from the OS, not from the project's environment.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import h2loadrun

from devstack.process import free_port

needs_h2load = pytest.mark.skipif(
    not h2loadrun.available(), reason="h2load is not installed (apt-get install -y nghttp2-client)"
)

METHOD = "/tensorflow.serving.PredictionService/Predict"
MESSAGE = b"\x0a\x05\x0a\x03cnn"  # PredictRequest{model_spec{name: "cnn"}}; the server below only echoes bytes


class Server:
    """A unary method answering each call after `delay_s`, OK (the request echoed) or with `fail`;
    it counts the calls it answered OK, as TF Serving's request_count{status="OK"} does."""

    def __init__(self, delay_s: float, fail: grpc.StatusCode | None) -> None:
        self.delay_s, self.fail = delay_s, fail
        self.ok = 0
        self.received: list[bytes] = []
        self._lock = threading.Lock()

    def handle(self, request: bytes, context: Any) -> bytes:
        time.sleep(self.delay_s)
        self.received.append(request)
        if self.fail is not None:
            context.abort(self.fail, "refused by the test server")
        with self._lock:
            self.ok += 1
        return request


@pytest.fixture
def grpc_server() -> Iterator[Any]:
    started: list[grpc.Server] = []

    def start(
        delay_s: float = 0.005, fail: grpc.StatusCode | None = None, max_message: int = 4 * 1024 * 1024
    ) -> tuple[str, Server]:
        impl = Server(delay_s, fail)
        service, method = METHOD.strip("/").split("/")
        handler = grpc.method_handlers_generic_handler(
            service, {method: grpc.unary_unary_rpc_method_handler(impl.handle)}
        )
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            handlers=[handler],
            options=[("grpc.max_receive_message_length", max_message)],
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        started.append(server)
        return f"http://127.0.0.1:{port}{METHOD}", impl

    yield start
    for server in started:
        server.stop(grace=None)


@pytest.mark.integration
@needs_h2load
def test_latency_and_counts_follow_the_server(grpc_server: Any) -> None:
    url, server = grpc_server(delay_s=0.005)
    r = h2loadrun.run(url, MESSAGE, concurrency=2, duration_s=1, succeeded=lambda: server.ok)
    assert r.failed == 0, r.errors
    # Two connections against a 5 ms server: ~400 answers a second, each a little over 5 ms.
    assert 5.0 <= r.p50_ms < 15.0
    assert r.p50_ms <= r.p99_ms
    assert 100 < r.throughput_rps <= 2 / 0.005
    assert 0.8 < r.duration_s < 2.0
    # What reached the server is the message itself, in gRPC's framing (which the server strips).
    assert server.received and set(server.received) == {MESSAGE}


@pytest.mark.integration
@needs_h2load
def test_calls_the_server_failed_are_counted_though_http_says_200(grpc_server: Any) -> None:
    """gRPC errors travel in trailers of an HTTP 200, which h2load counts as a success: only the
    server's own count of successful calls shows them."""
    url, server = grpc_server(delay_s=0.002, fail=grpc.StatusCode.INVALID_ARGUMENT)
    r = h2loadrun.run(url, MESSAGE, concurrency=1, duration_s=1, succeeded=lambda: server.ok)
    assert r.requests > 0
    assert r.errors["status"] == r.requests  # every answer was a failure
    assert r.failed == r.requests
    # Without that count the failures go unseen: the reason the benchmark passes one.
    unchecked = h2loadrun.run(url, MESSAGE, concurrency=1, duration_s=1)
    assert unchecked.requests > 0 and unchecked.failed == 0


@pytest.mark.integration
@needs_h2load
@pytest.mark.integration
@needs_h2load
def test_calls_refused_before_the_handler_are_counted(grpc_server: Any) -> None:
    """A message over the server's size limit is refused by gRPC itself (RESOURCE_EXHAUSTED): the handler
    never runs, so no failure counter would see it; the success count does."""
    url, server = grpc_server(delay_s=0.0, max_message=len(MESSAGE) - 1)
    r = h2loadrun.run(url, MESSAGE, concurrency=1, duration_s=1, succeeded=lambda: server.ok)
    assert r.requests > 0 and server.ok == 0 and not server.received
    assert r.failed == r.requests


def test_nothing_listening_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="h2load failed"):
        h2loadrun.run(f"http://127.0.0.1:{free_port()}{METHOD}", MESSAGE, concurrency=1, duration_s=1)


def test_grpc_frame_is_the_length_prefixed_message() -> None:
    framed = h2loadrun.grpc_frame(MESSAGE)
    assert framed[0] == 0  # not compressed
    assert int.from_bytes(framed[1:5], "big") == len(MESSAGE)
    assert framed[5:] == MESSAGE
