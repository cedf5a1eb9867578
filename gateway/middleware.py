"""One pure-ASGI middleware for every request: request id, API keys, body cap, metrics, access log.

One layer rather than four (and no BaseHTTPMiddleware) because each layer costs tens of
microseconds per request and the gateway's overhead budget is half a millisecond.
"""

from __future__ import annotations

import hmac
import os
import re
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.access_log import AccessLog
from gateway.errors import LOG_KEY, PayloadTooLarge
from gateway.metrics import Metrics
from serving_core.content_encoding import decoding
from serving_core.http_protocol import CLIENT_GONE, REFUSED
from serving_core.routes import head_as_get

# Open without a key: probes, scrapers and the API docs.
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
# A client's request id is echoed only if it is short and printable (it ends up in logs and headers).
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


# On every 413, as nginx does: the rest of an over-limit body is not read (chunked bodies that stream past
# the limit included: kept alive, uvicorn read and dropped 11 GiB in 5 s of one). serving_core.http_protocol
# closes such a connection lingering, so the answer still reaches the client.
_CLOSE = (b"connection", b"close")
_PREDICT_PATH = re.compile(r"/v1/models/[^/]+(?:/versions/[^/]+)?:predict")
_ENDPOINTS = {"/v1/compare": "compare", "/v1/classify": "classify", "/v1/backends": "backends"}


def endpoint_of(path: str) -> str:
    """The `endpoint` label of a request no handler labelled: its route's, or "other"."""
    if _PREDICT_PATH.fullmatch(path):
        return "predict"
    return _ENDPOINTS.get(path, "other")


def _json_error(status: int, message: str, extra_headers: list[tuple[bytes, bytes]]) -> tuple[Message, Message]:
    body = orjson.dumps({"error": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra_headers]
    return (
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    )


class GatewayMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_keys: list[str],
        max_body_bytes: int,
        metrics: Metrics,
        access_log: AccessLog | None,
    ) -> None:
        self.app = app
        self.keys = [k.encode() for k in api_keys]
        self.max_body = max_body_bytes
        self.metrics = metrics
        self.access_log = access_log
        # Labelled children cached per label set: prometheus_client's labels() lookup costs a few
        # microseconds each, three times per request.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        value = headers.get(b"authorization", b"")
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        # Compare against every key without stopping early, so timing tells nothing about which matched.
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(token.strip(), key)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        asked = scope  # the access log records the method as sent (HEAD), not as routed
        scope = head_as_get(scope)
        start = time.perf_counter()
        headers = dict(scope["headers"])
        rid_in = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = rid_in if rid_in and _REQUEST_ID.match(rid_in) else os.urandom(16).hex()
        info: dict[str, Any] = {"request_id": rid}
        scope[LOG_KEY] = info
        rid_header = (b"x-request-id", rid.encode())
        status_box = [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
                extra = [rid_header, _CLOSE] if message["status"] == 413 else [rid_header]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        path: str = scope["path"]
        try:
            if self.keys and path not in PUBLIC_PATHS and not self._authorized(headers):
                for msg in _json_error(
                    401,
                    "missing or invalid API key (send 'Authorization: Bearer <key>')",
                    [(b"www-authenticate", b"Bearer"), rid_header],
                ):
                    await send(msg)
                status_box[0] = 401
                return
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                # Closed after the answer, as nginx does: kept alive, the server would have to read and drop the
                # whole declared body (a review sent 300 MiB that way) before the next request.
                for msg in _json_error(
                    413,
                    f"Request body of {int(length)} bytes exceeds the limit of {self.max_body} bytes",
                    [rid_header, _CLOSE],
                ):
                    await send(msg)
                status_box[0] = 413
                return
            receive = self._capped(receive) if length is None else receive  # the cap counts compressed bytes
            encoding = headers.get(b"content-encoding")
            if encoding is not None:  # gzip, uncompressed here as TF Serving does (serving_core.content_encoding)
                scope, receive = decoding(scope, receive, encoding.decode("latin-1"), self.max_body)
            await self.app(scope, receive, send_with_id)
        finally:
            # A client that left before its answer was written was nobody's error and got nothing: 499, as
            # nginx logs it. Before its body arrived: set by the fast path, and by the ClientDisconnect
            # handler for FastAPI's routes (gateway/errors.py); later (while a backend worked, say): by the
            # HTTP protocol (serving_core.http_protocol), whose sends after that went nowhere.
            # A malformed body is answered by the HTTP protocol itself (400), which also tells the app the client
            # left: the status recorded is the one the client got.
            refused = asked.get(REFUSED)
            gone = info.get("client_gone") or asked.get(CLIENT_GONE)
            self._record(asked, info, refused or (499 if gone else status_box[0]), start)

    def _capped(self, receive: Receive) -> Receive:
        """Chunked bodies have no Content-Length: count as they arrive and stop at the cap."""
        seen = 0
        limit = self.max_body

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes")
            return message

        return capped

    def _record(self, scope: Scope, info: dict[str, Any], status: int, start: float) -> None:
        elapsed = time.perf_counter() - start
        endpoint = info.get("endpoint")
        if endpoint is None and status >= 400:
            # Refused before a handler ran (401, 404, 405, 413, 499): counted too, so floods of them show.
            endpoint = endpoint_of(scope["path"])
        backend = info.get("backend", "-")
        if endpoint is not None:
            key = (endpoint, backend, status)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = (
                    self.metrics.requests.labels(endpoint, backend, str(status)),
                    self.metrics.latency.labels(endpoint, backend),
                )
            series[0].inc()
            series[1].observe(elapsed)
        if self.access_log is not None:
            self.access_log.write(
                {
                    "ts": time.time(),
                    "id": info["request_id"],
                    "method": scope["method"],
                    "path": scope["path"],
                    "backend": info.get("backend"),
                    "replica": info.get("replica"),
                    "status": status,
                    "latency_ms": round(elapsed * 1000.0, 3),
                }
            )
