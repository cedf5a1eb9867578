"""TF Serving REST transport (torch_service always; TF Serving when GATEWAY_TF_PROTOCOL=rest).

One pooled, kept-alive httpx client per backend, created at start-up. A valid predict body is
forwarded as the client sent it and the answer passed back as bytes: no re-encoding on the hot path.
"""

from __future__ import annotations

import httpx
import orjson

from gateway.errors import BadGateway, UpstreamError, UpstreamTimeout
from gateway.upstreams.balancer import Replica
from gateway.upstreams.pool import PredictResult, ReplicaDown
from gateway.validation import PredictRequest, encode_predict_body

_JSON = {"content-type": "application/json"}
# Connection-level failures: the request may not have been processed, and predict is idempotent anyway.
_DOWN = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def _error_message(resp: httpx.Response) -> str:
    try:
        doc = orjson.loads(resp.content)
        if isinstance(doc, dict) and "error" in doc:
            return str(doc["error"])
    except orjson.JSONDecodeError:
        pass
    return resp.text[:500] or f"HTTP {resp.status_code}"


class RestTransport:
    protocol = "rest"

    def __init__(
        self, *, timeout_s: float, connect_timeout_s: float, health_timeout_s: float, max_connections: int
    ) -> None:
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._health_timeout = httpx.Timeout(health_timeout_s)
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self._timeout, limits=self._limits, trust_env=False)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("transport not started")
        return self._client

    async def predict(
        self, replica: Replica, model: str, version: str | None, inp: PredictRequest, raw_body: bytes | None
    ) -> PredictResult:
        path = f"/v1/models/{model}/versions/{version}:predict" if version else f"/v1/models/{model}:predict"
        body = raw_body if raw_body is not None else encode_predict_body(inp)
        try:
            resp = await self.client.post(replica.address + path, content=body, headers=_JSON)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise ReplicaDown(f"connect timeout ({exc})") from None
            raise UpstreamTimeout(f"upstream {replica.address} timed out") from None
        except _DOWN as exc:
            raise ReplicaDown(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise BadGateway(f"upstream {replica.address}: {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            message = _error_message(resp)
            if resp.status_code in (502, 503):
                # Overloaded or not ready: another replica may take it; this one rests for the cool-down.
                raise ReplicaDown(f"HTTP {resp.status_code}: {message}")
            if resp.status_code == 504:
                raise UpstreamTimeout(message)
            raise UpstreamError(message, status=resp.status_code)
        return PredictResult(
            body=resp.content,
            version=resp.headers.get("x-model-version", version),
            latency_ms=0.0,
            replica=replica.address,
            fmt=inp.format,
        )

    async def probe(self, replica: Replica, model: str) -> int | None:
        """Highest AVAILABLE version from TF Serving's model status API, None when none is."""
        resp = await self.client.get(f"{replica.address}/v1/models/{model}", timeout=self._health_timeout)
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {_error_message(resp)}")
        statuses = orjson.loads(resp.content).get("model_version_status", [])
        versions = [int(s["version"]) for s in statuses if s.get("state") == "AVAILABLE"]
        return max(versions) if versions else None
