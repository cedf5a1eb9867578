"""What the report attributes to a target must be that target's: wrong answers are failed requests
(when the golden predictions are the served version's), and server-side figures come from the servers
the requests went to (a gateway's own backends, asked of the gateway), or are n/a with a warning.

Real servers on loopback throughout: tests/loadtest/fake_server.py, tests/gateway/standin.py and
`python -m gateway`; the load tester runs as the CLI does.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from devstack.process import ManagedProcess, free_port
from gateway.loadtest.cli import main
from gateway.loadtest.data import ImageSet, build_bodies
from gateway.loadtest.engine import StepSpec, run_step_inline
from gateway.loadtest.targets import Endpoints, Target, resolve

ROOT = Path(__file__).resolve().parents[2]


def _cli(tmp_path: Path, *args: str) -> list[str]:
    return [
        "--report-dir",
        str(tmp_path / "reports"),
        "--duration",
        "1",
        "--rounds",
        "2",
        "--warmup",
        "0.3",
        "--concurrency",
        "2",
        "--no-progress",
        *args,
    ]


def _report(tmp_path: Path) -> tuple[dict, Path]:
    folder = max((tmp_path / "reports").iterdir())
    return json.loads((folder / "report.json").read_text()), folder


# -- wrong answers ------------------------------------------------------------------------------------


def test_wrong_answers_are_failed_requests_and_fail_the_error_rate_gate(tmp_path, fake_server, synthetic_repo, capsys):
    # Well-formed answers, wrong classes (every class shifted by one); the server serves version 1, the
    # version of the golden predictions in the repository.
    url = fake_server("--shift", "1")
    rc = main(_cli(tmp_path, "--targets", "torch", "--torch-url", url, "--resources", "none", "--fail-error-rate", "0"))
    out = capsys.readouterr().out
    assert rc == 1, out
    report, folder = _report(tmp_path)
    t = report["groups"][0]["targets"]["torch"]
    assert t["golden_check"]["counted"] and t["golden_check"]["version"] == 1
    assert t["failed"] == t["requests"] > 0 and t["ok"] == 0
    assert t["errors"] == {"wrong_answer": t["requests"]} and t["wrong_answers"] == t["requests"]
    assert t["error_rate"] == 1.0 and t["golden_agreement"] == 0.0
    assert report["failed_requests"] == t["failed"] and report["passed"] is False
    assert report["threshold_failures"] and "wrong_answer=" in report["threshold_failures"][0]
    assert "GATE FAILED: torch: error rate 1.0000 > 0.0 (wrong_answer=" in out
    assert "golden predictions of version 1" in out
    assert "wrong_answer" in " ".join(s for step in report["steps"] for s in step["error_samples"])
    html = (folder / "report.html").read_text()
    assert "wrong_answer=" in html and "golden predictions of the served version" in html
    row = next(csv.DictReader((folder / "summary.csv").open()))
    assert row["wrong_answers"] == row["failed"] == row["requests"] and row["golden_counted"] == "True"


def test_golden_predictions_of_another_version_are_not_held_against_the_answers(
    tmp_path, fake_server, synthetic_repo, capsys
):
    # The server says it serves version 2; the repository's golden predictions are version 1's: their
    # disagreement is no failure, and the report says that it was not checked.
    url = fake_server("--shift", "1", "--version", "2")
    rc = main(_cli(tmp_path, "--targets", "torch", "--torch-url", url, "--resources", "none", "--rounds", "1"))
    out = capsys.readouterr().out
    assert rc == 0, out
    report, folder = _report(tmp_path)
    t = report["groups"][0]["targets"]["torch"]
    assert t["failed"] == 0 and t["golden_agreement"] == 0.0 and not t["golden_check"]["counted"]
    assert report["model"]["served"]["torch"] == [2]
    assert "serves version 2" in t["golden_check"]["reason"]
    assert any("not counted as failed requests" in w and "serves version 2" in w for w in report["warnings"])
    assert "not counted as failed requests" in out
    assert "not checked" in (folder / "report.html").read_text()


def test_labels_are_not_the_judge_only_the_golden_predictions_are(fake_server):
    # A model that is right by its golden predictions but misses some labels (as any real model does)
    # has no wrong answers; accuracy shows the misses.
    n = 40
    labels = (np.arange(n) % 10).astype(np.int64)
    images = np.random.default_rng(0).random((n, 28, 28, 1), dtype=np.float32) * 0.05
    images[:, 0, 0, 0] = labels / 10.0  # fake_server answers this class
    missed = labels.copy()
    missed[::4] = (missed[::4] + 1) % 10  # a quarter of the labels disagree with the model
    bodies = build_bodies(ImageSet(images, missed, labels.copy(), "synthetic", 1), 1, 0, 32)
    url = fake_server()
    spec = StepSpec(Target("torch", "rest", (url,)), "closed", concurrency=2, requests=60, check_golden=True)
    res = run_step_inline(spec, bodies)
    assert res["failed"] == 0 and res["ok"] == 60
    assert res["golden_agree"] == res["golden_checked"] == 60 and res["correct"] < 60
    wrong = run_step_inline(spec, build_bodies(ImageSet(images, labels, missed, "synthetic", 1), 1, 0, 32))
    assert wrong["errors"].get("wrong_answer", 0) > 0 and wrong["ok"] + wrong["failed"] == 60


# -- server-side figures ------------------------------------------------------------------------------


def test_server_figures_from_a_server_that_did_not_see_the_requests_are_not_reported(
    tmp_path, fake_server, synthetic_repo, capsys
):
    # The metrics endpoint counts one predict in ten, as a server other than the one under load
    # (or not only it) would: its latency is not this target's.
    url = fake_server("--count-every", "10", "--delay-ms", "1")
    rc = main(_cli(tmp_path, "--targets", "torch", "--torch-url", url, "--resources", "none"))
    out = capsys.readouterr().out
    assert rc == 0, out
    report, folder = _report(tmp_path)
    t = report["groups"][0]["targets"]["torch"]
    assert t["server_mean_ms"] is None and t["other_mean_ms"] is None
    assert t["server_unattributable_steps"] == 2 and "request counter grew by" in t["server_unattributable_reason"]
    assert all(s["server"] is None and s["server_unattributable"] for s in report["steps"])
    assert any("not attributable in 2 of 2 rounds" in w for w in report["warnings"])
    assert "not attributable" in out and "n/a!" in out
    assert "rounds not attributable" in (folder / "report.html").read_text()


def test_gateway_sources_fall_back_only_to_given_addresses():
    from gateway.loadtest.discovery import Backend, attribute
    from gateway.loadtest.targets import EXPLICIT_TORCH

    target = resolve("gateway-torch", Endpoints(gateway_url="http://127.0.0.1:1"))
    assert target.metrics_urls == () and target.status_urls == () and target.ports == ()  # asked at run time
    # The gateway's replica is not reachable from here (port 9: nothing listens), nothing was given:
    # n/a, with a warning, and certainly not the default 8080.
    down = {"torch": Backend("rest", ("http://127.0.0.1:9",), (3,))}
    t, warnings = attribute(target, Endpoints(gateway_url="http://127.0.0.1:1"), down, None)
    assert t.metrics_urls == () and t.server_source == "none" and t.replica_versions == (3,)
    assert warnings and "not reachable from here" in warnings[0] and "8080" not in warnings[0]
    # ... unless the user named the servers: then those, with a warning that says so.
    given = Endpoints(
        torch_urls=("http://127.0.0.1:7",), gateway_url="http://127.0.0.1:1", explicit=frozenset({EXPLICIT_TORCH})
    )
    t, warnings = attribute(target, given, down, None)
    assert t.metrics_urls == ("http://127.0.0.1:7/metrics",) and t.server_source == "given"
    assert warnings and "as given" in warnings[0]
    # The gateway did not answer at all, nothing given: n/a.
    t, warnings = attribute(target, Endpoints(gateway_url="http://127.0.0.1:1"), None, "GET /v1/backends failed")
    assert t.metrics_urls == () and t.replica_versions is None and "GET /v1/backends failed" in warnings[0]


# -- through a real gateway ----------------------------------------------------------------------------


def _start(tmp_path: Path, name: str, module: str, ready_url: str, env: dict[str, str], args=()) -> ManagedProcess:
    proc = ManagedProcess.python_module(
        name, module, ready_url=ready_url, log_dir=tmp_path / "logs", env=env, args=list(args), cwd=ROOT
    ).start()
    return proc


@pytest.fixture
def stack_behind_gateway(tmp_path, fake_server, synthetic_repo) -> Iterator[dict[str, str]]:
    """A gateway (with API keys) on torch = a fake REST server exporting torch's metric, and
    tf = the gRPC+REST stand-in (one process), all on free ports; none on the default ones."""
    torch = fake_server("--delay-ms", "1")
    rest_port, grpc_port, gw_port = free_port(), free_port(), free_port()
    quiet = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    procs = []
    try:
        tf = _start(
            tmp_path,
            "standin",
            "tests.gateway.standin",
            f"http://127.0.0.1:{rest_port}/v1/models/cnn",
            quiet,
            ["--rest-port", str(rest_port), "--grpc-port", str(grpc_port), "--name", "tf"],
        )
        procs.append(tf)
        tf.wait_ready(90)
        gw = _start(
            tmp_path,
            "gateway",
            "gateway",
            f"http://127.0.0.1:{gw_port}/healthz",
            {
                **quiet,
                "GATEWAY_HOST": "127.0.0.1",
                "GATEWAY_PORT": str(gw_port),
                "GATEWAY_TORCH_URLS": torch,
                "GATEWAY_TORCH_WIRE": "json",
                "GATEWAY_TF_PROTOCOL": "grpc",
                "GATEWAY_TF_GRPC_TARGETS": f"127.0.0.1:{grpc_port}",
                # Its REST setting names nothing that runs: the load test must not need it.
                "GATEWAY_TF_REST_URLS": f"http://127.0.0.1:{free_port()}",
                "GATEWAY_API_KEYS": "k-one",
                "MODEL_REPOSITORY": str(synthetic_repo),
            },
        )
        procs.append(gw)
        gw.wait_ready(90)
        base = f"http://127.0.0.1:{gw_port}"
        deadline = time.monotonic() + 30
        while True:  # until the gateway's probes have seen both backends' versions
            doc = httpx.get(f"{base}/v1/backends", headers={"Authorization": "Bearer k-one"}, timeout=5).json()
            if all(r["loaded_version"] for b in doc["backends"].values() for r in b["replicas"]):
                break
            assert time.monotonic() < deadline, doc
            time.sleep(0.2)
        yield {
            "gateway": base,
            "torch": torch,
            "tf_rest": f"http://127.0.0.1:{rest_port}",
            "tf_grpc_port": str(grpc_port),
        }
    finally:
        for p in reversed(procs):
            p.stop(10)


@pytest.mark.integration
@pytest.mark.slow
def test_via_gateway_figures_are_the_gateways_backends(tmp_path, stack_behind_gateway, fake_server, monkeypatch):
    s = stack_behind_gateway
    # Another stack, where this shell's variables point: a different version, and busy with nothing.
    decoy = fake_server("--version", "7")
    monkeypatch.setenv("GATEWAY_TORCH_URLS", decoy)
    monkeypatch.setenv("GATEWAY_TF_REST_URLS", decoy)
    monkeypatch.delenv("GATEWAY_TF_GRPC_TARGETS", raising=False)
    monkeypatch.setenv("LOADTEST_API_KEY", "k-one")  # /v1/backends wants it as the predicts do
    rc = main(_cli(tmp_path, "--via-gateway", s["gateway"], "--targets", "torch,tf", "--resources", "psutil"))
    report, _ = _report(tmp_path)
    assert rc == 0, (report["warnings"], report["threshold_failures"])
    assert report["model"]["served"] == {"gateway-torch": [1], "gateway-tf": [1]}  # not the decoy's 7
    g = report["groups"][0]["targets"]
    # The fake torch server counts every predict: its latency is attributable, and it is there.
    assert g["gateway-torch"]["server_mean_ms"] is not None
    torch_side = report["targets"]["gateway-torch"]["server_side"]
    assert torch_side["source"] == "gateway"
    assert torch_side["metrics_urls"] == [f"{s['torch']}/metrics"]
    assert torch_side["ports"] == [int(s["torch"].rsplit(":", 1)[1])]
    tf_side = report["targets"]["gateway-tf"]["server_side"]
    # TF over gRPC: its REST port found as the stand-in process's other listening port.
    assert tf_side["metrics_urls"] == [f"{s['tf_rest']}/monitoring/prometheus/metrics"]
    assert tf_side["ports"] == [int(s["tf_grpc_port"])]
    assert g["gateway-torch"]["server_unattributable_steps"] == 0
    assert g["gateway-torch"]["resources"]["source"] == "psutil"
    assert g["gateway-torch"]["resources"]["cpu_percent_mean"] is not None
    assert g["gateway-tf"]["server_mean_ms"] is None  # the stand-in exports no TF metric: n/a, not the decoy's
    for name in ("gateway-torch", "gateway-tf"):
        assert g[name]["golden_check"]["counted"], g[name]["golden_check"]
        assert g[name]["failed"] == 0 and g[name]["golden_agreement"] == 1.0
    assert decoy not in json.dumps(report["targets"])


def test_a_step_is_attributed_only_when_the_servers_count_matches_the_clients():
    from gateway.loadtest.server_metrics import Snapshot, step_server

    before = Snapshot(1.0, 1000)
    ours = step_server(before, Snapshot(1.5, 1100), answered=100, sent=100)
    assert ours == ({"requests": 100, "mean_ms": 5.0}, None)
    # The reviewer's case: 2 requests counted by "the" server while 13,664 were answered.
    figures, why = step_server(before, Snapshot(1.1, 1002), answered=13_664, sent=13_664)
    assert figures is None and "grew by 2 while 13664" in why
    # Much more than was sent: someone else's traffic is in there too.
    figures, why = step_server(before, Snapshot(9.0, 5000), answered=100, sent=100)
    assert figures is None and "other traffic" in why
    assert step_server(None, Snapshot(1.0, 5), answered=3, sent=3) == (None, None)  # no metric: plain n/a


def test_a_remote_gateways_loopback_backends_are_not_this_machines(fake_server):
    from gateway.loadtest.discovery import Backend, attribute

    # Something answers on this machine's loopback port, but the gateway (TEST-NET-1: not this
    # machine) means its own loopback: nothing here may stand in for it.
    here = fake_server()
    remote = Endpoints(gateway_url="http://192.0.2.1:8000")
    target = resolve("gateway-torch", remote)
    t, warnings = attribute(target, remote, {"torch": Backend("rest", (here,), (1,))}, None)
    assert t.metrics_urls == () and t.ports == () and not t.docker_ok
    assert warnings and "not reachable from here" in warnings[0]
    # The same gateway on this machine: that server is its replica, with its metrics and process.
    local = Endpoints(gateway_url="http://127.0.0.1:8000")
    t, warnings = attribute(target, local, {"torch": Backend("rest", (here,), (1,))}, None)
    assert t.metrics_urls == (f"{here}/metrics",) and t.ports == (int(here.rsplit(":", 1)[1]),) and not warnings


def test_a_server_that_answers_no_http_is_unattributable_not_a_crash() -> None:
    # An HTTP/2-only or non-HTTP listener (a gRPC port given as a REST URL, say) answers bytes that
    # http.client refuses with BadStatusLine, which is no OSError: the probes raised it out of the run.
    import socket
    import threading

    from gateway.loadtest import discovery
    from gateway.loadtest.runner import _status

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(4096)
                    conn.sendall(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00garbage\r\n\r\n")  # an HTTP/2 SETTINGS frame

        threading.Thread(target=serve, daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/models/cnn"
        assert discovery._answers_http(url) is False
        assert discovery._is_tf_status(url) is False
        assert _status(url) is None
