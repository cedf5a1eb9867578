"""REST transport: torch_service always, TF Serving when GATEWAY_TF_PROTOCOL=rest.

One pool of kept-alive HTTP/1.1 connections per replica (http1.py), opened on first use and kept.
Two wires:
- "json" (TF Serving, and torch_service with GATEWAY_TORCH_WIRE=json): TF Serving's REST predict. A
  valid body is forwarded as the client sent it and the answer passed back as bytes.
- "binary" (torch_service by default): the Open Inference Protocol's `infer` with the binary tensor
  data extension (serving_core.oip). The gateway has already parsed and validated the JSON, so it
  sends the float32 tensor itself (3 KB an image, not the 9-17 KB of JSON text) and torch_service
  does not parse the same numbers a second time; the answer comes back as raw tensors and is
  rendered once, here, in TF Serving's shape. The same reasoning as the TF upstream's gRPC, which
  also carries tensor bytes.
"""

from __future__ import annotations

from typing import Literal

import orjson

from gateway.errors import BadGateway, UpstreamError, UpstreamTimeout
from gateway.upstreams.balancer import Replica
from gateway.upstreams.http1 import ConnectFailed, ConnectionLost, Http1Pool, HttpResponse, ProtocolError
from gateway.upstreams.pool import PredictResult, ReplicaDown
from gateway.validation import PredictRequest, encode_predict_body
from serving_core import contract, oip
from serving_core.errors import ServingError

Wire = Literal["json", "binary"]


def _error_message(resp: HttpResponse) -> str:
    try:
        doc = orjson.loads(resp.content)
        if isinstance(doc, dict) and "error" in doc:
            return str(doc["error"])
    except orjson.JSONDecodeError:
        pass
    return resp.content[:500].decode("utf-8", "replace") or f"HTTP {resp.status}"


def _raise_for_status(resp: HttpResponse) -> None:
    if resp.status == 200:
        return
    message = _error_message(resp)
    if resp.status in (502, 503):
        # Overloaded or not ready: another replica may take it; this one rests for the cool-down.
        raise ReplicaDown(f"HTTP {resp.status}: {message}")
    if resp.status == 504:
        raise UpstreamTimeout(message)
    raise UpstreamError(message, status=resp.status)


class RestTransport:
    protocol = "rest"

    def __init__(
        self,
        *,
        timeout_s: float,
        connect_timeout_s: float,
        health_timeout_s: float,
        max_connections: int,
        wire: Wire = "json",
    ) -> None:
        self.wire: str = wire
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

    async def _call(
        self,
        replica: Replica,
        method: str,
        path: str,
        body: bytes,
        timeout: float,
        content_type: str = "application/json",
        extra_headers: str = "",
    ) -> HttpResponse:
        try:
            return await self._pool(replica.address).request(method, path, body, content_type, extra_headers, timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {replica.address} timed out after {timeout:g}s") from None
        except (ConnectFailed, ConnectionLost) as exc:
            raise ReplicaDown(f"{type(exc).__name__}: {exc}") from None
        except (ProtocolError, ValueError) as exc:
            raise BadGateway(f"upstream {replica.address}: {exc}") from None

    async def predict(
        self, replica: Replica, model: str, version: str | None, inp: PredictRequest, raw_body: bytes | None
    ) -> PredictResult:
        if self.wire == "binary":
            return await self._predict_binary(replica, model, version, inp)
        path = f"/v1/models/{model}/versions/{version}:predict" if version else f"/v1/models/{model}:predict"
        body = raw_body if raw_body is not None else encode_predict_body(inp)
        resp = await self._call(replica, "POST", path, body, self._timeout)
        _raise_for_status(resp)
        return PredictResult(
            body=resp.content,
            version=resp.headers.get("x-model-version", version),
            latency_ms=0.0,
            replica=replica.address,
            fmt=inp.format,
        )

    async def _predict_binary(
        self, replica: Replica, model: str, version: str | None, inp: PredictRequest
    ) -> PredictResult:
        path = f"/v2/models/{model}/versions/{version}/infer" if version else f"/v2/models/{model}/infer"
        body, header_length = oip.binary_infer_request(inp.images)
        resp = await self._call(
            replica,
            "POST",
            path,
            body,
            self._timeout,
            oip.BINARY_CONTENT_TYPE,
            f"Inference-Header-Content-Length: {header_length}\r\n",
        )
        _raise_for_status(resp)
        n = len(inp.images)
        try:
            served, tensors = oip.read_infer_response(resp.content, resp.headers.get(oip.HEADER_LENGTH))
            probs, classes = tensors[contract.OUTPUT_PROBABILITIES], tensors[contract.OUTPUT_CLASSES]
            if probs.shape != (n, contract.NUM_CLASSES) or classes.shape != (n,):
                raise ValueError(f"outputs of shapes {list(probs.shape)} and {list(classes.shape)} for {n} images")
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, ServingError) as exc:
            raise BadGateway(f"upstream {replica.address} answered an unexpected body: {exc}") from None
        return PredictResult(
            body=None,
            version=served or version,
            latency_ms=0.0,
            replica=replica.address,
            fmt=inp.format,
            tensors=tensors,
        )

    async def probe(self, replica: Replica, model: str) -> int | None:
        """Highest AVAILABLE version from TF Serving's model status API, None when none is."""
        resp = await self._call(replica, "GET", f"/v1/models/{model}", b"", self._health_timeout)
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {_error_message(resp)}")
        statuses = orjson.loads(resp.content).get("model_version_status", [])
        versions = [int(s["version"]) for s in statuses if s.get("state") == "AVAILABLE"]
        return max(versions) if versions else None
