"""Integration: a real `python -m torch_service` on the shared tiny model, with the project's batching file.

Checks TF Serving's REST API shapes, the Open Inference Protocol, golden predictions, errors, metrics.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from serving_core import contract
from tests.torch_service.conftest import Server, start_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # No batching-file variable: the default (tf_serving/batching.config, the project's one file) is used.
    s = start_server(model_repository, tmp_path_factory.mktemp("logs"))
    yield s
    s.proc.stop(grace=15)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def _probs(doc: dict) -> np.ndarray:
    return np.asarray([p["probabilities"] for p in doc["predictions"]], dtype=np.float32)


# ------------------------------------------------------------------------------------ TF Serving
def test_status(client: httpx.Client) -> None:
    r = client.get("/v1/models/cnn")
    assert r.status_code == 200
    assert r.json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert client.get("/v1/models/cnn/versions/1").json() == r.json()
    # HEAD wherever GET is (a 405 before, whose Allow said GET), the head alone; and the 405's Allow says so.
    head = client.head("/v1/models/cnn")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == r.headers["content-length"]
    assert client.request("PUT", "/v1/models/cnn").headers["allow"] == "GET, HEAD, POST"


def test_metadata(client: httpx.Client) -> None:
    for path in ("/v1/models/cnn/metadata", "/v1/models/cnn/versions/1/metadata"):
        doc = client.get(path).json()
        assert doc["model_spec"] == {"name": "cnn", "signature_name": "", "version": "1"}
        sig = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert sig == contract.signature_def_json()
        assert sig["inputs"]["images"]["tensor_shape"]["dim"][0]["size"] == "-1"


def test_row_predictions_equal_golden(client: httpx.Client, golden: dict[str, np.ndarray]) -> None:
    images = golden["images"][:16]
    r = client.post("/v1/models/cnn:predict", json={"instances": images.tolist()})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert list(doc) == ["predictions"] and len(doc["predictions"]) == 16
    assert set(doc["predictions"][0]) == {"probabilities", "classes"}
    np.testing.assert_allclose(_probs(doc), golden["probabilities"][:16], atol=1e-5, rtol=0)
    assert [p["classes"] for p in doc["predictions"]] == golden["classes"][:16].tolist()


def test_every_golden_image_one_request_each_in_row_and_columnar(
    client: httpx.Client, golden: dict[str, np.ndarray]
) -> None:
    n = min(len(golden["images"]), 64)
    for i in range(n):
        img = golden["images"][i : i + 1]
        body = {"inputs": {"images": img.tolist()}} if i % 2 else {"instances": img.tolist()}
        doc = client.post("/v1/models/cnn/versions/1:predict", json=body).json()
        if i % 2:
            probs, cls = np.asarray(doc["outputs"]["probabilities"]), doc["outputs"]["classes"]
        else:
            probs, cls = _probs(doc), [doc["predictions"][0]["classes"]]
        np.testing.assert_allclose(probs, golden["probabilities"][i : i + 1], atol=1e-5, rtol=0)
        assert cls == [int(golden["classes"][i])]


def test_columnar_and_signature_name(client: httpx.Client, golden: dict[str, np.ndarray]) -> None:
    images = golden["images"][:5]
    body = {"signature_name": "serving_default", "inputs": images.tolist()}
    doc = client.post("/v1/models/cnn:predict", json=body).json()
    assert set(doc) == {"outputs"} and set(doc["outputs"]) == {"probabilities", "classes"}
    np.testing.assert_allclose(doc["outputs"]["probabilities"], golden["probabilities"][:5], atol=1e-5, rtol=0)
    assert doc["outputs"]["classes"] == golden["classes"][:5].tolist()
    # Named-instance row form: [{"images": <image>}, ...]
    doc = client.post("/v1/models/cnn:predict", json={"instances": [{"images": images[0].tolist()}]}).json()
    assert doc["predictions"][0]["classes"] == int(golden["classes"][0])


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"", 400, "Empty request body"),
        (b"{not json", 400, "Malformed JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"instances": []}', 400, "empty"),
        (b'{"instances": [[1, 2, 3]]}', 400, "[N, 28, 28, 1]"),
        (b'{"instances": [[[["a"]]]]}', 400, "nested list of numbers"),
        (b'{"instances": [], "inputs": []}', 400, "either"),
        (b'{"instancez": []}', 400, "(got ['instancez'])"),
        (b'{"signature_name": "other", "instances": [[1]]}', 400, "not found in signature def"),
        (b'{"inputs": {"pixels": [[1]]}}', 400, "Unknown input name"),
        # The contract's [0, 1]: 0-255 pixels get a hint, and 3e38 (NaN probabilities once) is refused.
        (b'{"instances": [' + str([[[255.0]] * 28] * 28).encode() + b"]}", 400, "divided by 255"),
        (b'{"instances": [' + str([[[3e38]] * 28] * 28).encode() + b"]}", 400, "must lie in [0, 1]"),
    ],
)
def test_bad_predict_bodies_are_400_and_service_keeps_serving(
    client: httpx.Client, golden: dict[str, np.ndarray], body: bytes, status: int, needle: str
) -> None:
    r = client.post("/v1/models/cnn:predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert needle in r.json()["error"]
    ok = client.post("/v1/models/cnn:predict", json={"instances": golden["images"][:1].tolist()})
    assert ok.status_code == 200


def test_too_large_batch_is_400(client: httpx.Client) -> None:
    images = np.zeros((33, 28, 28, 1), dtype=np.float32)  # the project file's max_batch_size is 32
    r = client.post("/v1/models/cnn:predict", json={"instances": images.tolist()})
    assert r.status_code == 400 and "is larger than maximum input batch size 32" in r.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status", "needle"),
    [
        ("GET", "/v1/models/cnn/versions/7", 404, "Could not find version 7"),
        ("GET", "/v1/models/other", 404, "Could not find any versions of model other"),
        ("GET", "/v1/models/cnn/versions/0", 400, "positive integer"),
        ("GET", "/v1/models/cnn/versions/7/metadata", 404, "Specific(cnn, 7)"),
        ("POST", "/v1/models/cnn/versions/7:predict", 404, "Specific(cnn, 7)"),
        ("POST", "/v1/models/other:predict", 404, "Latest(other)"),
        ("POST", "/v1/models/other/versions/1:predict", 404, "Specific(other, 1)"),
        ("POST", "/v1/models/cnn:classify", 400, "No classification inputs found in SignatureDef"),
        ("POST", "/v1/models/cnn:explode", 404, "Unsupported verb"),
        ("POST", "/v1/models/cnn", 404, "Malformed request"),
        ("GET", "/nope", 404, "Not Found"),
    ],
)
def test_path_errors(client: httpx.Client, method: str, path: str, status: int, needle: str) -> None:
    body = b'{"instances": [[[[0.0]]]]}' if method == "POST" else None
    r = client.request(method, path, content=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_body_limit_by_content_length_and_by_streamed_bytes(
    model_repository: Path, tmp_path: Path, golden: dict[str, np.ndarray]
) -> None:
    s = start_server(model_repository, tmp_path, {"TORCH_SERVICE_MAX_BODY_BYTES": "20000"})
    try:
        with s.client() as c:
            big = b'{"instances": ' + b" " * 30000 + b"[]}"
            r = c.post("/v1/models/cnn:predict", content=big)
            assert r.status_code == 413 and "exceeds the limit of 20000" in r.json()["error"]
        with s.client() as c:
            # Chunked upload: no Content-Length, so only counting the streamed bytes can catch it.
            r = c.post("/v2/models/cnn/infer", content=iter([b"{" + b" " * 15000, b" " * 15000 + b"}"]))
            assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]
        with s.client() as c:
            ok = c.post("/v1/models/cnn:predict", json={"instances": golden["images"][:1].tolist()})
            assert ok.status_code == 200
    finally:
        s.proc.stop()


def _requests_counted(client: httpx.Client, status: str) -> float:
    m = re.search(
        rf'torch_service_requests_total{{endpoint="predict",status="{status}"}} ([0-9.e+]+)',
        client.get("/metrics").text,
    )
    return float(m.group(1)) if m else 0.0


def test_client_gone_mid_body_is_counted_499_not_500(server: Server, client: httpx.Client) -> None:
    before_500, before_499 = _requests_counted(client, "500"), _requests_counted(client, "499")
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/models/cnn:predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: 100000\r\n\r\n" + b'{"instances": [' + b"0," * 500)
    deadline = time.monotonic() + 10
    while _requests_counted(client, "499") == before_499 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _requests_counted(client, "499") == before_499 + 1
    assert _requests_counted(client, "500") == before_500
    assert (
        client.post("/v1/models/cnn:predict", json={"instances": np.zeros((1, 28, 28, 1)).tolist()}).status_code == 200
    )


# ------------------------------------------------------------------------------------------- OIP
def test_v2_health_and_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/cnn/ready").json() == {"name": "cnn", "ready": True}
    assert client.get("/v2/models/cnn/versions/1/ready").status_code == 200
    assert client.get("/v2/models/cnn/versions/9/ready").status_code == 404  # no such version: absent, not unready
    meta = client.get("/v2/models/cnn").json()
    assert meta["name"] == "cnn" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"probabilities": "FP32", "classes": "INT64"}
    assert client.get("/v2/models/cnn/versions/1").json()["versions"] == ["1"]
    assert client.get("/v2/models/other").status_code == 404
    assert client.get("/v2").json()["name"] == "torch_service"


@pytest.mark.parametrize("nested", [False, True])
def test_v2_infer_equals_golden(client: httpx.Client, golden: dict[str, np.ndarray], nested: bool) -> None:
    images = golden["images"][:4]
    data = images.tolist() if nested else images.ravel().tolist()
    body = {"id": "req-1", "inputs": [{"name": "images", "shape": [4, 28, 28, 1], "datatype": "FP32", "data": data}]}
    r = client.post("/v2/models/cnn/versions/1/infer", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_name"] == "cnn" and doc["model_version"] == "1" and doc["id"] == "req-1"
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["probabilities"]["shape"] == [4, 10] and out["probabilities"]["datatype"] == "FP32"
    assert out["classes"]["shape"] == [4] and out["classes"]["datatype"] == "INT64"
    probs = np.asarray(out["probabilities"]["data"], dtype=np.float32).reshape(4, 10)
    np.testing.assert_allclose(probs, golden["probabilities"][:4], atol=1e-5, rtol=0)
    assert out["classes"]["data"] == golden["classes"][:4].tolist()
    # Requested outputs only
    body["outputs"] = [{"name": "classes"}]
    doc = client.post("/v2/models/cnn/infer", json=body).json()
    assert [o["name"] for o in doc["outputs"]] == ["classes"]


def _infer_body(**tensor: object) -> dict:
    base = {"name": "images", "shape": [1, 28, 28, 1], "datatype": "FP32", "data": [0.0] * 784}
    return {"inputs": [{**base, **tensor}]}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (_infer_body(name="pixels"), "Unknown input"),
        (_infer_body(datatype="INT32"), "datatype FP32"),
        (_infer_body(shape=[1, 28, 28]), "[N, 28, 28, 1]"),
        (_infer_body(shape=[2, 28, 28, 1]), "needs 1568"),
        (_infer_body(data=["x"] * 784), "must be numbers"),
        (_infer_body(data=[True] * 784), "found a boolean"),  # numpy would make it 1.0
        (_infer_body(data=["0.5"] * 784), "found a string"),
        (_infer_body(shape="1,28,28,1"), "'shape'"),
        ({"inputs": []}, "non-empty"),
        ({"inputs": [_infer_body()["inputs"][0]] * 2}, "exactly one"),
        ({**_infer_body(), "outputs": [{"name": "logits"}]}, "Unknown output"),
        (_infer_body(data=[-1.0] * 784), "must lie in [0, 1]"),
    ],
)
def test_v2_infer_errors(client: httpx.Client, body: dict, needle: str) -> None:
    r = client.post("/v2/models/cnn/infer", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]


def _binary_request(images: np.ndarray, **doc: object) -> tuple[bytes, dict[str, str]]:
    """The binary tensor data extension spelled out: JSON, then little-endian float32 bytes."""
    raw = struct.pack(f"<{images.size}f", *images.ravel().tolist())
    tensor = {"name": "images", "shape": list(images.shape), "datatype": "FP32"}
    head = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}], **doc})
    return head + raw, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


def test_v2_binary_tensors_equal_golden(client: httpx.Client, golden: dict[str, np.ndarray]) -> None:
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]
    images = golden["images"][:3]
    # Binary in, JSON out.
    body, headers = _binary_request(images)
    r = client.post("/v2/models/cnn/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    np.testing.assert_allclose(
        np.asarray(out["probabilities"]["data"]).reshape(3, 10), golden["probabilities"][:3], atol=1e-5, rtol=0
    )
    # Binary in, one output binary: the JSON head's length comes back in the same header.
    body, headers = _binary_request(
        images, outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "classes"}]
    )
    r = client.post("/v2/models/cnn/versions/1/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    head_len = int(r.headers["inference-header-content-length"])
    head = orjson.loads(r.content[:head_len])
    probs_meta, classes_meta = head["outputs"]
    assert probs_meta["parameters"] == {"binary_data_size": 3 * 10 * 4} and "data" not in probs_meta
    probs = np.asarray(struct.unpack("<30f", r.content[head_len:])).reshape(3, 10)
    np.testing.assert_allclose(probs, golden["probabilities"][:3], atol=1e-5, rtol=0)
    assert classes_meta["data"] == golden["classes"][:3].tolist()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"Inference-Header-Content-Length": None}, "Inference-Header-Content-Length"),
        ({"Inference-Header-Content-Length": "abc"}, "byte count"),
        ({"Inference-Header-Content-Length": "100000"}, "has only"),
        ({"Inference-Header-Content-Length": "+1"}, "byte count"),
    ],
)
def test_v2_binary_errors(client: httpx.Client, change: dict[str, str | None], needle: str) -> None:
    body, headers = _binary_request(np.zeros((1, 28, 28, 1), np.float32))
    for name, value in change.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    r = client.post("/v2/models/cnn/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]
    # Short by one value: the byte count and the shape disagree.
    r = client.post("/v2/models/cnn/infer", content=body[:-4], headers=_binary_request(np.zeros((1, 28, 28, 1)))[1])
    assert r.status_code == 400 and "bytes follow the JSON header" in r.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/cnn/versions/%C2%B2/infer",  # "²": str.isdigit() says yes, int() says no
        "/v1/models/cnn/versions/%C2%B2:predict",
        "/v2/models/cnn/versions/" + "9" * 5000 + "/infer",
    ],
)
def test_non_ascii_or_huge_versions_are_400(client: httpx.Client, path: str) -> None:
    r = client.post(path, content=_binary_request(np.zeros((1, 28, 28, 1), np.float32))[0])
    assert r.status_code == 400, r.text
    assert "Model version must be a positive integer" in r.json()["error"]


# --------------------------------------------------------------------------------- metrics, docs
def test_metrics(client: httpx.Client, golden: dict[str, np.ndarray]) -> None:
    client.post("/v1/models/cnn:predict", json={"instances": golden["images"][:1].tolist()})
    text = client.get("/metrics").text
    count = float(re.search(r"^torch_service_request_latency_seconds_count (\S+)$", text, re.M)[1])  # type: ignore[index]
    assert count >= 1
    assert re.search(r"^torch_service_request_latency_seconds_sum \S+$", text, re.M)
    assert re.search(r'^torch_service_requests_total\{endpoint="predict",status="200"\} \S+$', text, re.M)
    assert re.search(r'^torch_service_requests_total\{endpoint="predict",status="400"\} \S+$', text, re.M)
    for name in (
        "torch_service_queue_seconds_bucket",
        "torch_service_inference_seconds_bucket",
        "torch_service_batch_size_bucket",
        "torch_service_in_flight_requests",
        "torch_service_queued_instances",
    ):
        assert name in text
    assert 'torch_service_model_version_available{model="cnn",version="1"} 1.0' in text
    assert 'torch_service_model_latest_version{model="cnn"} 1.0' in text


def test_openapi_docs(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert "/v2/models/{name}/infer" in spec["paths"]
    assert "/v1/models/{model_path}" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_v2_binary_request_sent_gzip_compressed(client: httpx.Client, golden: dict[str, np.ndarray]) -> None:
    # tritonclient's request_compression_algorithm="gzip": the whole body (JSON head and tensor bytes)
    # compressed, Inference-Header-Content-Length counting the uncompressed head. Was a 400 ("Malformed JSON").
    import gzip

    body, headers = _binary_request(golden["images"][:3])
    packed = gzip.compress(body)
    r = client.post("/v2/models/cnn/infer", content=packed, headers={**headers, "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["classes"]["data"] == golden["classes"][:3].tolist()
    r = client.post("/v2/models/cnn/infer", content=body, headers={**headers, "Content-Encoding": "deflate"})
    assert r.status_code == 415 and "gzip" in r.json()["error"]
