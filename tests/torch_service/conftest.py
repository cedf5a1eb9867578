"""Fixtures that run `python -m torch_service` as a real process on a free loopback port."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from devstack.process import ManagedProcess, free_port

# A tiny batch file for tests that need a deterministic queue (the project file is used elsewhere).
FAST_BATCHING = """
max_batch_size { value: 8 }
batch_timeout_micros { value: 1000 }
max_enqueued_batches { value: 64 }
num_batch_threads { value: 2 }
"""


@dataclass
class Server:
    proc: ManagedProcess
    url: str
    repo: Path

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kw)  # type: ignore[arg-type]


def start_server(
    repo: Path,
    log_dir: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    ready_path: str = "/v2/health/ready",
) -> Server:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = ManagedProcess.python_module(
        f"torch_service-{port}",
        "torch_service",
        ready_url=f"{url}{ready_path}",
        log_dir=log_dir,
        env={
            "MODEL_REPOSITORY": str(repo),
            "TORCH_SERVICE_HOST": "127.0.0.1",
            "TORCH_SERVICE_PORT": str(port),
            # Two cores shared by every test: one torch thread per server keeps them from fighting.
            "TORCH_SERVICE_NUM_THREADS": "1",
            "TORCH_SERVICE_LOG_LEVEL": "info",
            **(env or {}),
        },
    )
    proc.start()
    try:
        proc.wait_ready(timeout)
    except Exception:
        proc.kill()
        raise
    return Server(proc, url, repo)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def factory(repo: Path, env: dict[str, str] | None = None, ready_path: str = "/v2/health/ready") -> Server:
        s = start_server(repo, tmp_path / "logs", env, ready_path=ready_path)
        started.append(s)
        return s

    yield factory
    for s in started:
        s.proc.stop(grace=15)


@pytest.fixture
def private_repo(model_repository: Path, tmp_path: Path) -> Path:
    """A copy of the shared repository's TorchScript tree that a test may add versions to or corrupt."""
    repo = tmp_path / "repo"
    shutil.copytree(model_repository / "torchscript", repo / "torchscript")
    return repo


@pytest.fixture
def write_batching(tmp_path: Path) -> Callable[[str], str]:
    def write(text: str) -> str:
        path = tmp_path / f"batching-{abs(hash(text))}.config"
        path.write_text(text)
        return str(path)

    return write


def publish_copy(repo: Path, src_version: int, dst_version: int, corrupt: bool = False) -> Path:
    """Copy a version atomically (stage, then rename into place) as the trainer publishes."""
    base = repo / "torchscript" / "cnn"
    staging = base / f".staging-{dst_version}"
    shutil.copytree(base / str(src_version), staging)
    if corrupt:
        with open(staging / "model.pt", "ab") as f:
            f.write(b"\0tampered")
    final = base / str(dst_version)
    staging.rename(final)
    return final


def images_body(images: np.ndarray) -> dict[str, object]:
    return {"instances": images.tolist()}
