"""The compat server in-process over a real SavedModel: REST errors, hot swap, queue-full, start-up checks."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from devstack.process import free_port
from serving_core.batching import BatchingParameters, load_batching_parameters
from tests.asgi_client import post_then_hang_up
from tf_serving.compat.app import create_app
from tf_serving.compat.grpc_server import create_grpc_server, numpy_to_tensor, tensor_to_numpy
from tf_serving.compat.model import ModelRegistry
from tf_serving.compat.settings import ServerConfig, Settings, load_server_config
from tf_serving.config import BATCHING_CONFIG, load_model_config, load_monitoring_config

pytestmark = pytest.mark.integration


@pytest.fixture
def repo(model_repository: Path, tmp_path: Path) -> Path:
    """A private copy of the shared repository's TF tree, so tests may add versions to it."""
    dst = tmp_path / "repo"
    shutil.copytree(model_repository / "tensorflow", dst / "tensorflow")
    return dst


def _registry(repo: Path, batching: BatchingParameters | None, poll_s: float = 0.0) -> ModelRegistry:
    settings = Settings(model_repository=repo, file_system_poll_wait_seconds=poll_s, rest_port=1, grpc_port=0)
    config = ServerConfig(load_model_config(), batching, load_monitoring_config())
    return ModelRegistry(settings, config)


