"""Predict served below ASGI (gateway/predict_front.py) against the same gateway on its ASGI path.

Two gateways run in this process on loopback, configured exactly as `python -m gateway` configures
uvicorn (gateway.__main__.server_config): one with the protocol front, wrapped only to count what it
claims, and one with GATEWAY_PREDICT_PATH=asgi. Both call one stand-in backend (tests/gateway/standin.py)
in its own process. Every request goes to both and the answers must be the same; the count shows
which requests the front served itself and which it left to ASGI. Answers are read with the standard
library's http.client, also when several are pipelined on one connection.
"""

from __future__ import annotations

import http.client
import io
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pytest
import uvicorn

from devstack.process import free_port
from gateway.__main__ import server_config
from gateway.app import create_app
from gateway.settings import Settings
from serving_core.http_protocol import TimedHttpToolsProtocol
from tests.gateway.conftest import Procs, standin, unused_target

# Headers whose values differ from call to call by nature.
VOLATILE = {"date", "x-request-id", "x-upstream-latency-ms"}


class CountingFront:
    """The gateway's own front, counting the requests it claims."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.claimed = 0

    def claim(self, proto: TimedHttpToolsProtocol) -> Any:
        cycle = self.inner.claim(proto)
        self.claimed += cycle is not None
        return cycle


@dataclass
class Served:
    port: int
    app: Any
    front: CountingFront | None
    server: uvicorn.Server


class ThreadServer:
    """uvicorn in a thread of this process (its own event loop), stopped like Ctrl-C would."""

    def __init__(self, settings: Settings, count: bool) -> None:
        self.app = create_app(settings)
        self.front = CountingFront(self.app.state.predict_front) if count else None
        self.server = uvicorn.Server(server_config(self.app, settings, front=self.front))
        self.port = settings.port
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.02)
        return Served(self.port, self.app, self.front, self.server)

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def settings(torch_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "port": free_port(),
        "torch_urls": [torch_url],
        "tf_grpc_targets": [unused_target()],
        "timeout_s": 0.5,
        "health_timeout_s": 0.5,
        "max_batch_size": 2,
        "max_body_bytes": 100_000,
        "access_log": False,
        "log_level": "warning",
    }
    return Settings(**(base | overrides))


@pytest.fixture(scope="module")
def backend(module_procs: Procs) -> str:
    return standin(module_procs, "torch-standin")[1]


@pytest.fixture(scope="module")
def pair(backend: str) -> Iterator[tuple[Served, Served]]:
    tf = [unused_target()]  # the same unreachable TF Serving for both
    with (
        ThreadServer(settings(backend, tf_grpc_targets=tf), count=True) as front,
        ThreadServer(settings(backend, tf_grpc_targets=tf, predict_path="asgi"), count=False) as asgi,
    ):
        yield front, asgi


def image(label: int, control: float = 0.0) -> list[Any]:
    img = np.zeros((28, 28, 1), dtype=np.float32)
    img[0, 0, 0] = label / 10
    img[0, 1, 0] = control
    return img.tolist()  # type: ignore[no-any-return]


def rows(*images: list[Any]) -> bytes:
    return orjson.dumps({"instances": list(images)})


class _KeepOpen(io.BufferedReader):
    def close(self) -> None:  # http.client closes its file after each answer; the next one is read from it too
        pass


class _Sock:
    def __init__(self, fp: io.BufferedReader) -> None:
        self.fp = fp

    def makefile(self, *args: object, **kwargs: object) -> io.BufferedReader:
        return self.fp


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    headers = {"Host": "gw", "Content-Type": "application/json", **(headers or {})}
    if "Transfer-Encoding" not in headers and (body or method == "POST"):
        headers.setdefault("Content-Length", str(len(body)))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + body


def exchange(port: int, raw: bytes, answers: int = 1, methods: list[str] | None = None) -> list[Answer]:
    """Send `raw` (one or several requests) on one connection; read `answers` answers in order."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        fp = _KeepOpen(socket.SocketIO(sock, "rb"))  # type: ignore[arg-type]
        out = []
        for i in range(answers):
            resp = http.client.HTTPResponse(_Sock(fp), method=(methods or [])[i] if methods else "POST")  # type: ignore[arg-type]
            resp.begin()
            out.append(Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()))
        return out


