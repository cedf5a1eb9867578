"""The gateway served by uvicorn exactly as `python -m gateway` serves it (gateway.__main__.server_config),
in front of a raw loopback backend that answers the bytes a test chooses: what only shows once real
HTTP is written, such as a header value that would split the answer's head."""

from __future__ import annotations

import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np

from devstack.process import free_port
from gateway.__main__ import server_config
from gateway.app import create_app
from gateway.settings import Settings
from tests.gateway.conftest import QUIET, ROOT, unused_target
from tests.gateway.test_rest_binary import binary_answer


class RawBackend(socketserver.ThreadingTCPServer):
    """Answers every request on a connection with the same bytes, whatever it asked."""

    daemon_threads = True

    def __init__(self, reply: bytes, delay_s: float = 0.0) -> None:
        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = self.rfile.readline()
                        if not line:
                            return
                        head += line
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    self.rfile.read(length)
                    time.sleep(delay_s)  # a slow backend: every answer this late
                    self.wfile.write(reply)

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def served(settings: Settings) -> Iterator[str]:
    """uvicorn in a thread of this process (its own event loop); yields the gateway's URL."""
    server = uvicorn_server(settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(15)


@contextmanager
def gateway_before(reply: bytes, delay_s: float = 0.0) -> Iterator[str]:
    """A served gateway whose torch backend is a RawBackend answering `reply`; yields its URL."""
    with RawBackend(reply, delay_s) as raw:
        threading.Thread(target=raw.serve_forever, daemon=True).start()
        settings = Settings(
            port=free_port(),
            torch_urls=[raw.url],
            tf_grpc_targets=[unused_target()],
            access_log=False,
            log_level="warning",
        )
        try:
            with served(settings) as url:
                yield url
        finally:
            raw.shutdown()


def settings_without_backends(**overrides: object) -> Settings:
    """A gateway's settings whose backends listen nowhere: for what it answers before any upstream call."""
    base: dict[str, object] = {
        "port": free_port(),
        "torch_urls": [f"http://{unused_target()}"],
        "tf_grpc_targets": [unused_target()],
        "access_log": False,
        "log_level": "warning",
    }
    return Settings(**(base | overrides))  # type: ignore[arg-type]


def uvicorn_server(settings: Settings) -> object:
    import uvicorn

    return uvicorn.Server(server_config(create_app(settings), settings))


def test_a_backend_version_that_would_split_the_head_is_a_json_502() -> None:
    probs = np.full((1, 10), 0.1, dtype=np.float32)
    reply = binary_answer(probs, np.array([3]), version="1\r\nx-injected: yes")
    body = {"instances": np.zeros((1, 28, 28, 1)).tolist()}
    with gateway_before(reply) as url:
        r = httpx.post(f"{url}/v1/models/cnn:predict", json=body, timeout=10)
        ok = httpx.get(f"{url}/healthz", timeout=10)  # and it goes on serving
    assert r.status_code == 502 and r.headers["content-type"] == "application/json"
    assert "x-injected" not in r.headers
    assert "model version that is no header value" in r.json()["error"]
    assert ok.json() == {"status": "ok"}


def test_a_port_already_taken_exits_3() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, **QUIET, "GATEWAY_PORT": str(taken.getsockname()[1]), "GATEWAY_LOG_LEVEL": "warning"}
        proc = subprocess.run(
            [sys.executable, "-m", "gateway"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
    assert proc.returncode == 3
    assert "address already in use" in proc.stderr


def test_head_is_served_wherever_get_is_without_a_body() -> None:
    # HEAD through real HTTP (uvicorn drops the body itself): FastAPI's GET routes refused it with a 405
    # whose Allow header said GET.
    settings = Settings(
        port=free_port(),
        torch_urls=[f"http://{unused_target()}"],
        tf_protocol="rest",
        tf_rest_urls=[f"http://{unused_target()}"],
        access_log=False,
    )
    with served(settings) as url, httpx.Client(base_url=url, timeout=10) as client:
        for path in ("/healthz", "/metrics", "/v1/backends", "/openapi.json"):
            get, head = client.get(path), client.head(path)
            assert get.status_code == head.status_code == 200, (path, head.status_code)
            assert head.content == b"" and int(head.headers["content-length"]) > 0
            if path in ("/healthz", "/openapi.json"):  # the others change between the two calls
                assert head.headers["content-length"] == get.headers["content-length"]
            assert head.headers["content-type"] == get.headers["content-type"]
        r = client.head("/v1/models/cnn:predict")  # POST only
        assert r.status_code == 405 and r.headers["allow"] == "POST"


def _metric(text: str, endpoint: str, backend: str, status: int) -> float:
    """One gateway_requests_total sample from a /metrics page (0 when absent)."""
    prefix = f'gateway_requests_total{{backend="{backend}",endpoint="{endpoint}",status="{status}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def test_a_client_that_leaves_while_the_backend_works_is_a_499_not_a_200() -> None:
    # The backend answers after 1 s; the client gives up after 0.2 s. uvicorn drops the gateway's late
    # answer silently, so before the protocol marked the scope the access log and metrics said 200.
    probs = np.full((1, 10), 0.1, dtype=np.float32)
    reply = binary_answer(probs, np.array([3]), version="1")

    body = {"instances": np.zeros((1, 28, 28, 1)).tolist()}
    with gateway_before(reply, delay_s=1.0) as url:
        try:
            httpx.post(f"{url}/v1/models/cnn:predict", json=body, timeout=0.2)
            raise AssertionError("the backend answered within 0.2 s")
        except httpx.TimeoutException:
            pass
        time.sleep(1.5)  # the backend answers; the gateway finishes the request it can no longer answer
        text = httpx.get(f"{url}/metrics", timeout=10).text
    assert _metric(text, "predict", "torch", 499) == 1.0
    assert _metric(text, "predict", "torch", 200) == 0.0


def test_requests_refused_before_any_handler_are_counted() -> None:
    settings = settings_without_backends(max_body_bytes=4096, max_image_bytes=4096)
    with served(settings) as url:
        port = int(url.rsplit(":", 1)[1])
        # Over the body cap, by Content-Length: 413, and the connection is closed rather than drained.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/models/cnn:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):  # ends when the gateway closes
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer.lower()
        # A path no route has, and a method a route refuses.
        assert httpx.get(f"{url}/nope", timeout=10).status_code == 404
        assert httpx.get(f"{url}/v1/compare", timeout=10).status_code == 405
        # Not HTTP at all: refused by the protocol, before any app code.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"NOT HTTP\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 400")
        text = httpx.get(f"{url}/metrics", timeout=10).text
    assert _metric(text, "predict", "-", 413) == 1.0
    assert _metric(text, "other", "-", 404) == 1.0
    assert _metric(text, "compare", "-", 405) == 1.0
    assert _metric(text, "unparsed", "-", 400) == 1.0


def test_a_chunked_body_past_the_limit_gets_its_413_and_the_connection_closes() -> None:
    # Kept alive, uvicorn read and dropped whatever followed (a review streamed 11 GiB in 5 s); closed at
    # once, the reset could destroy the 413 before the client read it. The close lingers instead.
    settings = settings_without_backends(max_body_bytes=1 << 20, max_image_bytes=1 << 20)
    chunk = b"%x\r\n" % 65536 + b"7" * 65536 + b"\r\n"
    with served(settings) as url, socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"POST /v1/models/cnn:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        answer, sent, closed = b"", 0, False
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(chunk)
                sent += len(chunk)
            except OSError:  # the server has closed: what it sent is still to be read
                break
            sock.setblocking(False)
            try:
                data = sock.recv(65536)
                closed = data == b""
                answer += data
            except BlockingIOError:
                pass
            sock.setblocking(True)
        sock.settimeout(5)
        try:
            while data := sock.recv(65536):
                answer += data
        except OSError:
            pass
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer.lower(), answer[:200]
    assert sent < 256 << 20, f"the server read {sent >> 20} MiB past a 1 MiB limit"
    assert _metric(metrics, "predict", "-", 413) == 1.0


def test_a_malformed_body_is_counted_once_as_the_400_its_client_got() -> None:
    settings = settings_without_backends()
    with served(settings) as url, socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
        sock.settimeout(10)
        sock.sendall(
            b"POST /v1/models/cnn:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\nzz\r\n"  # a bad chunk size, after the app began reading the body
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")
        time.sleep(0.3)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert _metric(metrics, "predict", "-", 400) == 1.0
    assert _metric(metrics, "predict", "-", 499) == 0.0  # was: the app saw a disconnect and logged a 499
    assert _metric(metrics, "unparsed", "-", 400) == 0.0  # and the protocol counted it a second time
