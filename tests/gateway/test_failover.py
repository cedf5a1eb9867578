"""Failures of the REAL backends behind the gateway: a torch replica killed under load, then the
whole TF backend killed. The tests run in file order on one stack (the second needs the first's
survivors), each asserting what it relies on."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson
import pytest

from devstack.process import ManagedProcess
from tests.gateway.conftest import Procs, gateway, load_with_kill, tf_compat, torch_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(module_procs: Procs, model_repository: Path) -> dict[str, object]:
    torch_a, url_a = torch_service(module_procs, model_repository, "torch_a")
    torch_b, url_b = torch_service(module_procs, model_repository, "torch_b")
    tf_proc, _, tf_target = tf_compat(module_procs, model_repository)
    _, gw = gateway(
        module_procs,
        torch_urls=f"{url_a},{url_b}",
        tf_grpc_targets=tf_target,
        health_interval_s="0.5",
        eject_cooldown_s="1",
        access_log="false",
    )
    return {"gw": gw, "torch_a": torch_a, "torch_b": torch_b, "url_a": url_a, "url_b": url_b, "tf": tf_proc}


def test_torch_replica_killed_under_load_no_client_errors(stack: dict, golden: dict) -> None:
    body = orjson.dumps({"instances": golden["images"][:2]}, option=orjson.OPT_SERIALIZE_NUMPY)
    gw = stack["gw"]
    victim: ManagedProcess = stack["torch_b"]
    results, killed_at = load_with_kill(gw, "/v1/models/cnn:predict?backend=torch", body, victim.kill)
    statuses = {s for s, _ in results}
    assert statuses == {200}, [r for r in results if r[0] != 200][:5]
    served = {replica for _, replica in results}
    assert stack["url_a"] in served and stack["url_b"] in served  # both took traffic before the kill
    assert {replica for _, replica in results[killed_at + 20 :]} == {stack["url_a"]}
    doc = httpx.get(f"{gw}/v1/backends").json()
    by_addr = {r["address"]: r for r in doc["backends"]["torch"]["replicas"]}
    assert by_addr[stack["url_b"]]["in_rotation"] is False
    assert by_addr[stack["url_a"]]["in_rotation"] is True


def test_tf_killed_torch_keeps_working_and_compare_is_partial(stack: dict, golden: dict) -> None:
    body = orjson.dumps({"instances": golden["images"][:4]}, option=orjson.OPT_SERIALIZE_NUMPY)
    gw = stack["gw"]
    assert httpx.post(f"{gw}/v1/models/cnn:predict?backend=tf", content=body, timeout=30).status_code == 200
    stack["tf"].kill()
    r = httpx.post(f"{gw}/v1/models/cnn:predict?backend=tf", content=body, timeout=30)
    assert r.status_code == 503 and r.json()["error"].startswith("tf backend unavailable")
    for _ in range(20):
        r = httpx.post(f"{gw}/v1/models/cnn:predict?backend=torch", content=body, timeout=30)
        assert r.status_code == 200
        assert [p["classes"] for p in r.json()["predictions"]] == golden["classes"][:4].tolist()
    r = httpx.post(f"{gw}/v1/compare", content=body, timeout=30)
    doc = r.json()
    assert r.status_code == 200 and doc["partial"] is True and doc["failed"] == ["tf"]
    assert doc["backends"]["torch"]["ok"] is True and doc["agreement"] is None
    assert doc["backends"]["tf"]["status"] == 503 and "unavailable" in doc["backends"]["tf"]["error"]
    time.sleep(1.5)  # a probe round: the gateway stays ready on torch alone
    ready = httpx.get(f"{gw}/readyz")
    assert ready.status_code == 200 and ready.json()["backends"] == {"torch": True, "tf": False}