def call(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
    return exchange(port, request_bytes(method, path, body, headers), methods=[method])[0]


# (name, path, extra headers, body, served by the front itself)
CASES: list[tuple[str, str, dict[str, str], bytes, bool]] = [
    ("one image", "/v1/models/cnn:predict", {}, rows(image(3)), True),
    ("two, columnar", "/v1/models/cnn:predict", {}, orjson.dumps({"inputs": [image(1), image(2)]}), True),
    ("backend by query", "/v1/models/cnn:predict?backend=torch", {}, rows(image(4)), True),
    ("backend by header", "/v1/models/cnn:predict", {"X-Backend": "torch"}, rows(image(5)), True),
    ("request id echoed", "/v1/models/cnn:predict", {"X-Request-ID": "abc-123"}, rows(image(6)), True),
    ("a version the backend lacks", "/v1/models/cnn/versions/9:predict", {}, rows(image(7)), True),
    ("tf unreachable: 503", "/v1/models/cnn:predict?backend=tf", {}, rows(image(1)), True),
    ("unknown backend: 400", "/v1/models/cnn:predict", {"X-Backend": "mxnet"}, rows(image(1)), True),
    ("not JSON: 400", "/v1/models/cnn:predict", {}, b"{instances: oops", True),
    ("empty body: 400", "/v1/models/cnn:predict", {}, b"", True),
    ("wrong shape: 400", "/v1/models/cnn:predict", {}, b'{"instances": [[1, 2]]}', True),
    ("NaN: 400", "/v1/models/cnn:predict", {}, rows(image(1)).replace(b"0.0", b"NaN", 1), True),
    ("batch over the cap: 400", "/v1/models/cnn:predict", {}, rows(image(1), image(2), image(3)), True),
    ("bad version: 400", "/v1/models/cnn/versions/1x:predict", {}, rows(image(1)), True),
    ("model name with odd characters: 404", "/v1/models/cn!n:predict", {}, rows(image(1)), True),
    ("backend refuses: 400 passed through", "/v1/models/cnn:predict", {}, rows(image(1, control=0.25)), True),
    ("backend fails: 500 passed through", "/v1/models/cnn:predict", {}, rows(image(1, control=0.5)), True),
    ("backend too slow: 504", "/v1/models/cnn:predict", {}, rows(image(1, control=0.75)), True),
    # Left to ASGI: a percent-encoded path, a chunked body, a body over the front's inline size, and
    # one over the gateway's body cap.
    ("percent-encoded path", "/v1/models/%63nn:predict", {}, rows(image(2)), False),
    ("chunked body", "/v1/models/cnn:predict", {"Transfer-Encoding": "chunked"}, rows(image(8)), False),
    ("body over 64 KiB: parsed off the loop", "/v1/models/cnn:predict", {}, rows(image(1)) + b" " * 70_000, False),
    ("body over the cap: 413", "/v1/models/cnn:predict", {}, rows(image(1)) + b" " * 120_000, False),
]


def chunked(body: bytes) -> bytes:
    half = len(body) // 2
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:])) + b"0\r\n\r\n"


@pytest.mark.parametrize(("name", "path", "headers", "body", "claimed"), CASES, ids=[c[0] for c in CASES])
def test_front_and_asgi_answer_alike(
    pair: tuple[Served, Served], name: str, path: str, headers: dict[str, str], body: bytes, claimed: bool
) -> None:
    front, asgi = pair
    assert front.front is not None
    wire = chunked(body) if "Transfer-Encoding" in headers else body
    before = front.front.claimed
    a = call(front.port, "POST", path, wire, headers)
    assert front.front.claimed - before == int(claimed)
    b = call(asgi.port, "POST", path, wire, headers)
    assert (a.status, a.body) == (b.status, b.body)
    assert set(a.headers) == set(b.headers)
    assert {k: v for k, v in a.headers.items() if k not in VOLATILE} == {
        k: v for k, v in b.headers.items() if k not in VOLATILE
    }
    assert a.headers["content-type"] == "application/json"
    if a.status == 200:
        assert a.headers["x-backend"] == "torch" and "x-upstream-latency-ms" in a.headers
        expected = [round(v[0][0][0] * 10) for v in orjson.loads(body).get("instances", [])]
        if expected:
            assert [p["classes"] for p in a.json()["predictions"]] == expected
    else:
        assert isinstance(a.json()["error"], str) and a.json()["error"]
    if "X-Request-ID" in headers:
        assert a.headers["x-request-id"] == b.headers["x-request-id"] == headers["X-Request-ID"]
    else:
        assert len(a.headers["x-request-id"]) == 32


