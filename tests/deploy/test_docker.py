"""Tests that need Docker: `docker compose config`, and the whole stack built, started, used and removed.

Skipped with the reason where the compose plugin or a Docker engine is missing (CI, this machine);
on a host with both they run unchanged. The end-to-end test uses the CPU override unless the
engine has the nvidia runtime, publishes every port on a free host port, and always tears down
the project it created (containers, network, the models volume).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.process import free_port
from tests.deploy.compose_files import COMPOSE, COMPOSE_CPU, ROOT


def _compose_available() -> str | None:
    """None when `docker compose` works, else the reason it does not."""
    try:
        out = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return f"docker CLI unusable: {exc}"
    if out.returncode != 0:
        first_line = (out.stderr or out.stdout).strip().splitlines()[:1]
        return f"the docker compose plugin is not installed ({' '.join(first_line)[:120]})"
    return None


def _engine() -> Any:
    """A docker.DockerClient that answered ping, or pytest.skip with the reason."""
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:  # the docker package raises several types for "no engine"
        pytest.skip(f"no Docker engine answers: {exc}")
    return client


@pytest.fixture(scope="module")
def compose_cli() -> None:
    reason = _compose_available()
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_CPU]], ids=["gpu", "cpu"])
def test_docker_compose_config_accepts_the_files(compose_cli: None, files: list) -> None:
    args = [a for f in files for a in ("-f", str(f))]
    out = subprocess.run(
        ["docker", "compose", *args, "--profile", "loadtest", "--profile", "monitoring", "config", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    model = json.loads(out.stdout)
    assert {"trainer", "tf_serving", "torch_service", "gateway", "loadtest"} <= set(model["services"])
    tf_deploy = model["services"]["tf_serving"].get("deploy") or {}
    has_gpu = bool(tf_deploy.get("resources", {}).get("reservations", {}).get("devices"))
    assert has_gpu == (COMPOSE_CPU not in files)


def _post(url: str, body: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def stack(compose_cli: None) -> Iterator[dict[str, Any]]:
    client = _engine()
    gpu = "nvidia" in (client.info().get("Runtimes") or {})
    files = [COMPOSE] if gpu else [COMPOSE, COMPOSE_CPU]
    project = f"cnnserving-test-{uuid.uuid4().hex[:8]}"
    ports = {
        "GATEWAY_HOST_PORT": free_port(),
        "TORCH_SERVICE_HOST_PORT": free_port(),
        "TF_SERVING_REST_HOST_PORT": free_port(),
        "TF_SERVING_GRPC_HOST_PORT": free_port(),
    }
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "IMAGE_TAG": project}
    base = ["docker", "compose", *[a for f in files for a in ("-f", str(f))], "-p", project]
    try:
        up = subprocess.run(
            [*base, "up", "-d", "--build"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400
        )
        if up.returncode != 0:
            pytest.fail(f"docker compose up failed:\n{up.stderr[-4000:]}\n{_logs(base, env)}")
        try:
            _wait_healthy(client, project, ("tf_serving", "torch_service", "gateway"), timeout=1200)
        except AssertionError as exc:
            pytest.fail(f"{exc}\n{_logs(base, env)}")
        yield {"client": client, "project": project, "ports": ports, "gpu": gpu}
    finally:
        subprocess.run(
            [*base, "down", "--volumes", "--remove-orphans", "--rmi", "local"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=600,
        )


def _logs(base: list[str], env: dict[str, str]) -> str:
    out = subprocess.run([*base, "logs", "--tail", "40"], cwd=ROOT, env=env, capture_output=True, text=True)
    return out.stdout[-6000:]


def _containers(client: Any, project: str) -> dict[str, Any]:
    found = client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})
    return {c.labels["com.docker.compose.service"]: c for c in found}


def _wait_healthy(client: Any, project: str, services: tuple[str, ...], timeout: float) -> None:
    """Poll the engine until every service is healthy; fail at once if the trainer or a service dies.
    (Not `up --wait`: how it treats the one-shot trainer has changed between Compose releases.)"""
    deadline = time.monotonic() + timeout
    while True:
        containers = _containers(client, project)
        trainer = containers.get("trainer")
        if trainer is not None:
            state = trainer.attrs["State"]
            assert not (state["Status"] == "exited" and state["ExitCode"] != 0), f"trainer failed: {state}"
        health = {}
        for name in services:
            c = containers.get(name)
            state = c.attrs["State"] if c is not None else {}
            assert state.get("Status") not in ("exited", "dead"), f"{name} stopped: {state}"
            health[name] = (state.get("Health") or {}).get("Status")
        if all(h == "healthy" for h in health.values()):
            return
        assert time.monotonic() < deadline, f"not healthy after {timeout:.0f}s: {health}"
        time.sleep(5)


@pytest.mark.docker
@pytest.mark.slow
def test_compose_stack_serves_predictions_end_to_end(stack: dict[str, Any]) -> None:
    containers = _containers(stack["client"], stack["project"])
    assert {"trainer", "tf_serving", "torch_service", "gateway"} <= set(containers)
    trainer = containers["trainer"].attrs["State"]
    assert trainer["Status"] == "exited" and trainer["ExitCode"] == 0
    for name in ("tf_serving", "torch_service", "gateway"):
        state = containers[name].attrs["State"]
        assert state["Health"]["Status"] == "healthy", (name, state)
        # The app images run as a non-root user.
        if name != "tf_serving":
            assert containers[name].attrs["Config"]["User"] not in ("", "root", "0"), name

    gateway = f"http://127.0.0.1:{stack['ports']['GATEWAY_HOST_PORT']}"
    images = [[[[((i * 7 + r * 3 + c) % 11) / 10.0] for c in range(28)] for r in range(28)] for i in range(4)]
    answers = {}
    for backend in ("torch", "tf"):
        doc = _post(f"{gateway}/v1/models/cnn:predict?backend={backend}", {"instances": images})
        preds = doc["predictions"]
        assert len(preds) == 4
        for p in preds:
            assert len(p["probabilities"]) == 10 and abs(sum(p["probabilities"]) - 1.0) < 1e-4
        answers[backend] = [p["classes"] for p in preds]
    # Same weights in both artifacts (the trainer proved parity), so the same classes.
    assert answers["torch"] == answers["tf"]

    # The backends answer directly on their published ports too.
    for key in ("TORCH_SERVICE_HOST_PORT", "TF_SERVING_REST_HOST_PORT"):
        with urllib.request.urlopen(f"http://127.0.0.1:{stack['ports'][key]}/v1/models/cnn", timeout=10) as resp:
            assert '"AVAILABLE"' in resp.read().decode().replace(" ", ""), key
