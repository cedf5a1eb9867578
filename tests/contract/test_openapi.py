"""The services' OpenAPI documents, checked against what they answer by schemathesis.

schemathesis (written elsewhere; pinned in the dev extra) reads a service's `/openapi.json` and sends
what the document describes and what it forbids. Every check it has is on: no input may cause a 5xx;
every answer's status, content type, headers and body must be documented; a body the schema admits
must be accepted and one it forbids refused; a 405's `Allow` must list the path's methods. What is
turned off, for which operation and why, is in tests/contract/schemathesis.toml. A fixed seed and
example count: each run sends the same cases.

Run against the gateway (in front of torch_service and the compat server, gRPC) and torch_service.
The compat server has no OpenAPI document, as TensorFlow Serving has none.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.process import ManagedProcess, free_port
from tests.contract.conftest import ROOT, Backend

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = "20261128"


def run_schemathesis(base_url: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    assert SCHEMATHESIS.is_file(), f"{SCHEMATHESIS} missing: install the dev extra (make setup)"
    cmd = [
        str(SCHEMATHESIS),
        "--no-color",
        "--config-file",
        str(CONFIG),
        "run",
        f"{base_url}/openapi.json",
        "--seed",
        SEED,
        "--workers",
        "2",
        "--continue-on-failure",
        "--report-dir",
        str(workdir / "schemathesis-report"),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=workdir, check=False)


def assert_conforms(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"schemathesis found failures (exit {result.returncode}):\n{output[-12000:]}"
    # It did test something: an empty or unreadable document would also "pass" nothing.
    assert "Tested:" in output and "generated" in output, output[-3000:]


@pytest.fixture(scope="module")
def gateway_url(
    torch_backend: Backend, compat_backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("openapi_gateway")
    assert compat_backend.grpc_target is not None
    env = {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_TORCH_URLS": torch_backend.rest_url,
        "GATEWAY_TF_PROTOCOL": "grpc",
        "GATEWAY_TF_GRPC_TARGETS": compat_backend.grpc_target,
        "GATEWAY_TF_REST_URLS": compat_backend.rest_url,
        "GATEWAY_ACCESS_LOG": "false",
        "GATEWAY_LOADTEST_REPORTS_DIR": str(logs / "reports"),
    }
    proc = ManagedProcess.python_module(
        "gateway", "gateway", ready_url=f"{url}/readyz", log_dir=logs, env=env, cwd=ROOT
    )
    proc.start()
    try:
        proc.wait_ready(timeout=120)
        yield url
    finally:
        proc.stop()


def test_gateway_answers_as_its_openapi_document_says(gateway_url: str, tmp_path: Path) -> None:
    assert_conforms(run_schemathesis(gateway_url, tmp_path))


def test_torch_service_answers_as_its_openapi_document_says(torch_backend: Backend, tmp_path: Path) -> None:
    assert_conforms(run_schemathesis(torch_backend.rest_url, tmp_path))
