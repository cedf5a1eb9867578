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

    def __init__(self, reply: bytes) -> None:
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


def uvicorn_server(settings: Settings) -> object:
    import uvicorn

    return uvicorn.Server(server_config(create_app(settings), settings))


def test_a_backend_version_that_would_split_the_head_is_a_json_502() -> None:
    probs = np.full((1, 10), 0.1, dtype=np.float32)
    reply = binary_answer(probs, np.array([3]), version="1\r\nx-injected: yes")
    body = {"instances": np.zeros((1, 28, 28, 1)).tolist()}
    with RawBackend(reply) as raw:
        threading.Thread(target=raw.serve_forever, daemon=True).start()
        settings = Settings(
            port=free_port(),
            torch_urls=[raw.url],
            tf_grpc_targets=[unused_target()],
            access_log=False,
            log_level="warning",
        )
        with served(settings) as url:
            r = httpx.post(f"{url}/v1/models/cnn:predict", json=body, timeout=10)
            ok = httpx.get(f"{url}/healthz", timeout=10)  # and it goes on serving
        raw.shutdown()
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
