"""The compose healthcheck commands, run for real against a local HTTP server on a free port.

They run here with this machine's bash/python, which is what the images provide: the TF Serving
check must pass only once the model is AVAILABLE (the status URL answers 200 while LOADING), and
the Python checks must fail on a 503.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from devstack.process import free_port
from tests.deploy.compose_files import COMPOSE, load_yaml


class _State:
    def __init__(self) -> None:
        self.status = 200
        self.body: dict[str, Any] = {}


class _Handler(BaseHTTPRequestHandler):
    state = _State()

    def do_GET(self) -> None:
        payload = json.dumps(self.state.body).encode()
        self.send_response(self.state.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[tuple[int, _State]]:
    state = _State()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _status(state: str) -> dict[str, Any]:
    return {
        "model_version_status": [{"version": "1", "state": state, "status": {"error_code": "OK", "error_message": ""}}]
    }


def _healthcheck(service: str, port: int, container_port: int) -> list[str]:
    test = load_yaml(COMPOSE)["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return [
        arg.replace(f"127.0.0.1/{container_port}", f"127.0.0.1/{port}").replace(
            f"127.0.0.1:{container_port}", f"127.0.0.1:{port}"
        )
        for arg in test[1:]
    ]


def _run(argv: list[str]) -> int:
    if argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed here")
def test_tf_serving_healthcheck_waits_for_available(server: tuple[int, _State]) -> None:
    port, state = server
    argv = _healthcheck("tf_serving", port, 8501)
    state.body = _status("LOADING")
    assert _run(argv) != 0, "healthy while the model is still loading"
    state.body = _status("AVAILABLE")
    assert _run(argv) == 0
    state.status, state.body = 404, {"error": "Servable not found for request: Latest(cnn)"}
    assert _run(argv) != 0


def test_tf_serving_healthcheck_fails_when_nothing_listens() -> None:
    argv = _healthcheck("tf_serving", free_port(), 8501)
    assert _run(argv) != 0


@pytest.mark.parametrize(("service", "container_port"), [("torch_service", 8080), ("gateway", 8000)])
def test_python_healthchecks_follow_the_status_code(
    server: tuple[int, _State], service: str, container_port: int
) -> None:
    port, state = server
    argv = _healthcheck(service, port, container_port)
    state.status, state.body = 200, {"ready": True}
    assert _run(argv) == 0
    state.status, state.body = 503, {"error": "not ready"}
    assert _run(argv) != 0
