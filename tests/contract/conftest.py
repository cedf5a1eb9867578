"""Backends for the TF Serving API contract suite.

Every test takes `backend` and runs once per backend: the compat server (REST + gRPC) and
torch_service (REST) started here on free loopback ports over the shared `model_repository`, and a
real TensorFlow Serving when `TFS_REST_URL` (and optionally `TFS_GRPC_TARGET`) name one — skipped,
with the reason, when unset. For a real server, `TFS_GOLDEN_NPZ` may name the golden.npz of the
version it serves, to check its predictions too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from devstack.process import ManagedProcess, free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Backend:
    name: str
    rest_url: str
    grpc_target: str | None  # None: this backend has no gRPC API
    golden: dict[str, np.ndarray] | None  # what the served version must predict


def _start(name: str, module: str, env: dict[str, str], ready_url: str, log_dir: Path, **kw: str) -> ManagedProcess:
    proc = ManagedProcess.python_module(
        name, module, ready_url=ready_url, log_dir=log_dir, env=env, cwd=ROOT, ready_body=kw.get("ready_body")
    )
    proc.start()
    try:
        proc.wait_ready(timeout=180)
    except Exception:
        proc.kill()
        raise
    return proc


@pytest.fixture(scope="session")
def compat_backend(
    model_repository: Path, golden: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    rest, grpc_port = free_port(), free_port()
    env = {
        "MODEL_REPOSITORY": str(model_repository),
        "TF_SERVING_HOST": "127.0.0.1",
        "TF_SERVING_REST_PORT": str(rest),
        "TF_SERVING_GRPC_PORT": str(grpc_port),
        "TF_SERVING_FILE_SYSTEM_POLL_WAIT_SECONDS": "0",  # the shared repository does not change
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    url = f"http://127.0.0.1:{rest}"
    proc = _start(
        "tf_serving_compat",
        "tf_serving.compat",
        env,
        f"{url}/v1/models/cnn",
        tmp_path_factory.mktemp("compat_logs"),
        ready_body='"AVAILABLE"',
    )
    yield Backend("compat", url, f"127.0.0.1:{grpc_port}", golden)
    proc.stop()


@pytest.fixture(scope="session")
def torch_backend(
    model_repository: Path, golden: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    if not (ROOT / "torch_service" / "__main__.py").is_file():
        pytest.skip("torch_service is not written yet (no torch_service/__main__.py)")
    port = free_port()
    env = {
        "MODEL_REPOSITORY": str(model_repository),
        "TORCH_SERVICE_HOST": "127.0.0.1",
        "TORCH_SERVICE_PORT": str(port),
    }
    url = f"http://127.0.0.1:{port}"
    proc = _start("torch_service", "torch_service", env, f"{url}/v2/health/ready", tmp_path_factory.mktemp("ts_logs"))
    yield Backend("torch_service", url, None, golden)
    proc.stop()


@pytest.fixture(scope="session")
def real_backend() -> Backend:
    url = os.environ.get("TFS_REST_URL")
    if not url:
        pytest.skip("no real TensorFlow Serving: set TFS_REST_URL (and TFS_GRPC_TARGET) to run against one")
    golden_path = os.environ.get("TFS_GOLDEN_NPZ")
    golden = None
    if golden_path:
        with np.load(golden_path) as z:
            golden = {k: z[k] for k in z.files}
    return Backend("tf_serving", url.rstrip("/"), os.environ.get("TFS_GRPC_TARGET") or None, golden)


@pytest.fixture(params=["compat", "torch_service", "tf_serving"])
def backend(request: pytest.FixtureRequest) -> Backend:
    fixture = {"compat": "compat_backend", "torch_service": "torch_backend", "tf_serving": "real_backend"}
    return request.getfixturevalue(fixture[request.param])


@pytest.fixture
def grpc_backend(backend: Backend) -> Backend:
    if backend.grpc_target is None:
        pytest.skip(f"{backend.name} has no gRPC API")
    return backend


@pytest.fixture
def golden_of(backend: Backend) -> dict[str, np.ndarray]:
    if backend.golden is None:
        pytest.skip(f"no golden set for {backend.name}: set TFS_GOLDEN_NPZ to the served version's golden.npz")
    return backend.golden