def test_pipelined_requests_are_answered_in_order_across_both_paths(pair: tuple[Served, Served]) -> None:
    """One write carrying five requests, some served by the front, some by ASGI, one slow at the
    backend: the answers come back in the order asked, each with its own result."""
    front, _ = pair
    raw = b"".join(
        [
            request_bytes("POST", "/v1/models/cnn:predict", rows(image(1))),
            request_bytes("GET", "/healthz"),
            request_bytes("POST", "/v1/models/cnn:predict", chunked(rows(image(2))), {"Transfer-Encoding": "chunked"}),
            request_bytes("POST", "/v1/models/cnn:predict", rows(image(3)), {"X-Request-ID": "third"}),
            request_bytes("POST", "/v1/models/cnn:predict", b"{broken"),
        ]
    )
    answers = exchange(front.port, raw, answers=5, methods=["POST", "GET", "POST", "POST", "POST"])
    assert [a.status for a in answers] == [200, 200, 200, 200, 400]
    assert answers[0].json()["predictions"][0]["classes"] == 1
    assert answers[1].json() == {"status": "ok"}
    assert answers[2].json()["predictions"][0]["classes"] == 2
    assert answers[3].json()["predictions"][0]["classes"] == 3 and answers[3].headers["x-request-id"] == "third"
    assert "error" in answers[4].json()


def test_slow_answer_holds_the_next_pipelined_one_back(pair: tuple[Served, Served]) -> None:
    front, _ = pair
    raw = request_bytes("POST", "/v1/models/cnn:predict?backend=torch", rows(image(4, control=0.75))) + request_bytes(
        "POST", "/v1/models/cnn:predict", rows(image(5))
    )
    first, second = exchange(front.port, raw, answers=2)
    assert first.status == 504  # the backend took 2 s; the gateway's limit is 0.5 s
    assert (second.status, second.json()["predictions"][0]["classes"]) == (200, 5)


def test_keep_alive_and_connection_close(pair: tuple[Served, Served]) -> None:
    front, _ = pair
    assert front.front is not None
    before = front.front.claimed
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
        fp = _KeepOpen(socket.SocketIO(sock, "rb"))  # type: ignore[arg-type]
        for label in (1, 2):  # two calls on one kept-alive connection
            sock.sendall(request_bytes("POST", "/v1/models/cnn:predict", rows(image(label))))
            resp = http.client.HTTPResponse(_Sock(fp))  # type: ignore[arg-type]
            resp.begin()
            assert orjson.loads(resp.read())["predictions"][0]["classes"] == label
            assert resp.getheader("connection") is None
        sock.sendall(request_bytes("POST", "/v1/models/cnn:predict", rows(image(3)), {"Connection": "close"}))
        resp = http.client.HTTPResponse(_Sock(fp))  # type: ignore[arg-type]
        resp.begin()
        assert (resp.status, resp.getheader("connection")) == (200, "close")
        resp.read()
        assert sock.recv(1) == b""  # and the gateway closed it
    assert front.front.claimed - before == 3


def test_body_sent_in_pieces_and_a_client_gone_mid_body(pair: tuple[Served, Served]) -> None:
    front, _ = pair
    body = rows(image(6))
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
        head, _, _ = request_bytes("POST", "/v1/models/cnn:predict", body).partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        for i in range(0, len(body), 1000):
            time.sleep(0.002)
            sock.sendall(body[i : i + 1000])
        fp = _KeepOpen(socket.SocketIO(sock, "rb"))  # type: ignore[arg-type]
        resp = http.client.HTTPResponse(_Sock(fp))  # type: ignore[arg-type]
        resp.begin()
        assert orjson.loads(resp.read())["predictions"][0]["classes"] == 6
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
        sock.sendall(request_bytes("POST", "/v1/models/cnn:predict", body)[:-100])  # then hang up
    assert call(front.port, "POST", "/v1/models/cnn:predict", rows(image(7))).status == 200


def test_metrics_and_access_log_count_front_requests(backend: str) -> None:
    with ThreadServer(settings(backend, access_log=True), count=True) as served:
        log = io.BytesIO()
        served.app.state.access_log.stream = log
        assert call(served.port, "POST", "/v1/models/cnn:predict", rows(image(1)), {"X-Request-ID": "m1"}).status == 200
        assert call(served.port, "POST", "/v1/models/cnn:predict", b"[]").status == 400
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
            sock.sendall(request_bytes("POST", "/v1/models/cnn:predict", rows(image(2)))[:-50])
        time.sleep(0.3)
        metrics = call(served.port, "GET", "/metrics").body.decode()
        served.app.state.access_log.flush()
        assert served.front is not None and served.front.claimed == 3
    assert 'gateway_requests_total{backend="torch",endpoint="predict",status="200"} 1.0' in metrics
    assert 'gateway_requests_total{backend="torch",endpoint="predict",status="400"} 1.0' in metrics
    assert 'gateway_upstream_latency_seconds_count{backend="torch"} 1.0' in metrics
    lines = [orjson.loads(line) for line in log.getvalue().splitlines()]
    predicts = [entry for entry in lines if entry["path"] == "/v1/models/cnn:predict"]
    assert [(e["status"], e["backend"]) for e in predicts] == [(200, "torch"), (400, "torch"), (499, None)]
    assert predicts[0]["id"] == "m1" and predicts[0]["replica"] == backend and predicts[0]["latency_ms"] > 0


