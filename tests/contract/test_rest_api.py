"""TF Serving's REST API (g3doc/api_rest.md), written as a client that knows only those docs would use it."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from serving_core import contract
from tests.contract.conftest import Backend

pytestmark = pytest.mark.integration

TIMEOUT = 30


def _latest_version(backend: Backend) -> int:
    r = requests.get(f"{backend.rest_url}/v1/models/cnn", timeout=TIMEOUT)
    r.raise_for_status()
    return max(int(s["version"]) for s in r.json()["model_version_status"] if s["state"] == "AVAILABLE")


def _assert_error(r: requests.Response, status: int) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body


def test_model_status(backend: Backend) -> None:
    r = requests.get(f"{backend.rest_url}/v1/models/cnn", timeout=TIMEOUT)
    assert r.status_code == 200
    statuses = r.json()["model_version_status"]
    assert statuses, r.text
    for s in statuses:
        assert set(s) == {"version", "state", "status"}
        assert isinstance(s["version"], str) and s["version"].isdigit()  # int64 in proto3 JSON
        assert s["state"] in {"START", "LOADING", "AVAILABLE", "UNLOADING", "END"}
    available = [s for s in statuses if s["state"] == "AVAILABLE"]
    assert available and all(s["status"]["error_code"] == "OK" for s in available)


def test_model_status_of_one_version(backend: Backend) -> None:
    v = _latest_version(backend)
    r = requests.get(f"{backend.rest_url}/v1/models/cnn/versions/{v}", timeout=TIMEOUT)
    assert r.status_code == 200
    [s] = r.json()["model_version_status"]
    assert s["version"] == str(v) and s["state"] == "AVAILABLE"


def test_metadata_has_the_contract_signature(backend: Backend) -> None:
    v = _latest_version(backend)
    for url in (
        f"{backend.rest_url}/v1/models/cnn/metadata",
        f"{backend.rest_url}/v1/models/cnn/versions/{v}/metadata",
    ):
        r = requests.get(url, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["model_spec"] == {"name": "cnn", "signature_name": "", "version": str(v)}
        sigs = doc["metadata"]["signature_def"]["signature_def"]
        assert sigs[contract.SIGNATURE_NAME] == contract.signature_def_json()


def test_predict_row_format(backend: Backend, golden_of: dict[str, np.ndarray]) -> None:
    images = golden_of["images"][:5]
    r = requests.post(f"{backend.rest_url}/v1/models/cnn:predict", json={"instances": images.tolist()}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 5 and all(set(p) == {"probabilities", "classes"} for p in preds)
    np.testing.assert_allclose([p["probabilities"] for p in preds], golden_of["probabilities"][:5], atol=1e-5)
    assert [p["classes"] for p in preds] == golden_of["classes"][:5].tolist()


def test_predict_row_format_with_named_inputs(backend: Backend, golden_of: dict[str, np.ndarray]) -> None:
    instances = [{"images": img.tolist()} for img in golden_of["images"][:2]]
    body = {"signature_name": "serving_default", "instances": instances}
    r = requests.post(f"{backend.rest_url}/v1/models/cnn:predict", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert [p["classes"] for p in r.json()["predictions"]] == golden_of["classes"][:2].tolist()


def test_other_top_level_keys_are_ignored(backend: Backend, golden_of: dict[str, np.ndarray]) -> None:
    """TF Serving's FillPredictRequestFromJson (util/json_tensor.cc) looks up only signature_name, instances
    and inputs; a client that sends more (here KServe v1's "parameters") is served all the same."""
    for key in ("instances", "inputs"):
        body = {key: golden_of["images"][:2].tolist(), "parameters": {"x": 1}, "id": "req-1"}
        r = requests.post(f"{backend.rest_url}/v1/models/cnn:predict", json=body, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        doc = r.json()
        classes = [p["classes"] for p in doc["predictions"]] if key == "instances" else doc["outputs"]["classes"]
        assert classes == golden_of["classes"][:2].tolist()


def test_a_gzip_body_is_read_as_tf_serving_reads_it(backend: Backend, golden_of: dict[str, np.ndarray]) -> None:
    """TF Serving's HTTP server uncompresses a body sent with Content-Encoding: gzip (net_http's
    auto_uncompress_input, on by default); tritonclient's request compression relies on it."""
    import gzip

    import orjson

    plain = orjson.dumps({"instances": golden_of["images"][:3]}, option=orjson.OPT_SERIALIZE_NUMPY)
    url = f"{backend.rest_url}/v1/models/cnn:predict"
    r = requests.post(url, data=gzip.compress(plain), headers={"Content-Encoding": "gzip"}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert [p["classes"] for p in r.json()["predictions"]] == golden_of["classes"][:3].tolist()
    # Not gzip after all: an error, never a 500 (ours names the problem; TF Serving fails to uncompress it).
    r = requests.post(url, data=plain, headers={"Content-Encoding": "gzip"}, timeout=TIMEOUT)
    assert 400 <= r.status_code < 500 and r.json()["error"], r.text


def test_predict_columnar_format(backend: Backend, golden_of: dict[str, np.ndarray]) -> None:
    images = golden_of["images"][:4]
    for inputs in (images.tolist(), {"images": images.tolist()}):
        r = requests.post(f"{backend.rest_url}/v1/models/cnn:predict", json={"inputs": inputs}, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"]
        np.testing.assert_allclose(out["probabilities"], golden_of["probabilities"][:4], atol=1e-5)
        assert out["classes"] == golden_of["classes"][:4].tolist()


def test_predict_explicit_version(backend: Backend, golden_of: dict[str, np.ndarray]) -> None:
    v = _latest_version(backend)
    body = {"instances": golden_of["images"][:1].tolist()}
    r = requests.post(f"{backend.rest_url}/v1/models/cnn/versions/{v}:predict", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["classes"] == int(golden_of["classes"][0])


def test_whole_golden_set(backend: Backend, golden_of: dict[str, np.ndarray]) -> None:
    """Every golden image, in batches of at most max_batch_size, within 1e-5 of the trainer's outputs."""
    probs, classes = [], []
    for start in range(0, len(golden_of["images"]), 32):
        chunk = golden_of["images"][start : start + 32]
        r = requests.post(f"{backend.rest_url}/v1/models/cnn:predict", json={"inputs": chunk.tolist()}, timeout=60)
        assert r.status_code == 200, r.text
        probs.extend(r.json()["outputs"]["probabilities"])
        classes.extend(r.json()["outputs"]["classes"])
    assert np.abs(np.asarray(probs) - golden_of["probabilities"]).max() <= 1e-5
    assert classes == golden_of["classes"].tolist()


def test_unknown_model_and_version_are_404(backend: Backend) -> None:
    image = np.zeros((1, 28, 28, 1)).tolist()
    _assert_error(requests.get(f"{backend.rest_url}/v1/models/no_such_model", timeout=TIMEOUT), 404)
    _assert_error(requests.get(f"{backend.rest_url}/v1/models/cnn/versions/987654", timeout=TIMEOUT), 404)
    _assert_error(requests.get(f"{backend.rest_url}/v1/models/no_such_model/metadata", timeout=TIMEOUT), 404)
    url = f"{backend.rest_url}/v1/models/no_such_model:predict"
    _assert_error(requests.post(url, json={"instances": image}, timeout=TIMEOUT), 404)
    url = f"{backend.rest_url}/v1/models/cnn/versions/987654:predict"
    _assert_error(requests.post(url, json={"instances": image}, timeout=TIMEOUT), 404)


@pytest.mark.parametrize("verb", ["classify", "regress"])
def test_classify_and_regress_refuse_the_predict_signature(backend: Backend, verb: str) -> None:
    """api_rest.md's :classify/:regress on a model whose only signature is a predict one: 400 (classifier.cc /
    regressor.cc refuse its shape); an unknown model is still 404 first."""
    body = {"examples": [{"x": 0.5}]}
    _assert_error(requests.post(f"{backend.rest_url}/v1/models/cnn:{verb}", json=body, timeout=TIMEOUT), 400)
    _assert_error(requests.post(f"{backend.rest_url}/v1/models/no_such_model:{verb}", json=body, timeout=TIMEOUT), 404)
    url = f"{backend.rest_url}/v1/models/cnn/versions/987654:{verb}"
    _assert_error(requests.post(url, json=body, timeout=TIMEOUT), 404)


@pytest.mark.parametrize(
    "body",
    [
        {"instances": [[0.0, 1.0]]},  # wrong instance shape
        {"instances": np.zeros((1, 28, 28, 3)).tolist()},  # wrong channels
        {"inputs": {"pixels": np.zeros((1, 28, 28, 1)).tolist()}},  # unknown input name
        {"instances": [["a"] * 28]},  # not numbers
        {"instances": np.zeros((1, 28, 28, 1)).tolist(), "inputs": np.zeros((1, 28, 28, 1)).tolist()},
        {"instances": np.zeros((1, 28, 28, 1)).tolist(), "signature_name": "no_such_signature"},
        {"images": np.zeros((1, 28, 28, 1)).tolist()},  # neither instances nor inputs
    ],
)
def test_bad_requests_are_400_and_the_server_keeps_serving(backend: Backend, body: dict) -> None:
    _assert_error(requests.post(f"{backend.rest_url}/v1/models/cnn:predict", json=body, timeout=TIMEOUT), 400)
    ok = requests.post(
        f"{backend.rest_url}/v1/models/cnn:predict",
        json={"instances": np.zeros((1, 28, 28, 1)).tolist()},
        timeout=TIMEOUT,
    )
    assert ok.status_code == 200


def test_malformed_json_is_400(backend: Backend) -> None:
    r = requests.post(
        f"{backend.rest_url}/v1/models/cnn:predict",
        data=b'{"instances": [',
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    _assert_error(r, 400)


def test_prometheus_metrics_use_tf_serving_names(backend: Backend) -> None:
    """The scrape path of monitoring.config, with TF Serving's metric names (torch_service has its own)."""
    if backend.name == "torch_service":
        pytest.skip("torch_service exports its own metrics, not TF Serving's")
    from prometheus_client.parser import text_string_to_metric_families

    one = {"instances": np.zeros((1, 28, 28, 1)).tolist()}
    assert requests.post(f"{backend.rest_url}/v1/models/cnn:predict", json=one, timeout=TIMEOUT).status_code == 200
    r = requests.get(f"{backend.rest_url}/monitoring/prometheus/metrics", timeout=TIMEOUT)
    assert r.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    counts = families[":tensorflow:serving:request_count"].samples
    assert any(s.labels == {"model_name": "cnn", "status": "OK"} and s.value >= 1 for s in counts)
    latency = families[":tensorflow:serving:request_latency"]
    assert latency.type == "histogram"
    assert any(
        s.name.endswith("_count") and s.labels.get("entrypoint") == "REST" and s.labels.get("API") == "predict"
        for s in latency.samples
    )
