"""Every backend that runs here answers the golden set identically (max abs difference <= 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from tests.contract.conftest import Backend

pytestmark = pytest.mark.integration


def _predict(backend: Backend, images: np.ndarray) -> np.ndarray:
    r = requests.post(f"{backend.rest_url}/v1/models/cnn:predict", json={"inputs": images.tolist()}, timeout=60)
    assert r.status_code == 200, (backend.name, r.text)
    return np.asarray(r.json()["outputs"]["probabilities"], dtype=np.float32)


def test_backends_agree(request: pytest.FixtureRequest, golden: dict[str, np.ndarray]) -> None:
    backends: list[Backend] = []
    for fixture in ("compat_backend", "torch_backend", "real_backend"):
        try:
            backends.append(request.getfixturevalue(fixture))
        except pytest.skip.Exception:
            continue
    served_same_model = [b for b in backends if b.golden is not None]
    if len(served_same_model) < 2:
        pytest.skip(f"need two backends serving the golden version, have {[b.name for b in served_same_model]}")
    images = golden["images"][:32]
    outputs = {b.name: _predict(b, images) for b in served_same_model}
    names = list(outputs)
    for a in names:
        for b in names:
            diff = float(np.abs(outputs[a] - outputs[b]).max())
            assert diff <= 1e-5, f"{a} vs {b}: max abs difference {diff}"
        assert (outputs[a].argmax(1) == golden["classes"][:32]).all()
