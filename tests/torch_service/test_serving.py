"""Integration: overload, batching off, hot swap under load, a corrupt version, graceful shutdown, GPU.

Each test starts its own real `python -m torch_service` with the settings it needs.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.torch_service.conftest import FAST_BATCHING, Server, publish_copy

pytestmark = pytest.mark.integration


def _gauge(c: httpx.Client, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", c.get("/metrics").text, re.M)
    assert m is not None, name
    return float(m[1])


def _wait_for(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _instances(golden: dict[str, np.ndarray], n: int) -> dict[str, object]:
    return {"instances": golden["images"][:n].tolist()}


# ------------------------------------------------------------------------------------- overload
def test_full_queue_is_503_with_retry_after_at_once_and_recovers(
    model_repository: Path,
    server_factory: Callable[..., Server],
    write_batching: Callable[[str], str],
    golden: dict[str, np.ndarray],
) -> None:
    # Queue capacity 4 instances; a 3-instance request sits in it for 5 s (the batch timeout), so a
    # 2-instance request cannot fit and must be refused while the first is still waiting.
    cfg = write_batching(
        "max_batch_size { value: 4 }\nbatch_timeout_micros { value: 5000000 }\n"
        "max_enqueued_batches { value: 1 }\nnum_batch_threads { value: 1 }\n"
    )
    s = server_factory(model_repository, {"TORCH_SERVICE_BATCHING_PARAMETERS_FILE": cfg})
    with s.client() as c, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(lambda: s.client().post("/v1/models/cnn:predict", json=_instances(golden, 3)))
        _wait_for(lambda: _gauge(c, "torch_service_queued_instances") == 3, what="the slow request in the queue")
        r = c.post("/v1/models/cnn:predict", json=_instances(golden, 2))
        assert not slow.done(), "the queued request should still be waiting for its batch timeout"
        assert r.status_code == 503
        assert "queue" in r.json()["error"] and "full" in r.json()["error"]
        assert int(r.headers["retry-after"]) >= 1
        r2 = c.post(
            "/v2/models/cnn/infer",
            json={"inputs": [{"name": "images", "shape": [2, 28, 28, 1], "datatype": "FP32", "data": [0.0] * 1568}]},
        )
        assert r2.status_code == 503 and "retry-after" in r2.headers
        first = slow.result(timeout=30)
        assert first.status_code == 200
        assert [p["classes"] for p in first.json()["predictions"]] == golden["classes"][:3].tolist()
        # Recovered: the queue is empty again, the same request now succeeds.
        again = c.post("/v1/models/cnn:predict", json=_instances(golden, 1))
        assert again.status_code == 200
        assert _gauge(c, "torch_service_queued_instances") == 0
        assert 'endpoint="predict",status="503"' in c.get("/metrics").text


def test_batching_off_serves_golden_concurrently(
    model_repository: Path, server_factory: Callable[..., Server], golden: dict[str, np.ndarray]
) -> None:
    s = server_factory(model_repository, {"TORCH_SERVICE_ENABLE_BATCHING": "false"})

    def one(i: int) -> None:
        with s.client() as c:
            r = c.post("/v1/models/cnn:predict", json={"instances": golden["images"][i : i + 1].tolist()})
            assert r.status_code == 200, r.text
            p = r.json()["predictions"][0]
            np.testing.assert_allclose(p["probabilities"], golden["probabilities"][i], atol=1e-5, rtol=0)
            assert p["classes"] == int(golden["classes"][i])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(min(32, len(golden["images"])))))
    with s.client() as c:
        # A request larger than any batching file allows is fine when batching is off.
        r = c.post("/v1/models/cnn:predict", json={"instances": np.zeros((40, 28, 28, 1)).tolist()})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 40


# --------------------------------------------------------------------------------- hot swap
def test_new_version_hot_swapped_under_load_and_corrupt_version_rejected(
    private_repo: Path,
    server_factory: Callable[..., Server],
    write_batching: Callable[[str], str],
    golden: dict[str, np.ndarray],
) -> None:
    s = server_factory(
        private_repo,
        {
            "TORCH_SERVICE_POLL_INTERVAL_S": "0.2",
            "TORCH_SERVICE_BATCHING_PARAMETERS_FILE": write_batching(FAST_BATCHING),
        },
    )
    body = {
        "inputs": [
            {
                "name": "images",
                "shape": [1, 28, 28, 1],
                "datatype": "FP32",
                "data": golden["images"][0].ravel().tolist(),
            }
        ]
    }
    stop = threading.Event()
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def client_loop() -> None:
        with s.client() as c:
            for _ in range(2000):  # bounded even if the stop signal never comes
                if stop.is_set():
                    return
                r = c.post("/v2/models/cnn/infer", json=body)
                version = r.json().get("model_version", "") if r.status_code == 200 else r.text
                with lock:
                    results.append((r.status_code, version))

    def status(c: httpx.Client) -> dict[str, dict]:
        return {e["version"]: e for e in c.get("/v1/models/cnn").json()["model_version_status"]}

    with s.client() as c, ThreadPoolExecutor(4) as pool:
        loops = [pool.submit(client_loop) for _ in range(4)]
        try:
            _wait_for(lambda: len(results) >= 20, what="traffic on version 1")
            publish_copy(private_repo, 1, 2)
            _wait_for(
                lambda: status(c).get("2", {}).get("state") == "AVAILABLE" and status(c)["1"]["state"] == "END",
                what="version 2 to replace version 1",
            )
            seen = len(results)
            _wait_for(lambda: len(results) >= seen + 20, what="traffic on version 2")
        finally:
            stop.set()
            for f in loops:
                f.result(timeout=60)
        assert results and all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:5]
        versions = [v for _, v in results]
        assert "1" in versions and versions[-1] == "2"
        assert c.get("/v2/models/cnn").json()["versions"] == ["2"]

        # A corrupt version 3 (model.pt changed after its manifest was written) must not replace 2.
        publish_copy(private_repo, 2, 3, corrupt=True)
        _wait_for(lambda: status(c).get("3", {}).get("state") == "END", what="version 3 to fail")
        v3 = c.get("/v1/models/cnn/versions/3").json()["model_version_status"][0]
        assert v3["status"]["error_code"] != "OK"
        assert "checksum mismatch" in v3["status"]["error_message"] and "model.pt" in v3["status"]["error_message"]
        assert status(c)["2"]["state"] == "AVAILABLE"
        r = c.post("/v2/models/cnn/infer", json=body)
        assert r.status_code == 200 and r.json()["model_version"] == "2"
        assert c.post("/v2/models/cnn/versions/3/infer", json=body).status_code == 404


def test_not_ready_until_a_version_appears_then_serves_it(
    model_repository: Path,
    tmp_path: Path,
    server_factory: Callable[..., Server],
    write_batching: Callable[[str], str],
    golden: dict[str, np.ndarray],
) -> None:
    repo = tmp_path / "empty_repo"
    (repo / "torchscript" / "cnn").mkdir(parents=True)
    env = {
        "TORCH_SERVICE_POLL_INTERVAL_S": "0.2",
        "TORCH_SERVICE_BATCHING_PARAMETERS_FILE": write_batching(FAST_BATCHING),
    }
    s = server_factory(repo, env, ready_path="/v2/health/live")
    with s.client() as c:
        assert c.get("/v2/health/live").status_code == 200
        r = c.get("/v2/health/ready")
        assert r.status_code == 503 and "no version available" in r.json()["error"]
        assert c.get("/v2/models/cnn/ready").status_code == 503
        assert c.get("/v1/models/cnn").status_code == 404
        r = c.post("/v1/models/cnn:predict", json=_instances(golden, 1))
        assert r.status_code == 404 and "Latest(cnn)" in r.json()["error"]
        staging = repo / "torchscript" / "cnn" / ".incoming"
        shutil.copytree(model_repository / "torchscript" / "cnn" / "1", staging)
        staging.rename(repo / "torchscript" / "cnn" / "1")
        _wait_for(lambda: c.get("/v2/health/ready").status_code == 200, what="the first version to load")
        r = c.post("/v1/models/cnn:predict", json=_instances(golden, 2))
        assert r.status_code == 200
        assert [p["classes"] for p in r.json()["predictions"]] == golden["classes"][:2].tolist()


# --------------------------------------------------------------------------- graceful shutdown
def test_sigterm_finishes_in_flight_requests(
    model_repository: Path,
    server_factory: Callable[..., Server],
    write_batching: Callable[[str], str],
    golden: dict[str, np.ndarray],
) -> None:
    # Requests wait 1.5 s for their batch, so SIGTERM surely lands while they are in flight.
    cfg = write_batching(
        "max_batch_size { value: 64 }\nbatch_timeout_micros { value: 1500000 }\n"
        "max_enqueued_batches { value: 4 }\nnum_batch_threads { value: 1 }\n"
    )
    s = server_factory(model_repository, {"TORCH_SERVICE_BATCHING_PARAMETERS_FILE": cfg})
    n = 6

    def one(i: int) -> httpx.Response:
        with s.client() as c:
            return c.post("/v1/models/cnn:predict", json={"instances": golden["images"][i : i + 1].tolist()})

    with s.client() as c, ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        _wait_for(lambda: _gauge(c, "torch_service_in_flight_requests") >= n + 1, what="all requests in flight")
        s.proc.signal(signal.SIGTERM)
        responses = [f.result(timeout=30) for f in futures]
    assert [r.status_code for r in responses] == [200] * n
    assert [r.json()["predictions"][0]["classes"] for r in responses] == golden["classes"][:n].tolist()
    # uvicorn re-raises the signal once it has shut down cleanly, so the exit status is "killed by SIGTERM".
    assert s.proc.proc is not None and s.proc.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    log = s.proc.log_tail(50)
    assert "version 1 unloaded" in log and "Finished server process" in log


# ------------------------------------------------------------------------------ start-up checks
@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"TORCH_SERVICE_PORT": "not-a-port"}, "TORCH_SERVICE_PORT"),
        ({"TORCH_SERVICE_VERSION_POLICY": "newest"}, "TORCH_SERVICE_VERSION_POLICY"),
        ({"TORCH_SERVICE_DEVICE": "tpu"}, "TORCH_SERVICE_DEVICE"),
        ({"TORCH_SERVICE_BATCHING_PARAMETERS_FILE": "/nonexistent/batching.config"}, "cannot read batching"),
    ],
)
def test_bad_settings_exit_with_one_line(tmp_path: Path, env: dict[str, str], needle: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "torch_service"],
        env={"PATH": "/usr/bin:/bin", "MODEL_REPOSITORY": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_serves_golden_on_cuda(
    model_repository: Path, server_factory: Callable[..., Server], golden: dict[str, np.ndarray]
) -> None:
    s = server_factory(model_repository, {"TORCH_SERVICE_DEVICE": "cuda"})
    with s.client() as c:
        r = c.post("/v1/models/cnn:predict", json={"instances": golden["images"][:8].tolist()})
        assert r.status_code == 200
        probs = np.asarray([p["probabilities"] for p in r.json()["predictions"]])
        # cuDNN may pick other conv algorithms than the CPU: allow a little more than the CPU parity.
        np.testing.assert_allclose(probs, golden["probabilities"][:8], atol=1e-4, rtol=0)
        assert [p["classes"] for p in r.json()["predictions"]] == golden["classes"][:8].tolist()
    assert "on cuda" in s.proc.log_tail(50)
