"""/v1/loadtests served by the real gateway process (its worker processes spawned from inside uvicorn),
against two fake REST backends: start, progress, results, report, list."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from devstack.process import ManagedProcess, free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_loadtest_through_the_gateway_api(fake_server, synthetic_repo, tmp_path):
    if not (ROOT / "gateway" / "__main__.py").is_file():
        pytest.skip("the gateway is not written yet")
    torch, tf = fake_server("--delay-ms", "2"), fake_server("--delay-ms", "3")
    port = free_port()
    gw = ManagedProcess.python_module(
        "gateway",
        "gateway",
        ready_url=f"http://127.0.0.1:{port}/healthz",
        log_dir=tmp_path / "logs",
        env={
            "GATEWAY_PORT": str(port),
            "GATEWAY_TORCH_URLS": torch,
            "GATEWAY_TF_REST_URLS": tf,
            "GATEWAY_TF_PROTOCOL": "rest",
            "GATEWAY_LOADTEST_REPORTS_DIR": str(tmp_path / "reports"),
            "GATEWAY_LOADTEST_MAX_DURATION_S": "60",
            "MODEL_REPOSITORY": str(synthetic_repo),
            # With keys on, its own gateway-* targets must authenticate like any client (they got 401).
            "GATEWAY_API_KEYS": "k-one,k-two",
        },
        cwd=ROOT,
    ).start()
    try:
        gw.wait_ready(120)
        base = f"http://127.0.0.1:{port}"
        scenario = {
            "name": "viaapi",
            "targets": ["torch", "gateway-tf"],
            "duration_s": 1.0,
            "rounds": 2,
            "warmup_s": 0.5,
        }
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/v1/loadtests").status_code == 401
            client.headers["Authorization"] = "Bearer k-two"
            assert client.post("/v1/loadtests", json={**scenario, "rounds": 500}).status_code == 400
            r = client.post("/v1/loadtests", json=scenario)
            assert r.status_code == 202, r.text
            run_id = r.json()["id"]
            # Still running: its report is not there yet, and that is a 409 (not a 404, which would say
            # there will never be one).
            early = client.get(f"/v1/loadtests/{run_id}/report")
            assert early.status_code == 409 and "still running" in early.json()["error"], early.text
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                st = client.get(f"/v1/loadtests/{run_id}").json()
                if st["state"] != "running":
                    break
                # The gateway keeps answering while the load runs in its worker processes.
                assert client.get("/v1/loadtests").status_code == 200
                time.sleep(0.3)
            assert st["state"] == "done", (st, gw.log_tail())
            assert st["results"]["valid"] and st["results"]["failed_requests"] == 0
            assert client.get(f"/v1/loadtests/{run_id}/report").text.count("<svg") >= 4
            assert [x["id"] for x in client.get("/v1/loadtests").json()["loadtests"]] == [run_id]
    finally:
        gw.stop(10)
