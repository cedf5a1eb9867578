"""TF Serving REST transport (torch_service always; TF Serving when GATEWAY_TF_PROTOCOL=rest).

One pool of kept-alive HTTP/1.1 connections per replica (http1.py), opened on first use and kept. A
valid predict body is forwarded as the client sent it and the answer passed back as bytes: nothing
is re-encoded on the hot path.
"""

from __future__ import annotations

import asyncio

import orjson

from gateway.errors import BadGateway, UpstreamError, UpstreamTimeout
from gateway.upstreams.balancer import Replica
from gateway.upstreams.http1 import ConnectFailed, ConnectionLost, Http1Pool, HttpResponse, ProtocolError
from gateway.upstreams.pool import PredictResult, ReplicaDown
from gateway.validation import PredictRequest, encode_predict_body


def _error_message(resp: HttpResponse) -> str:
    try:
        doc = orjson.loads(resp.content)
        if isinstance(doc, dict) and "error" in doc:
            return str(doc["error"])
    except orjson.JSONDecodeError:
        pass
    return resp.content[:500].decode("utf-8", "replace") or f"HTTP {resp.status}"


class RestTransport:
    protocol = "rest"

    def __init__(
        self, *, timeout_s: float, connect_timeout_s: float, health_timeout_s: float, max_connections: int
    ) -> None:
        self._timeout = timeout_s
        self._connect_timeout = connect_timeout_s
        self._health_timeout = health_timeout_s
        self._max_connections = max_connections
        self._pools: dict[str, Http1Pool] = {}

    async def start(self) -> None:
        """Pools are created per replica on first use (they belong to the running event loop)."""

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()

    def _pool(self, address: str) -> Http1Pool:
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = Http1Pool(
                address, max_connections=self._max_connections, connect_timeout_s=self._connect_timeout
            )
        return pool

    async def _call(self, replica: Replica, method: str, path: str, body: bytes, timeout: float) -> HttpResponse:
        try:
            async with asyncio.timeout(timeout):
                return await self._pool(replica.address).request(method, path, body)
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {replica.address} timed out after {timeout:g}s") from None
        except (ConnectFailed, ConnectionLost) as exc:
            raise ReplicaDown(f"{type(exc).__name__}: {exc}") from None
        except (ProtocolError, ValueError) as exc:
            raise BadGateway(f"upstream {replica.address}: {exc}") from None

    async def predict(
        self, replica: Replica, model: str, version: str | None, inp: PredictRequest, raw_body: bytes | None
    ) -> PredictResult:
        path = f"/v1/models/{model}/versions/{version}:predict" if version else f"/v1/models/{model}:predict"
        body = raw_body if raw_body is not None else encode_predict_body(inp)
        resp = await self._call(replica, "POST", path, body, self._timeout)
        if resp.status != 200:
            message = _error_message(resp)
            if resp.status in (502, 503):
                # Overloaded or not ready: another replica may take it; this one rests for the cool-down.
                raise ReplicaDown(f"HTTP {resp.status}: {message}")
            if resp.status == 504:
                raise UpstreamTimeout(message)
            raise UpstreamError(message, status=resp.status)
        return PredictResult(
            body=resp.content,
            version=resp.headers.get("x-model-version", version),
            latency_ms=0.0,
            replica=replica.address,
            fmt=inp.format,
        )

    async def probe(self, replica: Replica, model: str) -> int | None:
        """Highest AVAILABLE version from TF Serving's model status API, None when none is."""
        resp = await self._call(replica, "GET", f"/v1/models/{model}", b"", self._health_timeout)
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {_error_message(resp)}")
        statuses = orjson.loads(resp.content).get("model_version_status", [])
        versions = [int(s["version"]) for s in statuses if s.get("state") == "AVAILABLE"]
        return max(versions) if versions else None