@pytest.fixture
async def client(repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    reg = _registry(repo, load_batching_parameters(BATCHING_CONFIG))
    await asyncio.to_thread(reg.start)
    app = create_app(reg.settings.model_copy(update={"max_body_bytes": 1_000_000}), reg)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://compat") as c:
        yield c
    reg.stop()


def _images(golden: dict[str, np.ndarray], n: int) -> list:
    return golden["images"][:n].tolist()


async def test_rest_errors_keep_the_server_serving(client: httpx.AsyncClient, golden: dict[str, np.ndarray]) -> None:
    cases = [
        ("/v1/models/cnn:predict", b"{not json", 400),
        ("/v1/models/cnn:predict", b'{"instances": [[1, 2, 3]]}', 400),
        ("/v1/models/cnn:predict", b'{"instances": [], "inputs": []}', 400),
        ("/v1/models/cnn/labels/stable:predict", b'{"instances": []}', 400),
        ("/v1/models/cnn/versions/7:predict", b"{}", 400),  # body checked first, like TF Serving
        ("/v1/models/cnn:predict", b"[" + b"0," * 600_000 + b"0]", 413),
    ]
    for url, body, status in cases:
        r = await client.post(url, content=body)
        assert r.status_code == status, (url, r.text)
        assert isinstance(r.json()["error"], str) and r.json()["error"]
    for url, needle in (
        ("/v1/models/other:predict", "Latest(other)"),
        ("/v1/models/other/versions/1:predict", "Specific(other, 1)"),  # said Latest(other)
    ):
        r = await client.post(url, json={"instances": _images(golden, 1)})
        assert r.status_code == 404 and needle in r.json()["error"], r.text
    r = await client.post("/v1/models/cnn:predict", json={"instances": _images(golden, 3)})
    assert r.status_code == 200
    assert [p["classes"] for p in r.json()["predictions"]] == golden["classes"][:3].tolist()
    r = await client.get("/monitoring/prometheus/metrics")
    assert ':tensorflow:serving:request_count{model_name="cnn",status="INVALID_ARGUMENT"}' in r.text
    assert ':tensorflow:serving:request_count{model_name="cnn",status="OK"} 1' in r.text


async def test_batch_larger_than_max_batch_size_is_invalid(
    client: httpx.AsyncClient, golden: dict[str, np.ndarray]
) -> None:
    images = np.resize(golden["images"], (33, 28, 28, 1)).tolist()
    r = await client.post("/v1/models/cnn:predict", json={"instances": images})
    assert r.status_code == 400
    assert "larger than maximum input batch size 32" in r.json()["error"]


async def test_chunked_body_is_cut_off_at_the_limit_not_read_whole(client: httpx.AsyncClient) -> None:
    # No Content-Length: the server must count as it reads. 100 chunks of 100 KB against a 1 MB limit.
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(100):
            pulled += 1
            yield b" " * 100_000

    r = await client.post("/v1/models/cnn:predict", content=chunks())
    assert r.status_code == 413 and "exceeds the limit of 1000000 bytes" in r.json()["error"], r.text
    assert pulled <= 12, f"{pulled} of 100 chunks were read before the 413"


async def test_hot_swap_while_serving(repo: Path, golden: dict[str, np.ndarray]) -> None:
    reg = _registry(repo, load_batching_parameters(BATCHING_CONFIG), poll_s=0.2)
    await asyncio.to_thread(reg.start)
    app = create_app(reg.settings, reg)
    statuses: list[int] = []
    versions_seen: set[str] = set()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://compat") as c:

            async def load(stop: asyncio.Event) -> None:
                while not stop.is_set():
                    r = await c.post("/v1/models/cnn:predict", json={"instances": _images(golden, 2)})
                    statuses.append(r.status_code)
                    m = await c.get("/v1/models/cnn/metadata")
                    versions_seen.add(m.json()["model_spec"]["version"])

            stop = asyncio.Event()
            task = asyncio.create_task(load(stop))
            await asyncio.sleep(0.3)
            # Publish version 2 the way the trainer does: written elsewhere, then renamed into place.
            base = repo / "tensorflow" / "cnn"
            shutil.copytree(base / "1", repo / "staging-2")
            os.rename(repo / "staging-2", base / "2")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                st = (await c.get("/v1/models/cnn")).json()["model_version_status"]
                if {e["version"]: e["state"] for e in st} == {"2": "AVAILABLE", "1": "END"}:
                    break
                await asyncio.sleep(0.2)
            else:
                pytest.fail(f"version 2 never replaced version 1: {st}")
            await asyncio.sleep(0.3)
            stop.set()
            await task
            r = await c.get("/v1/models/cnn/versions/1")
            # Reported END after unloading, as TF Serving does (it is not forgotten).
            assert r.status_code == 200 and r.json()["model_version_status"][0]["state"] == "END", r.text
            r = await c.post("/v1/models/cnn/versions/1:predict", json={"instances": _images(golden, 1)})
            assert r.status_code == 404
    finally:
        reg.stop()
    assert statuses and set(statuses) == {200}, statuses
    assert versions_seen == {"1", "2"}


def _slow_batching() -> BatchingParameters:
    # A 4-instance queue whose batches close only after 3 s: 3 queued instances + 2 more is full.
    return BatchingParameters(
        max_batch_size=4, batch_timeout_micros=3_000_000, max_enqueued_batches=1, num_batch_threads=1
    )


async def test_full_queue_answers_503_at_once(repo: Path, golden: dict[str, np.ndarray]) -> None:
    reg = _registry(repo, _slow_batching())
    await asyncio.to_thread(reg.start)
    app = create_app(reg.settings, reg)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://compat") as c:
            first = asyncio.create_task(c.post("/v1/models/cnn:predict", json={"instances": _images(golden, 3)}))
            await asyncio.sleep(0.5)
            t0 = time.perf_counter()
            r = await c.post("/v1/models/cnn:predict", json={"instances": _images(golden, 2)})
            refused_after = time.perf_counter() - t0
            assert r.status_code == 503, r.text
            assert "queue" in r.json()["error"]
            assert refused_after < 2.0  # refused, not queued behind the 3 s batch
            r1 = await first
            assert r1.status_code == 200
            assert len(r1.json()["predictions"]) == 3
    finally:
        reg.stop()


async def test_full_queue_is_unavailable_over_grpc(repo: Path, golden: dict[str, np.ndarray]) -> None:
    reg = _registry(repo, _slow_batching())
    await asyncio.to_thread(reg.start)
    port = free_port()
    server = create_grpc_server(reg, host="127.0.0.1", port=port, max_message_bytes=1 << 24)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)

            def request(n: int) -> predict_pb2.PredictRequest:
                req = predict_pb2.PredictRequest()
                req.model_spec.name = "cnn"
                req.inputs["images"].CopyFrom(numpy_to_tensor(golden["images"][:n]))
                return req

            first = asyncio.ensure_future(stub.Predict(request(3), timeout=30))
            await asyncio.sleep(0.5)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Predict(request(2), timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            resp = await first
            assert resp.model_spec.version.value == 1
            assert tensor_to_numpy(resp.outputs["probabilities"]).shape == (3, 10)
    finally:
        await server.stop(grace=1)
        reg.stop()


async def test_grpc_inputs_refused_from_the_tensor_header(repo: Path, golden: dict[str, np.ndarray]) -> None:
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    reg = _registry(repo, load_batching_parameters(BATCHING_CONFIG))
    await asyncio.to_thread(reg.start)
    port = free_port()
    server = create_grpc_server(reg, host="127.0.0.1", port=port, max_message_bytes=1 << 24)
    await server.start()

    def header_only(shape: list[int], dtype: int = 1) -> tensor_pb2.TensorProto:
        # A shape and no values: TensorFlow would fill such a tensor in, whatever its size.
        dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]
        return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims))

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            cases = [
                ({"images": header_only([1_000_000, 28, 28, 1])}, "Task size 1000000 is larger than maximum"),
                ({"images": header_only([2**40, 28, 28, 1])}, "Task size 1099511627776"),  # was INTERNAL MemoryError
                ({"images": header_only([1, 28, 28, 1], dtype=2)}, "Expects arg[0] to be float but double"),
                ({"images": header_only([1, 784])}, "must have shape [N, 28, 28, 1]"),
                (
                    {"pixels": numpy_to_tensor(golden["images"][:1])},
                    "input tensor alias not found in signature: pixels",
                ),
            ]
            for inputs, needle in cases:
                req = predict_pb2.PredictRequest()
                req.model_spec.name = "cnn"
                for k, t in inputs.items():
                    req.inputs[k].CopyFrom(t)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Predict(req, timeout=30)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (needle, err.value.details())
                assert needle in (err.value.details() or ""), err.value.details()
            # Bytes that are no PredictRequest (or GetModelStatusRequest): the client's mistake, said so.
            # grpcio's own answer to a deserializer's exception is UNKNOWN "Unexpected <class ...>".
            for method in (
                "/tensorflow.serving.PredictionService/Predict",
                "/tensorflow.serving.ModelService/GetModelStatus",
            ):
                raw = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await raw(b"\xff\xff\xff\xff\x0f", timeout=30)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
                assert "is not a valid tensorflow.serving." in (err.value.details() or "")
            # Still serving, and a header-only tensor of an allowed size is zeros, as in TensorFlow.
            req = predict_pb2.PredictRequest()
            req.model_spec.name = "cnn"
            req.inputs["images"].CopyFrom(header_only([2, 28, 28, 1]))
            resp = await stub.Predict(req, timeout=30)
            assert tensor_to_numpy(resp.outputs["probabilities"]).shape == (2, 10)
    finally:
        await server.stop(grace=1)
        reg.stop()


