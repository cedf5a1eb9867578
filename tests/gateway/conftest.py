"""Fixtures for gateway tests: real processes on free loopback ports (stand-in backends, the
gateway itself, and the real backends) stopped at the end of each test or session."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack.process import ManagedProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}

Starter = Callable[..., tuple[ManagedProcess, str]]


class Procs:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[ManagedProcess] = []

    def start(self, proc: ManagedProcess, timeout: float = 120.0) -> ManagedProcess:
        self.procs.append(proc)
        proc.start()
        proc.wait_ready(timeout)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(grace=5)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path / "logs")
    yield p
    p.stop_all()


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Procs]:
    """For servers shared by a whole test module (starting TF-importing processes costs seconds each)."""
    p = Procs(tmp_path_factory.mktemp("logs"))
    yield p
    p.stop_all()


def standin(
    procs: Procs, name: str, *, grpc: bool = False, rest_port: int | None = None, grpc_port: int | None = None
) -> tuple[ManagedProcess, str, str | None]:
    """Start tests/gateway/standin.py; returns (process, REST URL, gRPC target or None)."""
    rest_port = rest_port or free_port()
    args = ["--rest-port", str(rest_port), "--name", name]
    target = None
    if grpc:
        grpc_port = grpc_port or free_port()
        args += ["--grpc-port", str(grpc_port)]
        target = f"127.0.0.1:{grpc_port}"
    url = f"http://127.0.0.1:{rest_port}"
    proc = ManagedProcess.python_module(
        name,
        "tests.gateway.standin",
        ready_url=f"{url}/v1/models/cnn",
        log_dir=procs.log_dir,
        env=QUIET,
        args=args,
        cwd=ROOT,
    )
    procs.start(proc, timeout=60)
    return proc, url, target


def gateway(procs: Procs, **env: str) -> tuple[ManagedProcess, str]:
    """Start `python -m gateway` with GATEWAY_* settings given as keyword arguments (lower-case names)."""
    port = free_port()
    full = {**QUIET, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port)}
    full |= {f"GATEWAY_{k.upper()}": v for k, v in env.items()}
    url = f"http://127.0.0.1:{port}"
    proc = ManagedProcess.python_module(
        "gateway", "gateway", ready_url=f"{url}/healthz", log_dir=procs.log_dir, env=full, cwd=ROOT
    )
    procs.start(proc, timeout=60)
    return proc, url


def unused_target() -> str:
    return f"127.0.0.1:{free_port()}"


def unused_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loopback only: a proxy from the environment must never see test traffic.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def wait_available(url: str, timeout: float = 120.0) -> None:
    """Until TF Serving's status API says some version is AVAILABLE (200 alone can mean LOADING)."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/v1/models/cnn", timeout=2)
            last = r.text
            if r.status_code == 200 and any(s.get("state") == "AVAILABLE" for s in r.json()["model_version_status"]):
                return
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.3)
    raise TimeoutError(f"{url} has no AVAILABLE version after {timeout:.0f}s: {last}")


def torch_service(procs: Procs, repo: Path, name: str = "torch", port: int | None = None) -> tuple[ManagedProcess, str]:
    """Real `python -m torch_service` on a free port, serving `repo`."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **QUIET,
        "MODEL_REPOSITORY": str(repo),
        "TORCH_SERVICE_HOST": "127.0.0.1",
        "TORCH_SERVICE_PORT": str(port),
        "TORCH_SERVICE_NUM_THREADS": "1",
        "TORCH_SERVICE_LOG_LEVEL": "warning",
    }
    proc = ManagedProcess.python_module(
        name, "torch_service", ready_url=f"{url}/v2/health/ready", log_dir=procs.log_dir, env=env, cwd=ROOT
    )
    procs.start(proc, timeout=180)
    wait_available(url)
    return proc, url


def tf_compat(procs: Procs, repo: Path) -> tuple[ManagedProcess, str, str]:
    """Real `python -m tf_serving.compat` (REST + gRPC) on free ports; returns (process, REST URL, gRPC target)."""
    rest, grpc = free_port(), free_port()
    url = f"http://127.0.0.1:{rest}"
    env = {
        **QUIET,
        "MODEL_REPOSITORY": str(repo),
        "TF_SERVING_REST_PORT": str(rest),
        "TF_SERVING_GRPC_PORT": str(grpc),
        "TF_SERVING_HOST": "127.0.0.1",
    }
    proc = ManagedProcess.python_module(
        "tf_compat", "tf_serving.compat", ready_url=f"{url}/v1/models/cnn", log_dir=procs.log_dir, env=env, cwd=ROOT
    )
    procs.start(proc, timeout=180)
    wait_available(url)
    return proc, url, f"127.0.0.1:{grpc}"


def load_with_kill(
    url: str, path: str, body: bytes, kill: Callable[[], None], *, before: int = 40, after: int = 200, threads: int = 4
) -> tuple[list[tuple[int, str]], int]:
    """Closed-loop load on `url + path`; `kill()` runs once `before` answers are in, and the load goes
    on for `after` more. Counted rather than timed, so a fast machine cannot finish the whole load
    before the kill. Returns every (status, X-Replica or body) and the index of the first answer
    recorded after the kill."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                r = c.post(path, content=body)
                results.append((r.status_code, r.headers.get("x-replica", r.text)))

    def wait_for(count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(results) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(results) >= count, f"only {len(results)} requests answered in {timeout:.0f}s"

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(worker) for _ in range(threads)]
        try:
            wait_for(before)
            kill()
            killed_at = len(results)
            wait_for(killed_at + after)
        finally:
            stop.set()
            for f in futures:
                f.result()
    return results, killed_at
