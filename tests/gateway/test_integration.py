"""The gateway in front of the REAL backends (torch_service and the TF-Serving-compatible server)
serving the shared trained model: answers equal direct calls and the golden set, on every path."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from PIL import Image

from tests.gateway.conftest import Procs, gateway, tf_compat, torch_service

pytestmark = pytest.mark.integration

N = 32  # golden images per predict test: enough to cover all classes, small enough for 2 cores


@pytest.fixture(scope="module")
def real(module_procs: Procs, model_repository: Path) -> dict[str, str]:
    _, torch_url = torch_service(module_procs, model_repository)
    _, tf_url, tf_target = tf_compat(module_procs, model_repository)
    quiet = {"access_log": "false"}
    _, via_grpc = gateway(module_procs, torch_urls=torch_url, tf_grpc_targets=tf_target, **quiet)
    # JSON bodies forwarded as sent to both: TF over REST, torch over its TF-Serving REST API (not the binary wire).
    _, via_rest = gateway(
        module_procs, torch_urls=torch_url, tf_rest_urls=tf_url, tf_protocol="rest", torch_wire="json", **quiet
    )
    # The same gRPC upstream through grpcio's client instead of the gateway's own HTTP/2 one.
    _, via_grpcio = gateway(
        module_procs, torch_urls=torch_url, tf_grpc_targets=tf_target, tf_grpc_client="grpcio", **quiet
    )
    return {"torch": torch_url, "tf": tf_url, "gw_grpc": via_grpc, "gw_rest": via_rest, "gw_grpcio": via_grpcio}


def instances(images: np.ndarray, fmt: str) -> bytes:
    key = "instances" if fmt == "row" else "inputs"
    return orjson.dumps({key: images}, option=orjson.OPT_SERIALIZE_NUMPY)


def probs_and_classes(doc: dict) -> tuple[np.ndarray, np.ndarray]:
    if "predictions" in doc:
        p = np.asarray([r["probabilities"] for r in doc["predictions"]], np.float32)
        c = np.asarray([r["classes"] for r in doc["predictions"]], np.int64)
    else:
        p = np.asarray(doc["outputs"]["probabilities"], np.float32)
        c = np.asarray(doc["outputs"]["classes"], np.int64)
    return p, c


@pytest.mark.parametrize("fmt", ["row", "columnar"])
@pytest.mark.parametrize(
    ("gw", "backend"),
    [("gw_grpc", "torch"), ("gw_rest", "torch"), ("gw_grpc", "tf"), ("gw_rest", "tf"), ("gw_grpcio", "tf")],
)
def test_predict_equals_direct_call_and_golden(
    real: dict[str, str], golden: dict, gw: str, backend: str, fmt: str
) -> None:
    body = instances(golden["images"][:N], fmt)
    through = httpx.post(f"{real[gw]}/v1/models/cnn:predict?backend={backend}", content=body, timeout=30)
    direct = httpx.post(f"{real[backend]}/v1/models/cnn:predict", content=body, timeout=30)
    assert through.status_code == 200, through.text
    assert through.headers["x-backend"] == backend and through.headers["x-model-version"] == "1"
    doc = through.json()
    assert set(doc) == set(direct.json())  # same TF Serving shape: predictions (row) / outputs (columnar)
    p, c = probs_and_classes(doc)
    p_direct, c_direct = probs_and_classes(direct.json())
    np.testing.assert_allclose(p, p_direct, atol=1e-7)
    np.testing.assert_array_equal(c, c_direct)
    np.testing.assert_array_equal(c, golden["classes"][:N])
    np.testing.assert_allclose(p, golden["probabilities"][:N], atol=1e-5)
    if backend == "torch":
        # Over either wire (binary tensors, or the client's JSON forwarded), the very bytes torch_service answers.
        assert through.content == direct.content


@pytest.mark.parametrize("gw", ["gw_grpc", "gw_rest"])
def test_gzip_bodies_are_read_and_other_encodings_refused(real: dict[str, str], golden: dict, gw: str) -> None:
    """As TF Serving reads them: a gzip body is uncompressed before anything else (on the predict fast path
    and FastAPI's routes alike, whichever wire goes upstream); deflate or br is a clear 415."""
    import gzip

    plain = instances(golden["images"][:2], "row")
    packed = gzip.compress(plain)
    for backend in ("torch", "tf"):
        url = f"{real[gw]}/v1/models/cnn:predict?backend={backend}"
        ours = httpx.post(url, content=packed, headers={"Content-Encoding": "gzip"})
        assert ours.status_code == 200, ours.text
        assert ours.json() == httpx.post(url, content=plain).json()
        r = httpx.post(url, content=plain, headers={"Content-Encoding": "br"})
        assert r.status_code == 415 and "not supported" in r.json()["error"], r.text
        r = httpx.post(url, content=plain, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 400 and "not valid gzip" in r.json()["error"], r.text
    r = httpx.post(f"{real[gw]}/v1/compare", content=packed, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["agreement"]["argmax_agreement"] == 1.0, r.text


def test_explicit_version_and_unknown_model(real: dict[str, str], golden: dict) -> None:
    body = instances(golden["images"][:1], "row")
    for backend in ("torch", "tf"):
        r = httpx.post(f"{real['gw_grpc']}/v1/models/cnn/versions/1:predict?backend={backend}", content=body)
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        r = httpx.post(f"{real['gw_grpc']}/v1/models/cnn/versions/9:predict?backend={backend}", content=body)
        assert r.status_code == 404 and r.json()["error"], (backend, r.text)
        r = httpx.post(f"{real['gw_grpc']}/v1/models/other:predict?backend={backend}", content=body)
        assert r.status_code == 404 and r.json()["error"], (backend, r.text)
    # Both gRPC clients pass TF's errors through alike: same status, same message. So do torch's two wires
    # (OIP infer with binary tensors, TF-Serving REST predict), and so does torch_service called directly.
    for path in ("/v1/models/cnn/versions/9:predict", "/v1/models/other:predict"):
        ours, grpcio = (httpx.post(f"{real[gw]}{path}?backend=tf", content=body) for gw in ("gw_grpc", "gw_grpcio"))
        assert (ours.status_code, ours.json()) == (grpcio.status_code, grpcio.json())
        binary, json_wire = (
            httpx.post(f"{real[gw]}{path}?backend=torch", content=body) for gw in ("gw_grpc", "gw_rest")
        )
        direct = httpx.post(f"{real['torch']}{path}", content=body)
        assert (binary.status_code, binary.json()) == (json_wire.status_code, json_wire.json())
        assert (binary.status_code, binary.json()) == (direct.status_code, direct.json())
    # The client's mistakes passed through are not the backends' errors: nothing in the upstream error count.
    for gw in ("gw_grpc", "gw_grpcio", "gw_rest"):
        metrics = httpx.get(f"{real[gw]}/metrics").text
        assert "gateway_upstream_errors_total{" not in metrics, (gw, metrics)


@pytest.mark.parametrize("gw", ["gw_grpc", "gw_rest"])
def test_compare_reports_agreement(real: dict[str, str], golden: dict, gw: str) -> None:
    r = httpx.post(f"{real[gw]}/v1/compare", content=instances(golden["images"][:N], "row"), timeout=30)
    doc = r.json()
    assert r.status_code == 200 and doc["partial"] is False
    agreement = doc["agreement"]
    assert agreement["instances"] == N and agreement["argmax_agreement"] == 1.0
    assert agreement["max_abs_diff"] <= 1e-5
    for name in ("torch", "tf"):
        assert doc["backends"][name]["version"] == "1" and doc["backends"][name]["latency_ms"] > 0


def render(image: np.ndarray, fmt: str, invert: bool) -> bytes:
    """A golden image as a user would send it: upscaled to 112x112, 8-bit, PNG or JPEG."""
    pixels = (image[:, :, 0] * 255).round().astype(np.uint8)
    if invert:
        pixels = 255 - pixels  # dark digit on light paper
    big = Image.fromarray(pixels).resize((112, 112), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_classify_rendered_golden_images(real: dict[str, str], golden: dict, backend: str) -> None:
    n = min(40, len(golden["images"]))
    right = total = 0
    with httpx.Client(base_url=real["gw_grpc"], timeout=30) as c:
        for i in range(n):
            for fmt in ("PNG", "JPEG"):
                for invert in (False, True):
                    data = render(golden["images"][i], fmt, invert)
                    if (i + invert) % 2:  # half raw bodies, half multipart uploads
                        r = c.post(
                            f"/v1/classify?backend={backend}",
                            content=data,
                            headers={"content-type": f"image/{fmt.lower()}"},
                        )
                    else:
                        r = c.post(f"/v1/classify?backend={backend}", files={"file": (f"d.{fmt}", data)})
                    assert r.status_code == 200, r.text
                    doc = r.json()
                    assert doc["backend"] == backend and len(doc["probabilities"]) == 10
                    right += doc["label"] == int(golden["classes"][i])
                    total += 1
    assert right / total >= 0.95, f"{right}/{total} rendered golden images classified as the original"


def test_backends_report_health_version_and_latency(real: dict[str, str], golden: dict) -> None:
    httpx.post(f"{real['gw_grpc']}/v1/models/cnn:predict?backend=tf", content=instances(golden["images"][:1], "row"))
    doc = httpx.get(f"{real['gw_grpc']}/v1/backends").json()
    for name in ("torch", "tf"):
        replica = doc["backends"][name]["replicas"][0]
        assert replica["healthy"] is True and replica["in_rotation"] is True and replica["loaded_version"] == 1
    assert doc["backends"]["tf"]["protocol"] == "grpc"
    assert doc["backends"]["tf"]["replicas"][0]["recent_latency"]["count"] >= 1
    assert httpx.get(f"{real['gw_grpc']}/readyz").status_code == 200
    metrics = httpx.get(f"{real['gw_grpc']}/metrics").text
    assert 'gateway_upstream_latency_seconds_count{backend="tf"}' in metrics