async def test_batching_off_serves_directly(repo: Path, golden: dict[str, np.ndarray]) -> None:
    reg = _registry(repo, None)
    await asyncio.to_thread(reg.start)
    try:
        v, out = await reg.predict("cnn", None, golden["images"][:40])  # no max_batch_size without batching
        assert v == 1
        np.testing.assert_allclose(out["probabilities"], golden["probabilities"][:40], atol=1e-5)
    finally:
        reg.stop()


def test_a_corrupt_new_version_does_not_replace_the_good_one(repo: Path) -> None:
    base = repo / "tensorflow" / "cnn"
    shutil.copytree(base / "1", base / "2")
    with open(base / "2" / "variables" / "variables.data-00000-of-00001", "r+b") as f:
        f.write(b"\0\0\0\0")  # the manifest's sha256 no longer matches
    reg = _registry(repo, None)
    reg.start()
    try:
        status = {e["version"]: e for e in reg.managers["cnn"].status()}
        assert status["2"]["state"] == "END"
        assert "checksum mismatch" in status["2"]["status"]["error_message"]
        # latest:1 wants only version 2, which failed: nothing is available, as in TF Serving.
        assert reg.managers["cnn"].available_versions() == []
    finally:
        reg.stop()


@pytest.fixture
def no_env() -> Iterator[dict[str, str]]:
    yield {k: v for k, v in os.environ.items() if not k.startswith("TF_SERVING_")}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TF_SERVING_REST_PORT": "not-a-port"}, "TF_SERVING_REST_PORT: Input should be a valid integer"),
        ({"TF_SERVING_REST_PORT": "9001", "TF_SERVING_GRPC_PORT": "9001"}, "both 9001"),
        ({"TF_SERVING_BATCHING_PARAMETERS_FILE": "/nonexistent/batching.config"}, "cannot read batching"),
        ({"TF_SERVING_MODEL_CONFIG_FILE": "/nonexistent/models.config"}, "cannot read model config"),
    ],
)
def test_bad_settings_fail_fast_with_one_line(no_env: dict[str, str], env: dict[str, str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tf_serving.compat"],
        env={**no_env, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_settings_defaults_follow_design() -> None:
    s = Settings()
    assert (s.rest_port, s.grpc_port, s.host) == (8501, 8500, "127.0.0.1")
    assert load_server_config(s).batching is not None


def test_app_loads_models_in_its_lifespan(repo: Path, golden: dict[str, np.ndarray]) -> None:
    from fastapi.testclient import TestClient

    settings = Settings(model_repository=repo, file_system_poll_wait_seconds=0, grpc_port=0)
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/models/cnn").json()["model_version_status"][0]["state"] == "AVAILABLE"
        r = c.post("/v1/models/cnn:predict", json={"instances": _images(golden, 1)})
        assert r.status_code == 200
        assert "request_latency_bucket" in c.get("/monitoring/prometheus/metrics").text
        assert c.get("/v1/models/cnn:predict").status_code == 404


def test_metrics_path_absent_when_monitoring_is_off(repo: Path, tmp_path: Path) -> None:
    off = tmp_path / "monitoring.config"
    off.write_text("prometheus_config { enable: false }\n")
    reg = _registry(repo, None)
    reg.config = ServerConfig(reg.config.models, None, load_monitoring_config(off))
    from fastapi.testclient import TestClient

    with TestClient(create_app(reg.settings, reg)) as c:
        r = c.get("/monitoring/prometheus/metrics")
        assert r.status_code == 404 and "error" in r.json()


async def test_rest_deadline_is_504(repo: Path, golden: dict[str, np.ndarray]) -> None:
    reg = _registry(repo, _slow_batching())  # a lone small request waits 3 s for its batch
    await asyncio.to_thread(reg.start)
    app = create_app(reg.settings.model_copy(update={"rest_api_timeout_in_ms": 200}), reg)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://compat") as c:
            r = await c.post("/v1/models/cnn:predict", json={"instances": _images(golden, 1)})
            assert r.status_code == 504 and "timed out" in r.json()["error"]
            # The timed-out instance still holds its queue slot (as in TF Serving); 3 more fill the
            # batch, which then runs at once, so the server still answers within the deadline.
            r = await c.post("/v1/models/cnn:predict", json={"instances": _images(golden, 3)})
            assert r.status_code == 200
    finally:
        reg.stop()


async def test_client_gone_mid_body_is_cancelled_not_internal(repo: Path) -> None:
    reg = _registry(repo, load_batching_parameters(BATCHING_CONFIG))
    await asyncio.to_thread(reg.start)
    app = create_app(reg.settings, reg)
    try:
        # Was: ClientDisconnect escaping as "Exception in ASGI application".
        sent = await post_then_hang_up(app, "/v1/models/cnn:predict")
        assert [m.get("status") for m in sent if m["type"] == "http.response.start"] in ([], [499])
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://compat") as c:
            text = (await c.get("/monitoring/prometheus/metrics")).text
        assert ':tensorflow:serving:request_count{model_name="cnn",status="CANCELLED"} 1' in text
        assert 'status="INTERNAL"' not in text
    finally:
        reg.stop()


async def test_values_outside_0_1_are_accepted_as_tf_serving_does(client: httpx.AsyncClient) -> None:
    # TF Serving checks no value range; the stand-in does not either (the gateway and torch_service
    # enforce the contract's [0, 1]). A 0-255 image is served, with a finite (if meaningless) answer.
    images = np.full((1, 28, 28, 1), 255.0).tolist()
    r = await client.post("/v1/models/cnn:predict", json={"instances": images})
    assert r.status_code == 200, r.text
    probs = np.asarray(r.json()["predictions"][0]["probabilities"], dtype=np.float64)
    assert probs.shape == (10,) and np.isfinite(probs).all()
    r = await client.put("/v1/models/cnn")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"


async def test_a_path_missing_its_trailing_part_is_a_json_404_not_a_redirect(client: httpx.AsyncClient) -> None:
    for path in ("/v1/models", "/v2"):
        r = await client.get(path)
        assert r.status_code == 404 and "error" in r.json(), (path, r.status_code, r.text)
