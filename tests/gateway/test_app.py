"""The gateway app in-process (TestClient): auth, body cap, request ids, routing errors, docs.

Backends point at loopback ports nobody listens on, which is also what 'unreachable' must look like.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from gateway.app import create_app
from gateway.settings import Settings
from tests.asgi_client import post_then_hang_up
from tests.gateway.conftest import unused_target, unused_url

IMG = np.zeros((1, 28, 28, 1)).tolist()


def make_client(**overrides: object) -> TestClient:
    settings = Settings(torch_urls=[unused_url()], tf_grpc_targets=[unused_target()], health_timeout_s=0.2, **overrides)  # type: ignore[arg-type]
    return TestClient(create_app(settings))


@pytest.fixture
def client() -> Iterator[TestClient]:
    with make_client(max_batch_size=8, max_body_bytes=200_000, max_image_bytes=50_000) as c:
        yield c


@pytest.fixture
def keyed() -> Iterator[TestClient]:
    with make_client(api_keys=["s3cret", "other-key"]) as c:
        yield c


def test_health_ready_and_backends_when_nothing_is_up(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["error"] == "no backend is ready"
    doc = client.get("/v1/backends").json()
    assert set(doc["backends"]) == {"torch", "tf"}
    assert doc["backends"]["tf"]["protocol"] == "grpc"
    assert (doc["backends"]["torch"]["protocol"], doc["backends"]["torch"]["wire"]) == ("rest", "binary")
    assert doc["backends"]["torch"]["replicas"][0]["healthy"] is False


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_unreachable_backend_is_503_with_error(client: TestClient, backend: str) -> None:
    r = client.post(f"/v1/models/cnn:predict?backend={backend}", json={"instances": IMG})
    assert r.status_code == 503
    assert r.json()["error"].startswith(f"{backend} backend unavailable")


def test_compare_with_both_down_says_why_for_each(client: TestClient) -> None:
    r = client.post("/v1/compare", json={"instances": IMG})
    doc = r.json()
    assert r.status_code == 503 and doc["failed"] == ["torch", "tf"] and doc["partial"] is False
    assert "torch:" in doc["error"] and "tf:" in doc["error"]
    assert doc["backends"]["torch"]["ok"] is False and "unavailable" in doc["backends"]["tf"]["error"]


@pytest.mark.parametrize("backend", ["torch", "tf"])
@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"instances": np.zeros((1, 28, 28)).tolist()}, 400, "must have shape [N, 28, 28, 1]"),
        (
            {"instances": np.zeros((9, 28, 28, 1)).tolist()},
            400,
            "Task size 9 is larger than maximum input batch size 8",
        ),
        ({"inputs": [[["x"]]]}, 400, "nested list of numbers"),
        ({"instance": IMG}, 400, "Missing 'instances' or 'inputs' key in request body (got ['instance'])"),
        ({"instances": IMG, "signature_name": "nope"}, 400, "not found in signature def"),
    ],
)
def test_bad_input_same_error_for_both_backends(
    client: TestClient, backend: str, body: dict, status: int, fragment: str
) -> None:
    r = client.post(f"/v1/models/cnn:predict?backend={backend}", content=orjson.dumps(body))
    assert r.status_code == status and fragment in r.json()["error"]


def test_bad_version_backend_and_json(client: TestClient) -> None:
    r = client.post("/v1/models/cnn/versions/x:predict", json={"instances": IMG})
    assert r.status_code == 400 and "positive integer" in r.json()["error"]
    r = client.post("/v1/models/cn%20n:predict", json={"instances": IMG})
    assert r.status_code == 404 and "Servable not found" in r.json()["error"]
    r = client.post("/v1/compare?version=0", json={"instances": IMG})
    assert r.status_code == 400 and "positive integer" in r.json()["error"]
    # "²" passes str.isdigit() but not int(): a 400 like any other bad version, not a 500.
    # Above int64 (TF Serving's version type): a 400, not a 500 from building the gRPC request.
    for path in (
        "/v1/models/cnn/versions/%C2%B2:predict",
        "/v1/compare?version=%C2%B2",
        f"/v1/models/cnn/versions/{2**63}:predict?backend=tf",
        f"/v1/compare?version={2**63}",
    ):
        r = client.post(path, json={"instances": IMG})
        assert r.status_code == 400 and "positive integer" in r.json()["error"], (path, r.text)
    r = client.post("/v1/models/cnn:predict", json={"instances": IMG}, headers={"X-Backend": "onnx"})
    assert r.status_code == 400 and "unknown backend 'onnx'" in r.json()["error"]
    # Whitespace around a header value is not part of it: " tf " is tf (here: unreachable, so a 503).
    r = client.post("/v1/models/cnn:predict", json={"instances": IMG}, headers={"X-Backend": "tf \t"})
    assert r.status_code == 503 and "tf backend unavailable" in r.json()["error"], r.text
    r = client.post("/v1/models/cnn:predict", content=b'{"instances": [')
    assert r.status_code == 400 and "Malformed JSON" in r.json()["error"]
    assert client.get("/v1/nothing-here").json() == {"error": "Not Found"}


def test_body_cap_with_and_without_content_length(client: TestClient) -> None:
    big = b'{"instances": [' + b"0," * 150_000 + b"0]}"
    r = client.post("/v1/models/cnn:predict", content=big)
    assert r.status_code == 413 and "exceeds the limit of 200000" in r.json()["error"]

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 10_000):
            yield big[i : i + 10_000]

    r = client.post("/v1/models/cnn:predict", content=chunks())  # chunked transfer: no Content-Length
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]


def test_classify_input_errors(client: TestClient) -> None:
    r = client.post("/v1/classify", content=b"garbage", headers={"content-type": "image/png"})
    assert r.status_code == 400 and "cannot decode image" in r.json()["error"]
    blank = io.BytesIO()
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(blank, "PNG")
    r = client.post("/v1/classify", content=blank.getvalue(), headers={"content-type": "image/png"})
    assert r.status_code == 422 and "no digit found" in r.json()["error"]
    for fmt in ("GIF", "BMP", "WEBP", "TIFF"):  # decodable by Pillow, but only PNG and JPEG are accepted
        buf = io.BytesIO()
        Image.fromarray(np.full((28, 28), 200, np.uint8)).save(buf, fmt)
        r = client.post("/v1/classify", content=buf.getvalue(), headers={"content-type": "image/png"})
        assert r.status_code == 400 and "not a PNG or JPEG" in r.json()["error"], (fmt, r.text)
    r = client.post("/v1/classify", content=b"x" * 60_000, headers={"content-type": "image/jpeg"})
    assert r.status_code == 413 and "limit of 50000" in r.json()["error"]
    r = client.post("/v1/classify", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 415
    r = client.post("/v1/classify", files={"image": ("a.png", b"123", "image/png")})
    assert r.status_code == 400 and "'file'" in r.json()["error"]
    buf = io.BytesIO()
    Image.fromarray(np.zeros((5000, 5000), np.uint8)).save(buf, "PNG")
    r = client.post("/v1/classify", files={"file": ("big.png", buf.getvalue(), "image/png")})
    assert r.status_code == 413 and "pixels" in r.json()["error"]


def test_request_id_echoed_or_generated(client: TestClient) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32
    r = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert r.headers["x-request-id"] != "bad id\twith spaces"


def capture_access_log(app: FastAPI) -> io.BytesIO:
    """Point the app's access log at a buffer of our own (it writes to stdout otherwise)."""
    stream = io.BytesIO()
    app.state.access_log.stream = stream
    # No timed flushes from the app's loop thread racing the test's own flush(): the test flushes.
    app.state.access_log.flush_interval_s = 3600
    return stream


