"""The /v1/loadtests router in a tiny FastAPI app: limits, one run at a time, cancel, persistence."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from gateway.loadtest.api import LoadTestSettings, build_router


def _app(torch_url: str, tf_url: str, reports, **limits):
    settings = SimpleNamespace(
        host="127.0.0.1", port=1, torch_urls=[torch_url], tf_rest_urls=[tf_url], tf_grpc_targets=["127.0.0.1:9"]
    )
    router = build_router(settings, LoadTestSettings(reports_dir=reports, **limits))
    app = FastAPI()
    app.include_router(router)
    return app, router.manager


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


SMALL = {
    "name": "api",
    "targets": ["torch", "tf"],
    "duration_s": 1.0,
    "rounds": 1,
    "warmup_s": 0.3,
    "resources": "none",
}


async def _wait(client: httpx.AsyncClient, run_id: str, states: tuple[str, ...], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = (await client.get(f"/v1/loadtests/{run_id}")).json()
        if st["state"] in states:
            return st
        await asyncio.sleep(0.2)
    raise AssertionError(f"run {run_id} never reached {states}: {st}")


async def test_limits_and_validation(tmp_path, synthetic_repo):
    app, _ = _app(
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        tmp_path / "reports",
        max_duration_s=60,
        max_rate=100,
        max_concurrency=8,
    )
    async with _client(app) as client:
        r = await client.post("/v1/loadtests", json={**SMALL, "rounds": 100})
        assert r.status_code == 400 and "limit" in r.json()["error"]
        r = await client.post("/v1/loadtests", json={**SMALL, "load": {"loop": "open", "rate": 1000}})
        assert r.status_code == 400 and "rate" in r.json()["error"]
        r = await client.post("/v1/loadtests", json={**SMALL, "load": {"concurrency": 64}})
        assert r.status_code == 400 and "concurrency" in r.json()["error"]
        r = await client.post("/v1/loadtests", json={**SMALL, "targets": ["http://evil:1"]})
        assert r.status_code == 422 and "unknown target" in r.json()["error"]
        r = await client.post("/v1/loadtests", json={**SMALL, "pids": {"torch": 1}})
        assert r.status_code == 400
        r = await client.post("/v1/loadtests", json={**SMALL, "surprise": 1})
        assert r.status_code == 422 and "error" in r.json()
        r = await client.post("/v1/loadtests", content=b"{not json")
        assert r.status_code == 400
        assert (await client.get("/v1/loadtests/../../etc")).status_code == 404
        assert (await client.get("/v1/loadtests/20990101T000000Z-nope")).status_code == 404
        assert (await client.get("/v1/loadtests")).json() == {"loadtests": []}


async def test_unwritable_reports_folder_is_a_503_naming_the_setting(tmp_path, synthetic_repo):
    # A regular file where the reports folder's parent should be: no user, root included, can create it
    # (as in a container whose reports folder belongs to another uid).
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    app, manager = _app("http://127.0.0.1:9", "http://127.0.0.1:9", blocker / "reports")
    async with _client(app) as client:
        r = await client.post("/v1/loadtests", json=SMALL)
        assert r.status_code == 503
        assert "GATEWAY_LOADTEST_REPORTS_DIR" in r.json()["error"] and str(blocker) in r.json()["error"]
        assert manager._active is None  # nothing half-started blocks a later run
        assert (await client.get("/v1/loadtests")).json() == {"loadtests": []}


async def test_run_conflict_cancel_and_persistence(tmp_path, fake_server, synthetic_repo):
    torch, tf = fake_server("--delay-ms", "2"), fake_server("--delay-ms", "4")
    reports = tmp_path / "reports"
    app, _ = _app(torch, tf, reports)
    async with _client(app) as client:
        # A long run: the second POST is refused while it runs, then DELETE cancels it.
        r = await client.post("/v1/loadtests", json={**SMALL, "name": "long", "duration_s": 30, "rounds": 2})
        assert r.status_code == 202, r.text
        long_id = r.json()["id"]
        assert r.headers["location"] == f"/v1/loadtests/{long_id}"
        r2 = await client.post("/v1/loadtests", json=SMALL)
        assert r2.status_code == 409 and "one at a time" in r2.json()["error"]
        for _ in range(100):  # until preflight is over and the rounds are planned
            st = (await client.get(f"/v1/loadtests/{long_id}")).json()
            if st["progress"]["steps_total"]:
                break
            await asyncio.sleep(0.1)
        assert st["state"] == "running" and st["progress"]["steps_total"] == 4
        r = await client.delete(f"/v1/loadtests/{long_id}")
        assert r.status_code == 200
        st = await _wait(client, long_id, ("cancelled",), timeout=20)
        assert (await client.get(f"/v1/loadtests/{long_id}/report")).status_code == 404

        # A short run to completion: results and the HTML report.
        r = await client.post("/v1/loadtests", json=SMALL)
        assert r.status_code == 202
        run_id = r.json()["id"]
        st = await _wait(client, run_id, ("done", "failed"))
        assert st["state"] == "done", st
        assert st["results"]["valid"] and st["results"]["failed_requests"] == 0
        assert {row["target"] for row in st["results"]["summary"]} == {"torch", "tf"}
        rep = await client.get(st["report_url"])
        assert rep.status_code == 200 and rep.headers["content-type"].startswith("text/html")
        assert "<svg" in rep.text

    # "Restart": a new router over the same folder still lists and serves both runs.
    app2, _ = _app(torch, tf, reports)
    async with _client(app2) as client:
        listed = (await client.get("/v1/loadtests")).json()["loadtests"]
        assert {x["id"]: x["state"] for x in listed} == {run_id: "done", long_id: "cancelled"}
        assert (await client.get(f"/v1/loadtests/{run_id}")).json()["results"]["valid"]
        assert (await client.get(f"/v1/loadtests/{run_id}/report")).status_code == 200


@pytest.mark.parametrize("target", ["torch"])
async def test_preflight_failure_is_reported(tmp_path, synthetic_repo, target):
    app, _ = _app("http://127.0.0.1:9", "http://127.0.0.1:9", tmp_path / "reports")
    async with _client(app) as client:
        r = await client.post("/v1/loadtests", json={**SMALL, "targets": [target]})
        assert r.status_code == 202
        st = await _wait(client, r.json()["id"], ("failed", "done"))
        assert st["state"] == "failed" and "does not answer" in st["error"]
