"""Locust users sending the load tests' request bodies, for load beyond one machine.

Same bodies as `python -m gateway.loadtest` (golden images, same seed, same pre-encoding), checked the
same way (every answer's classes against the golden file's classes, when it has them). Distributed mode:

    locust -f gateway/loadtest/locustfile.py --master --host http://127.0.0.1:8080
    locust -f gateway/loadtest/locustfile.py --worker --master-host <master>

Environment: MODEL_REPOSITORY (images), LOADTEST_SEED (default 42), LOADTEST_BATCH_SIZE (default 1),
LOADTEST_PATH (default /v1/models/cnn:predict; e.g. `/v1/models/cnn:predict?backend=tf` for the gateway).
"""

from __future__ import annotations

import itertools
import os

import orjson
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser

from gateway.loadtest.data import build_bodies, load_images
from gateway.loadtest.targets import PREDICT_PATH

# A gateway with GATEWAY_API_KEYS wants a bearer key on every predict.
_HEADERS = {"Content-Type": "application/json"} | (
    {"Authorization": f"Bearer {os.environ['LOADTEST_API_KEY']}"} if os.environ.get("LOADTEST_API_KEY") else {}
)
_BODIES = None


@events.init.add_listener
def _prepare(environment, **_kwargs):
    # Encoded once per process before any user starts: the hot loop only sends bytes.
    global _BODIES
    seed = int(os.environ.get("LOADTEST_SEED", "42"))
    batch = int(os.environ.get("LOADTEST_BATCH_SIZE", "1"))
    _BODIES = build_bodies(load_images(), batch, seed)


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
            if len(classes) != len(_BODIES.expected_labels[idx]):
                resp.failure("wrong number of predictions")
            elif golden is not None and classes != golden:
                resp.failure(f"classes {classes} differ from the golden {golden}")
            else:
                resp.success()
