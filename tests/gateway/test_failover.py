"""Failures of the REAL backends behind the gateway: a torch replica frozen, then killed, under load, each backend in
turn frozen (alive, but answering nothing) and thawed under the other's traffic, then the whole TF
backend killed. The tests run in
file order on one stack (each needs the survivors of the ones before), each asserting what it relies on."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
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
        timeout_s="2",
        access_log="false",
    )
    return {"gw": gw, "torch_a": torch_a, "torch_b": torch_b, "url_a": url_a, "url_b": url_b, "tf": tf_proc}


def test_torch_replica_frozen_under_load_no_client_errors(stack: dict, golden: dict) -> None:
    """A replica that stops answering while another is up: the calls it holds are moved to the other once
    its health probe fails (within health_interval + health_timeout, 1.5 s here), well inside the 2 s time
    limit they would otherwise wait out as 504s."""
    body = orjson.dumps({"instances": golden["images"][:2]}, option=orjson.OPT_SERIALIZE_NUMPY)
    gw = stack["gw"]
    victim: ManagedProcess = stack["torch_b"]
    try:
        results, frozen_at = load_with_kill(
            gw, "/v1/models/cnn:predict?backend=torch", body, lambda: victim.signal(signal.SIGSTOP), after=300
        )
        statuses = [s for s, _ in results]
        assert set(statuses) == {200}, [r for r in results if r[0] != 200][:5]
        assert {replica for _, replica in results[:frozen_at]} == {stack["url_a"], stack["url_b"]}
        doc = httpx.get(f"{gw}/v1/backends").json()
        by_addr = {r["address"]: r for r in doc["backends"]["torch"]["replicas"]}
        assert by_addr[stack["url_b"]]["in_rotation"] is False
        series = f'gateway_upstream_errors_total{{backend="torch",kind="unavailable",replica="{stack["url_b"]}"}}'
        assert series in httpx.get(f"{gw}/metrics").text  # the calls it held were moved, not timed out
    finally:
        victim.signal(signal.SIGCONT)
    # Awake again: back in rotation (what the next test relies on).
    deadline = time.monotonic() + 20
    while True:
        doc = httpx.get(f"{gw}/v1/backends").json()
        if all(r["in_rotation"] for r in doc["backends"]["torch"]["replicas"]):
            break
        assert time.monotonic() < deadline, doc
        time.sleep(0.2)


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


def _freeze_under_traffic(gw: str, frozen: ManagedProcess, frozen_backend: str, other: str, golden: dict) -> None:
    """A backend that takes calls and never answers (SIGSTOP: a stuck process, a full queue) must cost the
    other backend nothing: the frozen one's calls end in 504 at the upstream time limit, each at its own
    deadline, the other's meanwhile answer at their usual speed, and the frozen one serves again once it
    wakes."""
    body = orjson.dumps({"instances": golden["images"][:2]}, option=orjson.OPT_SERIALIZE_NUMPY)
    frozen_path = f"/v1/models/cnn:predict?backend={frozen_backend}"
    assert httpx.post(f"{gw}{frozen_path}", content=body, timeout=30).status_code == 200
    frozen.signal(signal.SIGSTOP)
    try:
        results: list[tuple[int, str, float]] = []

        def frozen_call() -> None:
            t0 = time.monotonic()
            r = httpx.post(f"{gw}{frozen_path}", content=body, timeout=30)
            results.append((r.status_code, r.json().get("error", ""), time.monotonic() - t0))

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(frozen_call) for _ in range(8)]
            latencies = []
            with httpx.Client(base_url=gw, timeout=30) as client:
                t_end = time.monotonic() + 2.5  # past the 2 s upstream limit the frozen calls are waiting out
                while time.monotonic() < t_end:
                    t0 = time.monotonic()
                    r = client.post(f"/v1/models/cnn:predict?backend={other}", content=body)
                    latencies.append(time.monotonic() - t0)
                    assert r.status_code == 200, r.text
            for f in futures:
                f.result()
        assert len(results) == 8
        for status, error, elapsed in results:
            # Each at its own time limit: none failed early as "unavailable" when the first timed out.
            assert status == 504 and "timed out after 2s" in error, (status, error)
            assert 1.9 < elapsed < 4.0, elapsed
        latencies.sort()
        assert len(latencies) >= 20
        # The other backend's worst call while this one was frozen: nowhere near the 2 s held calls waited.
        assert latencies[-1] < 0.5, latencies[-5:]
        assert httpx.get(f"{gw}/readyz").status_code == 200
    finally:
        frozen.signal(signal.SIGCONT)
    # Awake again: back in rotation after its cool-down and the next probe.
    deadline = time.monotonic() + 20
    while True:
        r = httpx.post(f"{gw}{frozen_path}", content=body, timeout=30)
        if r.status_code == 200:
            break
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
    assert [p["classes"] for p in r.json()["predictions"]] == golden["classes"][:2].tolist()


def test_tf_frozen_torch_keeps_its_latency_and_tf_recovers(stack: dict, golden: dict) -> None:
    _freeze_under_traffic(stack["gw"], stack["tf"], "tf", "torch", golden)


def test_torch_frozen_tf_keeps_its_latency_and_torch_recovers(stack: dict, golden: dict) -> None:
    # torch_a must be the whole torch backend, or the frozen calls move to torch_b and succeed. A test above
    # kills torch_b; when this one runs on its own (pytest -k), it does so here.
    if stack["torch_b"].alive:
        stack["torch_b"].kill()
        deadline = time.monotonic() + 20
        while True:
            doc = httpx.get(f"{stack['gw']}/v1/backends").json()
            if not {r["address"]: r for r in doc["backends"]["torch"]["replicas"]}[stack["url_b"]]["in_rotation"]:
                break
            assert time.monotonic() < deadline, doc
            time.sleep(0.2)
    _freeze_under_traffic(stack["gw"], stack["torch_a"], "torch", "tf", golden)


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
