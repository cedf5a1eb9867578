"""The raw-socket REST closed loop (gateway/loadtest/rawhttp.py) against real servers on loopback.

Each behaviour is checked on both of its paths: one connection (blocking socket) and several
(non-blocking sockets on epoll).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from devstack.process import free_port
from gateway.loadtest import histograms as H
from gateway.loadtest.engine import StepSpec, WorkerPool, run_step_inline
from gateway.loadtest.rawhttp import frame_response
from gateway.loadtest.targets import Target

pytestmark = pytest.mark.integration

BOTH_PATHS = pytest.mark.parametrize("concurrency", [1, 3], ids=["blocking", "epoll"])


def _target(url: str) -> Target:
    return Target("torch", "rest", (url,))


def _closed(url: str, concurrency: int, **kw: object) -> StepSpec:
    kw.setdefault("duration_s", 20.0)
    return StepSpec(_target(url), "closed", concurrency=concurrency, **kw)  # type: ignore[arg-type]


# -- framing (pure) ---------------------------------------------------------------------------------


def test_frame_response_waits_for_the_whole_answer_and_reads_each_framing():
    full = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    for cut in range(len(full)):
        assert frame_response(full[:cut], False) is None
    assert frame_response(full, False) == (200, b"hello", False, len(full))
    # Header names in any case (uvicorn sends them lower-case), Connection: close, HTTP/1.0.
    closing = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\nConnection: close\r\n\r\nno"
    assert frame_response(closing, False) == (404, b"no", True, len(closing))
    assert frame_response(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", False)[2] is True  # type: ignore[index]
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\nT: v\r\n\r\n"
    for cut in range(len(chunked)):
        assert frame_response(chunked[:cut], False) is None
    assert frame_response(chunked, False) == (200, b"abcde", False, len(chunked))
    # No length, not chunked: the body ends with the connection.
    until_close = b"HTTP/1.1 200 OK\r\n\r\nabc"
    assert frame_response(until_close, False) is None
    assert frame_response(until_close, True) == (200, b"abc", True, len(until_close))
    # An interim 100 Continue is skipped.
    assert frame_response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", False)[:2] == (204, b"")  # type: ignore[index]


# -- against servers --------------------------------------------------------------------------------


@BOTH_PATHS
def test_closed_loop_throughput_is_concurrency_over_latency(fake_server, bodies, concurrency):
    url = fake_server("--delay-ms", "20")
    res = run_step_inline(_closed(url, concurrency, duration_s=2.0), bodies)
    assert res["failed"] == 0 and res["valid"]
    expected = concurrency / 0.020  # Little's law
    assert 0.6 * expected <= res["throughput_rps"] <= 1.05 * expected, res["throughput_rps"]
    assert res["latency_ms"]["p50"] >= 20.0
    assert res["images"] == res["ok"] == res["correct"]


@BOTH_PATHS
def test_chunked_answers_are_read_and_checked(fake_server, bodies, concurrency):
    url = fake_server("--chunked")
    res = run_step_inline(_closed(url, concurrency, requests=30), bodies)
    assert res["errors"] == {} and res["ok"] == 30 and res["correct"] == 30


@BOTH_PATHS
@pytest.mark.parametrize("announced", [False, True], ids=["silent", "connection-close"])
def test_server_closing_keep_alive_connections_costs_no_errors(fake_server, bodies, concurrency, announced):
    # Every connection is closed by the server after 3 answers: silently (the client finds out when
    # its next request fails, and retries once on a fresh connection) or with Connection: close.
    url = fake_server("--close-after", "3", *(["--close-header"] if announced else []))
    res = run_step_inline(_closed(url, concurrency, requests=40), bodies)
    assert res["errors"] == {}, res["error_samples"]
    assert res["ok"] == 40 and res["correct"] == 40


@BOTH_PATHS
def test_refused_connections_are_connect_errors_without_a_busy_loop(bodies, concurrency):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    res = run_step_inline(_closed(url, concurrency, duration_s=1.0), bodies)
    assert res["ok"] == 0 and set(res["errors"]) == {"connect"}
    # Each connection waits 50 ms after a refusal: ~20 attempts per second each, not thousands.
    assert concurrency <= res["errors"]["connect"] <= 30 * concurrency, res["errors"]


@BOTH_PATHS
def test_requests_over_the_timeout_are_timeouts(fake_server, bodies, concurrency):
    url = fake_server("--delay-ms", "3000")
    res = run_step_inline(_closed(url, concurrency, requests=concurrency, timeout_s=0.3), bodies)
    assert res["ok"] == 0 and res["errors"] == {"timeout": concurrency}
    assert res["elapsed_s"] < 2.5  # gave up at the timeout, did not wait for the 3 s answers


@BOTH_PATHS
@pytest.mark.parametrize("status", [404, 503])
def test_error_statuses_are_classified(fake_server, bodies, concurrency, status):
    url = fake_server("--status", str(status))
    res = run_step_inline(_closed(url, concurrency, requests=12), bodies)
    assert res["ok"] == 0 and res["errors"] == {f"http_{status}": 12}
    assert "injected" in res["error_samples"][0]


def test_garbage_answers_are_protocol_errors(bodies):
    # A server that answers every request with something that is not HTTP.
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        res = run_step_inline(_closed(f"http://127.0.0.1:{port}", 1, requests=3), bodies)
    finally:
        srv.close()
    assert res["ok"] == 0 and res["errors"] == {"protocol": 3}


@pytest.mark.parametrize("concurrency", [1, 5])
def test_request_limit_is_exact_and_follows_the_sequence(fake_server, bodies, concurrency):
    url = fake_server("--delay-ms", "1")
    spec = _closed(url, concurrency, requests=37, seed=3)
    res = run_step_inline(spec, bodies)
    assert res["sent"] == res["ok"] == 37 and res["failed"] == 0
    assert H.decode(res["latency"]).get_total_count() == 37
    assert set(res["predictions"]) == {str(i) for i in bodies.sequence(3, 37)}


def test_request_limit_is_exact_over_worker_processes(fake_server, bodies):
    url = fake_server("--delay-ms", "1")
    spec = _closed(url, 4, requests=37, seed=3)
    with WorkerPool(2, bodies) as pool:
        res = pool.run(spec)
    assert res["workers"] == 2 and res["sent"] == res["ok"] == 37 and res["failed"] == 0
    # Worker k took request numbers k, k+2, ...: together, exactly the first 37 of the sequence.
    assert set(res["predictions"]) == {str(i) for i in bodies.sequence(3, 37)}


@BOTH_PATHS
def test_cancel_stops_a_long_step(fake_server, bodies, concurrency):
    url = fake_server("--delay-ms", "5")
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.perf_counter()
    res = run_step_inline(_closed(url, concurrency, duration_s=60.0), bodies, cancel)
    assert time.perf_counter() - t0 < 10.0
    assert res["ok"] > 0 and res["failed"] == 0
