"""Smoke test against the real servers: torch_service and the TF-Serving-compatible server (REST + gRPC)
on free loopback ports over the shared `model_repository`, with a tiny default-style comparison."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.process import ManagedProcess, free_port
from gateway.loadtest.cli import main

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    for main_file in ("torch_service/__main__.py", "tf_serving/compat/__main__.py"):
        if not (ROOT / main_file).is_file():
            pytest.skip(f"{main_file} does not exist yet")
    logs = tmp_path_factory.mktemp("loadtest_stack_logs")
    ts, rest, grpc = free_port(), free_port(), free_port()
    common = {"MODEL_REPOSITORY": str(model_repository), "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs = [
        ManagedProcess.python_module(
            "torch_service",
            "torch_service",
            ready_url=f"http://127.0.0.1:{ts}/v2/health/ready",
            log_dir=logs,
            env={**common, "TORCH_SERVICE_PORT": str(ts)},
            cwd=ROOT,
        ),
        ManagedProcess.python_module(
            "tf_compat",
            "tf_serving.compat",
            ready_url=f"http://127.0.0.1:{rest}/v1/models/cnn",
            log_dir=logs,
            env={
                **common,
                "TF_SERVING_REST_PORT": str(rest),
                "TF_SERVING_GRPC_PORT": str(grpc),
                "TF_SERVING_FILE_SYSTEM_POLL_WAIT_SECONDS": "0",
            },
            cwd=ROOT,
            ready_body='"AVAILABLE"',
        ),
    ]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready(180)
        yield {"torch": f"http://127.0.0.1:{ts}", "tf": f"http://127.0.0.1:{rest}", "grpc": f"127.0.0.1:{grpc}"}
    finally:
        for p in procs:
            p.stop(10)


def test_default_comparison_against_real_backends(stack, model_repository, tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_REPOSITORY", str(model_repository))
    rc = main(
        [
            "--report-dir",
            str(tmp_path),
            "--torch-url",
            stack["torch"],
            "--tf-rest-url",
            stack["tf"],
            "--tf-grpc-target",
            stack["grpc"],
            "--duration",
            "1.5",
            "--rounds",
            "2",
            "--warmup",
            "1",
            "--concurrency",
            "2",
            "--no-progress",
            "--name",
            "smoke",
        ]
    )
    report = json.loads(next(tmp_path.iterdir()).joinpath("report.json").read_text())
    assert rc == 0, (report["invalid_reasons"], report["verdict"])
    assert report["failed_requests"] == 0 and report["valid"]
    group = report["groups"][0]
    assert set(group["targets"]) == {"torch", "tf", "tf-grpc"}
    for name, t in group["targets"].items():
        assert t["ok"] > 0, name
        # Both exports predict the golden classes on every image, under load, over REST and gRPC.
        assert t["golden_agreement"] == 1.0, name
        # Both servers export their request-latency histograms: the breakdown is not "n/a".
        assert t["server_mean_ms"] is not None and 0 < t["server_mean_ms"] < t["latency_ms"]["mean"] * 1.5, name
    assert all(a["rate"] == 1.0 for a in group["agreement"].values())
    assert report["model"]["served"]["torch"] and report["model"]["served"]["tf"]