def test_api_keys_on_the_front(backend: str) -> None:
    with ThreadServer(settings(backend, api_keys=["k1", "k2"]), count=True) as served:
        assert served.front is not None
        ok = call(served.port, "POST", "/v1/models/cnn:predict", rows(image(2)), {"Authorization": "Bearer k2"})
        assert (ok.status, served.front.claimed) == (200, 1)
        for auth in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic k1"}):
            denied = call(served.port, "POST", "/v1/models/cnn:predict", rows(image(2)), auth)
            assert denied.status == 401 and "API key" in denied.json()["error"]
            assert denied.headers["www-authenticate"] == "Bearer"
        assert served.front.claimed == 1  # refusals are answered by the ASGI layer, in one place


def test_shutdown_answers_the_request_in_flight(backend: str) -> None:
    """Nothing accepted is lost: a stop while a claimed call waits for its backend still answers it."""
    server = ThreadServer(settings(backend, timeout_s=5.0), count=True)
    with server as served, socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(request_bytes("POST", "/v1/models/cnn:predict", rows(image(9, control=0.75))))
        time.sleep(0.3)
        served.server.should_exit = True
        fp = _KeepOpen(socket.SocketIO(sock, "rb"))  # type: ignore[arg-type]
        resp = http.client.HTTPResponse(_Sock(fp))  # type: ignore[arg-type]
        resp.begin()
        assert (resp.status, resp.getheader("connection")) == (200, "close")
        assert orjson.loads(resp.read())["predictions"][0]["classes"] == 9


def test_expect_continue_and_http_1_0_are_left_to_asgi(pair: tuple[Served, Served]) -> None:
    front, _ = pair
    assert front.front is not None
    before = front.front.claimed
    body = rows(image(4))
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
        head = request_bytes("POST", "/v1/models/cnn:predict", body, {"Expect": "100-continue"})[: -len(body)]
        sock.sendall(head)
        assert sock.recv(64).startswith(b"HTTP/1.1 100 ")
        sock.sendall(body)
        fp = _KeepOpen(socket.SocketIO(sock, "rb"))  # type: ignore[arg-type]
        resp = http.client.HTTPResponse(_Sock(fp))  # type: ignore[arg-type]
        resp.begin()
        assert orjson.loads(resp.read())["predictions"][0]["classes"] == 4
    old = request_bytes("POST", "/v1/models/cnn:predict", body).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    (answer,) = exchange(front.port, old)
    assert answer.json()["predictions"][0]["classes"] == 4
    assert front.front.claimed == before


class RawBackend(socketserver.ThreadingTCPServer):
    """Answers every request on a connection with the same bytes, whatever it asked."""

    daemon_threads = True

    def __init__(self, reply: bytes) -> None:
        reply_bytes = reply

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
                    self.wfile.write(reply_bytes)

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def test_a_version_that_would_split_the_head_is_a_502_on_both_paths() -> None:
    from tests.gateway.test_rest_binary import binary_answer

    probs = np.full((1, 10), 0.1, dtype=np.float32)
    reply = binary_answer(probs, np.array([3]), version="1\r\nx-injected: yes")
    with RawBackend(reply) as raw:
        threading.Thread(target=raw.serve_forever, daemon=True).start()
        tf = [unused_target()]
        with (
            ThreadServer(settings(raw.url, tf_grpc_targets=tf), count=True) as front,
            ThreadServer(settings(raw.url, tf_grpc_targets=tf, predict_path="asgi"), count=False) as asgi,
        ):
            answers = [call(s.port, "POST", "/v1/models/cnn:predict", rows(image(3))) for s in (front, asgi)]
            assert front.front is not None and front.front.claimed == 1
        raw.shutdown()
    for answer in answers:
        assert answer.status == 502 and "x-injected" not in answer.headers
        assert "model version that is no header value" in answer.json()["error"]
