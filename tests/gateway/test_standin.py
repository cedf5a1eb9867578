"""The gateway as a real process in front of small real stand-in backends (tests/gateway/standin.py):
routing, response shape and headers, error pass-through, timeouts, balancing, ejection and recovery."""

from __future__ import annotations

import time

import httpx
import numpy as np
import orjson
import pytest

from tests.gateway.conftest import Procs, gateway, load_with_kill, standin, unused_target

pytestmark = pytest.mark.integration


def body(classes: list[int], control: float = 0.0, fmt: str = "row") -> bytes:
    x = np.zeros((len(classes), 28, 28, 1), np.float32)
    x[:, 0, 0, 0] = np.asarray(classes) / 10.0
    x[0, 0, 1, 0] = control
    return orjson.dumps({"instances" if fmt == "row" else "inputs": x}, option=orjson.OPT_SERIALIZE_NUMPY)


def fast_health() -> dict[str, str]:
    return {"health_interval_s": "0.3", "eject_cooldown_s": "0.5", "access_log": "false"}


@pytest.fixture
def stack(procs: Procs) -> dict[str, str]:
    _, torch_a, _ = standin(procs, "torch-a")
    _, torch_b, _ = standin(procs, "torch-b")
    _, _, tf_target = standin(procs, "tf", grpc=True)
    assert tf_target
    _, url = gateway(
        procs, torch_urls=f"{torch_a},{torch_b}", tf_grpc_targets=tf_target, timeout_s="0.8", **fast_health()
    )
    return {"gateway": url, "torch_a": torch_a, "torch_b": torch_b}


@pytest.mark.parametrize("fmt", ["row", "columnar"])
def test_same_answer_shape_from_both_backends(stack: dict[str, str], fmt: str) -> None:
    answers = {}
    with httpx.Client(base_url=stack["gateway"]) as c:
        for backend in ("torch", "tf"):
            r = c.post(f"/v1/models/cnn:predict?backend={backend}", content=body([3, 7], fmt=fmt))
            assert r.status_code == 200, r.text
            assert r.headers["x-backend"] == backend
            assert r.headers["x-model-version"] == "1"
            assert float(r.headers["x-upstream-latency-ms"]) > 0
            assert len(r.headers["x-request-id"]) == 32
            answers[backend] = r.json()
    assert answers["torch"] == answers["tf"]
    if fmt == "row":
        assert [p["classes"] for p in answers["tf"]["predictions"]] == [3, 7]
        assert len(answers["tf"]["predictions"][0]["probabilities"]) == 10
    else:
        assert answers["tf"]["outputs"]["classes"] == [3, 7]


def test_header_selects_backend_and_default_applies(stack: dict[str, str]) -> None:
    with httpx.Client(base_url=stack["gateway"]) as c:
        assert c.post("/v1/models/cnn:predict", content=body([1])).headers["x-backend"] == "torch"
        r = c.post("/v1/models/cnn/versions/1:predict", content=body([1]), headers={"X-Backend": "tf"})
        assert r.headers["x-backend"] == "tf" and r.headers["x-model-version"] == "1"


def test_compare_reports_agreement(stack: dict[str, str]) -> None:
    with httpx.Client(base_url=stack["gateway"]) as c:
        doc = c.post("/v1/compare", content=body([2, 4, 9])).json()
    assert doc["partial"] is False and doc["failed"] == []
    assert doc["agreement"]["argmax_agreement"] == 1.0 and doc["agreement"]["max_abs_diff"] == 0.0
    assert doc["agreement"]["argmax_match"] == [True, True, True]
    for name in ("torch", "tf"):
        assert doc["backends"][name]["ok"] and doc["backends"][name]["latency_ms"] > 0
        assert [p["classes"] for p in doc["backends"][name]["response"]["predictions"]] == [2, 4, 9]


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_upstream_errors_pass_through(stack: dict[str, str], backend: str) -> None:
    with httpx.Client(base_url=stack["gateway"], timeout=10) as c:
        r = c.post(f"/v1/models/cnn:predict?backend={backend}", content=body([1], control=0.25))
        assert r.status_code == 400 and r.json() == {"error": "standin rejects this input"}
        r = c.post(f"/v1/models/cnn:predict?backend={backend}", content=body([1], control=0.5))
        assert r.status_code == 500 and r.json() == {"error": "standin internal failure"}
        r = c.post(f"/v1/models/nope:predict?backend={backend}", content=body([1]))
        assert r.status_code == 404 and "Servable not found" in r.json()["error"]
        r = c.post(f"/v1/models/cnn:predict?backend={backend}", content=body([1], control=0.75))
        assert r.status_code == 504 and "timed out" in r.json()["error"]


def test_the_access_log_names_the_replica_that_timed_out(procs: Procs) -> None:
    _, torch_a, _ = standin(procs, "torch-a")
    gw, url = gateway(procs, torch_urls=torch_a, tf_grpc_targets=unused_target(), timeout_s="0.8", access_log="true")
    r = httpx.post(f"{url}/v1/models/cnn:predict", content=body([1], control=0.75), timeout=10)
    assert r.status_code == 504
    deadline = time.monotonic() + 5  # lines are written in batches, within 0.25 s
    while True:
        lines = [orjson.loads(line) for line in gw.log_path.read_text().splitlines() if line.startswith("{")]
        timed_out = [line for line in lines if line.get("status") == 504]
        if timed_out or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [(line["backend"], line["replica"]) for line in timed_out] == [("torch", torch_a)]


def test_least_outstanding_uses_both_replicas(stack: dict[str, str]) -> None:
    with httpx.Client(base_url=stack["gateway"]) as c:
        served = {c.post("/v1/models/cnn:predict", content=body([5])).headers["x-replica"] for _ in range(10)}
    assert served == {stack["torch_a"], stack["torch_b"]}


def test_replica_killed_under_load_no_client_errors_then_probed_back(procs: Procs) -> None:
    a_proc, torch_a, _ = standin(procs, "torch-a")
    _, torch_b, _ = standin(procs, "torch-b")
    _, url = gateway(
        procs, torch_urls=f"{torch_a},{torch_b}", tf_rest_urls=torch_b, tf_protocol="rest", **fast_health()
    )
    payload = body([6])
    results, _ = load_with_kill(url, "/v1/models/cnn:predict", payload, a_proc.kill)
    statuses = {status for status, _ in results}
    assert statuses == {200}, sorted(statuses)

    with httpx.Client(base_url=url) as c:
        replicas = {r["address"]: r for r in c.get("/v1/backends").json()["backends"]["torch"]["replicas"]}
        assert replicas[torch_a]["in_rotation"] is False and replicas[torch_a]["last_error"]
        assert c.get("/readyz").status_code == 200
        # Bring it back on the same port: the active probe re-admits it after the cool-down.
        port = int(torch_a.rsplit(":", 1)[1])
        standin(procs, "torch-a2", rest_port=port)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            replicas = {r["address"]: r for r in c.get("/v1/backends").json()["backends"]["torch"]["replicas"]}
            if replicas[torch_a]["in_rotation"]:
                break
            time.sleep(0.2)
        assert replicas[torch_a]["in_rotation"] is True and replicas[torch_a]["healthy"] is True
        served = {c.post("/v1/models/cnn:predict", content=payload).headers["x-replica"] for _ in range(10)}
        assert torch_a in served