def access_lines(app: FastAPI, stream: io.BytesIO) -> list[dict[str, object]]:
    app.state.access_log.flush()  # lines are batched; the server flushes them within 0.25 s
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_access_log_is_one_json_line_per_request(client: TestClient) -> None:
    stream = capture_access_log(client.app)  # type: ignore[arg-type]
    client.post("/v1/models/cnn:predict?backend=tf", json={"instances": IMG}, headers={"X-Request-ID": "r1"})
    lines = access_lines(client.app, stream)  # type: ignore[arg-type]
    assert len(lines) == 1
    line = lines[0]
    assert line["id"] == "r1" and line["method"] == "POST" and line["backend"] == "tf" and line["status"] == 503
    assert line["path"] == "/v1/models/cnn:predict" and line["latency_ms"] > 0  # type: ignore[operator]


def test_api_keys(keyed: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    stream = capture_access_log(keyed.app)  # type: ignore[arg-type]
    with caplog.at_level(logging.DEBUG):
        r = keyed.get("/v1/backends")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "API key" in r.json()["error"]
        assert keyed.get("/v1/backends", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert keyed.get("/v1/backends", headers={"Authorization": "Basic s3cret"}).status_code == 401
        assert keyed.get("/v1/backends", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert keyed.get("/v1/backends", headers={"Authorization": "Bearer other-key"}).status_code == 200
        r = keyed.post("/v1/models/cnn:predict", json={"instances": IMG})
        assert r.status_code == 401
        for open_path in ("/healthz", "/metrics", "/docs", "/openapi.json"):
            assert keyed.get(open_path).status_code == 200, open_path
        assert keyed.get("/readyz").status_code == 503  # open, just not ready
    assert "s3cret" not in caplog.text and "other-key" not in caplog.text
    logged = str(access_lines(keyed.app, stream))  # type: ignore[arg-type]
    assert "/v1/backends" in logged and "s3cret" not in logged and "other-key" not in logged


def test_metrics_count_requests_by_backend_and_status(client: TestClient) -> None:
    client.post("/v1/models/cnn:predict?backend=tf", json={"instances": IMG})
    client.post("/v1/models/cnn:predict?backend=torch", json={"instance": IMG})
    text = client.get("/metrics").text
    assert 'gateway_requests_total{backend="tf",endpoint="predict",status="503"} 1.0' in text
    assert 'gateway_requests_total{backend="torch",endpoint="predict",status="400"} 1.0' in text
    assert "gateway_request_latency_seconds_bucket" in text
    assert 'gateway_upstream_errors_total{backend="tf"' in text


def test_openapi_lists_the_api(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/v1/models/{model}:predict", "/v1/compare", "/v1/classify", "/v1/backends", "/readyz"):
        assert p in paths


def test_loadtests_router_is_mounted_behind_the_api_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    monkeypatch.setenv("GATEWAY_LOADTEST_REPORTS_DIR", str(tmp_path))
    with make_client(api_keys=["k"]) as c:
        assert c.get("/v1/loadtests").status_code == 401
        r = c.get("/v1/loadtests", headers={"Authorization": "Bearer k"})
        assert r.status_code == 200 and r.json() == {"loadtests": []}
        assert "/v1/loadtests" in c.get("/openapi.json").json()["paths"]


def test_predict_fast_path_answers_as_the_fastapi_routes_do() -> None:
    """Predict is served by a pure-ASGI layer (gateway/fastpath.py); the FastAPI routes that document it
    call the same function. The same requests through an app without that layer must answer alike."""
    from gateway.fastpath import PredictFastPath

    requests: list[tuple[str, bytes, dict[str, str]]] = [
        ("/v1/models/cnn:predict?backend=torch", orjson.dumps({"instances": IMG}), {}),  # unreachable: 503
        ("/v1/models/cnn/versions/3:predict", orjson.dumps({"instances": IMG}), {"x-backend": "tf"}),
        ("/v1/models/cnn:predict?backend=tf&backend=onnx", orjson.dumps({"instances": IMG}), {}),
        ("/v1/models/cnn:predict?backend=", orjson.dumps({"instances": IMG}), {"x-backend": "nope"}),
        ("/v1/models/cnn/versions/0:predict", orjson.dumps({"instances": IMG}), {}),
        ("/v1/models/cn%20n:predict", orjson.dumps({"instances": IMG}), {}),
        ("/v1/models/cnn:predict", b"", {}),
        ("/v1/models/cnn:predict", b'{"instances": [', {}),
        ("/v1/models/cnn:predict", orjson.dumps({"instances": np.zeros((9, 28, 28, 1)).tolist()}), {}),
        ("/v1/models/cnn:predict", orjson.dumps({"inputs": [[["x"]]]}), {}),
        ("/v1/models/a/b:predict", orjson.dumps({"instances": IMG}), {}),  # not a predict path: 404 from routing
    ]
    settings = Settings(
        torch_urls=[unused_url()],
        tf_grpc_targets=[unused_target()],
        health_timeout_s=0.2,
        max_batch_size=8,
    )
    fast_app, plain_app = create_app(settings), create_app(settings, predict_fast_path=False)
    assert isinstance(fast_app.front.app, PredictFastPath)  # type: ignore[attr-defined]
    assert not isinstance(plain_app.front.app, PredictFastPath)  # type: ignore[attr-defined]
    with TestClient(fast_app) as fast, TestClient(plain_app) as plain:
        for path, body, headers in requests:
            a, b = fast.post(path, content=body, headers=headers), plain.post(path, content=body, headers=headers)
            assert (a.status_code, a.json()) == (b.status_code, b.json()), path
            assert a.status_code >= 400 and "error" in a.json()
            assert a.headers["content-type"] == b.headers["content-type"] == "application/json"
            assert len(a.headers["x-request-id"]) == 32
        # A valid body sent in chunks (no Content-Length) is read whole and validated: the backend is
        # unreachable, so 503 and not a 400 about the body.
        valid = orjson.dumps({"instances": IMG})
        for c in (fast, plain):
            r = c.post("/v1/models/cnn:predict", content=iter([valid[:100], valid[100:2000], valid[2000:]]))
            assert r.status_code == 503 and "unavailable" in r.json()["error"]
        assert fast.get("/metrics").text.count('endpoint="predict"') == plain.get("/metrics").text.count(
            'endpoint="predict"'
        )


@pytest.mark.parametrize("path", ["/v1/models/cnn:predict", "/v1/compare"])  # the fast path, a FastAPI route
async def test_client_gone_mid_body_is_499_not_a_server_error(path: str) -> None:
    app = create_app(Settings(torch_urls=[unused_url()], tf_grpc_targets=[unused_target()]))  # type: ignore[arg-type]
    stream = capture_access_log(app)
    sent = await post_then_hang_up(app, path)  # must not raise
    assert sent == []  # nobody left to answer
    assert [line["status"] for line in access_lines(app, stream)] == [499]


def test_trailing_slash_is_a_json_404_not_a_redirect(client: TestClient) -> None:
    r = client.post("/v1/models/cnn:predict/", json={"instances": IMG}, follow_redirects=False)
    assert r.status_code == 404 and r.json()["error"]


def test_a_bug_in_a_route_is_a_json_500_with_request_id_in_log_and_metrics() -> None:
    app = create_app(Settings(torch_urls=[unused_url()], tf_grpc_targets=[unused_target()]))  # type: ignore[arg-type]

    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/v1/broken", broken)  # any route's unexpected exception takes this path
    stream = capture_access_log(app)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/v1/broken", headers={"X-Request-ID": "bug-1"})
        assert r.status_code == 500 and r.json()["error"] == "Internal error in the gateway (RuntimeError); see its log"
        assert r.headers["x-request-id"] == "bug-1"
        assert c.get("/healthz").status_code == 200  # and it keeps serving
    assert [(line["id"], line["status"]) for line in access_lines(app, stream)][:1] == [("bug-1", 500)]


@pytest.mark.parametrize(
    "query",
    [b"", b"backend=tf", b"backend=tf&backend=onnx", b"backend=", b"backend", b"x=1&&backend=torch&y", b"a=b",
     b"backend=t%66", b"backend=a+b", b"&&", b"backend=%ZZ", b"backend=caf\xc3\xa9"],
)  # fmt: skip
def test_the_fast_path_reads_backend_from_the_query_as_starlette_does(query: bytes) -> None:
    from starlette.datastructures import QueryParams

    from gateway.fastpath import _query_backend

    assert _query_backend(query) == QueryParams(query).get("backend")


def test_backend_header_is_checked_even_where_the_query_overrides_it(client: TestClient) -> None:
    r = client.post("/v1/models/cnn:predict?backend=torch", json={"instances": IMG}, headers={"X-Backend": "7"})
    assert r.status_code == 400 and r.json()["error"].startswith("unknown backend '7' in X-Backend")
    r = client.post("/v1/models/cnn:predict?backend=7", json={"instances": IMG}, headers={"X-Backend": "tf"})
    assert r.status_code == 400 and r.json()["error"].startswith("unknown backend '7' in ?backend=")


def test_an_empty_backend_name_is_refused_not_taken_as_the_default(client: TestClient) -> None:
    # The OpenAPI document says torch|tf; schemathesis sent `X-Backend:` (empty) and got a 200.
    r = client.post("/v1/models/cnn:predict?backend=", json={"instances": IMG})
    assert r.status_code == 400 and r.json()["error"].startswith("unknown backend '' in ?backend=")
    r = client.post("/v1/models/cnn:predict", json={"instances": IMG}, headers={"X-Backend": ""})
    assert r.status_code == 400 and r.json()["error"].startswith("unknown backend '' in X-Backend")


@pytest.mark.parametrize(
    ("value", "hint"),
    [(255.0, "divided by 255"), (-0.5, "from -0.5 to"), (3e38, "to 3e+38")],
)
def test_values_outside_the_contract_range_are_400_before_any_backend(
    client: TestClient, value: float, hint: str
) -> None:
    images = np.zeros((1, 28, 28, 1))
    images[0, 3, 4, 0] = value
    for path in ("/v1/models/cnn:predict?backend=torch", "/v1/models/cnn:predict?backend=tf", "/v1/compare"):
        r = client.post(path, content=orjson.dumps({"instances": images.tolist()}))
        # 400, not the 503 of the unreachable backends: refused before anything is forwarded.
        assert r.status_code == 400, (path, r.text)
        assert "must lie in [0, 1]" in r.json()["error"] and hint in r.json()["error"], r.text


def test_405_allow_lists_every_method_of_the_path(client: TestClient) -> None:
    for path, allowed in [
        ("/v1/loadtests", "GET, HEAD, POST"),
        ("/v1/loadtests/20261128T000000Z-x", "DELETE, GET, HEAD"),
        ("/v1/models/cnn:predict", "POST"),
        ("/metrics", "GET, HEAD"),
    ]:
        r = client.request("PUT", path)
        assert r.status_code == 405 and r.headers["allow"] == allowed, (path, r.headers.get("allow"))
        assert r.json() == {"error": "Method Not Allowed"}


def test_openapi_document_declares_the_answers_and_bodies_served(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    text = json.dumps(doc)
    assert "HTTPValidationError" not in text  # FastAPI's 422 shape: never answered here
    paths = doc["paths"]
    predict = paths["/v1/models/{model}:predict"]["post"]
    assert set(predict["responses"]) == {"200", "400", "401", "404", "413", "502", "503", "504"}
    for code in ("400", "413", "503"):
        assert predict["responses"][code]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }
    body = predict["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/PredictRequest"}
    request_schema = doc["components"]["schemas"]["PredictRequest"]
    batch = request_schema["properties"]["instances"]["anyOf"][0]
    assert batch["maxItems"] == 8  # this app's GATEWAY_MAX_BATCH_SIZE, not a default
    leaf = batch["items"]["items"]["items"]["items"]
    assert (leaf["minimum"], leaf["maximum"]) == (0.0, 1.0)
    params = {p["name"]: p for p in predict["parameters"]}
    assert params["model"]["schema"]["enum"] == ["cnn"] and params["backend"]["in"] == "query"
    # Errors stay JSON on routes whose success is not.
    report = paths["/v1/loadtests/{run_id}/report"]["get"]["responses"]
    assert "text/html" in report["200"]["content"] and "application/json" in report["409"]["content"]
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    classify = paths["/v1/classify"]["post"]
    assert {"image/png", "image/jpeg", "multipart/form-data"} <= set(classify["requestBody"]["content"])
