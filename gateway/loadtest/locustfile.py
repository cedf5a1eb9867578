"""Locust users sending the load tests' request bodies, for load beyond one machine.

Same bodies as `python -m gateway.loadtest` (golden images, same seed, same pre-encoding), checked the
same way: every answer's classes against the golden file's classes, when it has them and they are the
predictions of the version that answered (the gateway's X-Model-Version header, else the highest
AVAILABLE version of the host's TF Serving status API, asked once). Against another version's golden
predictions a correct model disagrees now and then, which is no failure. Distributed mode:

    locust -f gateway/loadtest/locustfile.py --master --host http://127.0.0.1:8080
    locust -f gateway/loadtest/locustfile.py --worker --master-host <master>

Environment: MODEL_REPOSITORY (images), LOADTEST_SEED (default 42), LOADTEST_BATCH_SIZE (default 1),
LOADTEST_PATH (default /v1/models/cnn:predict; e.g. `/v1/models/cnn:predict?backend=tf` for the gateway).
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import orjson
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser

from gateway.loadtest.data import MODEL_NAME, build_bodies, load_images
from gateway.loadtest.runner import _status
from gateway.loadtest.targets import PREDICT_PATH

# A gateway with GATEWAY_API_KEYS wants a bearer key on every predict.
_HEADERS = {"Content-Type": "application/json"} | (
    {"Authorization": f"Bearer {os.environ['LOADTEST_API_KEY']}"} if os.environ.get("LOADTEST_API_KEY") else {}
)
_BODIES = None
_GOLDEN_VERSION: int | None = None
_STATUS_VERSION: dict[str, Any] = {}  # host -> the version its status API says a plain predict gets


def _status_version(host: str) -> Any:
    """Highest AVAILABLE version from the host's TF Serving status API (torch_service and TF Serving
    have one; a gateway does not, and names the version in X-Model-Version instead); None if unknown."""
    if not host:
        return None
    if host not in _STATUS_VERSION:
        st = _status(f"{host.rstrip('/')}/v1/models/{MODEL_NAME}")
        available = [v for v in st[0] if isinstance(v, int)] if st else []
        _STATUS_VERSION[host] = max(available) if available else None
    return _STATUS_VERSION[host]


@events.init.add_listener
def _prepare(environment, **_kwargs):
    # Encoded once per process before any user starts: the hot loop only sends bytes.
    global _BODIES, _GOLDEN_VERSION
    seed = int(os.environ.get("LOADTEST_SEED", "42"))
    batch = int(os.environ.get("LOADTEST_BATCH_SIZE", "1"))
    images = load_images()
    _BODIES = build_bodies(images, batch, seed)
    _GOLDEN_VERSION = images.model_version


class PredictUser(FastHttpUser):
    path = os.environ.get("LOADTEST_PATH", PREDICT_PATH)

    def on_start(self) -> None:
        assert _BODIES is not None
        seed = int(os.environ.get("LOADTEST_SEED", "42"))
        self._sequence = itertools.cycle(_BODIES.sequence(seed, 4096).tolist())

    @task
    def predict(self) -> None:
        assert _BODIES is not None
        idx = next(self._sequence)
        with self.client.post(
            self.path,
            data=_BODIES.rest[idx],
            headers=_HEADERS,
            name="predict",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200] if resp.text else ''}")
                return
            try:
                preds = orjson.loads(resp.content)["predictions"]
                classes = [int(p["classes"]) for p in preds]
            except (ValueError, KeyError, TypeError):
                resp.failure("unexpected body")
                return
            golden = _BODIES.expected_classes[idx] if _BODIES.expected_classes else None
            served = resp.headers.get("x-model-version") or _status_version(self.host or "")
            if golden is not None and (_GOLDEN_VERSION is None or str(served) != str(_GOLDEN_VERSION)):
                golden = None  # another version's (or an unknown version's) predictions: not a check
            if len(classes) != len(_BODIES.expected_labels[idx]):
                resp.failure("wrong number of predictions")
            elif golden is not None and classes != golden:
                resp.failure(f"classes {classes} differ from the golden {golden}")
            else:
                resp.success()
