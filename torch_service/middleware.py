"""One pure-ASGI middleware for the hot path: body-size cap, in-flight gauge, request counts and latency.

Pure ASGI rather than BaseHTTPMiddleware, which costs a task and a stream per request.
"""

from __future__ import annotations

import time

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving_core.content_encoding import decoding
from serving_core.errors import PayloadTooLarge
from serving_core.routes import head_as_get
from torch_service.metrics import Metrics

_TIMED = frozenset({"predict", "infer"})


def endpoint_label(path: str) -> str:
    """A small fixed set of labels (never the raw path: that would let clients explode cardinality)."""
    if path.startswith("/v1/models/"):
        if path.endswith(":predict"):
            return "predict"
        return "metadata" if path.endswith("/metadata") else "status" if ":" not in path else "v1_other"
    if path.startswith("/v2"):
        if path.endswith("/infer"):
            return "infer"
        if path.startswith("/v2/health") or path.endswith("/ready"):
            return "health"
        return "v2_metadata"
    if path == "/metrics":
        return "metrics"
    return "other"


class ServingMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes

    async def _reject_too_large(self, send: Send, length: int) -> None:
        body = orjson.dumps({"error": f"Request body of {length} bytes exceeds the limit of {self.max_body} bytes"})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        # Close the connection: the client may still be sending the body we refuse to read.
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = head_as_get(scope)
        endpoint = endpoint_label(scope["path"])
        m = self.metrics
        start = time.perf_counter()
        status = [500]  # what the count records if the app dies before answering
        m.in_flight.inc()
        try:
            encoding = None
            for key, value in scope["headers"]:
                if key == b"content-length":
                    length = int(value) if value.isdigit() else 0
                    if length > self.max_body:
                        status[0] = 413
                        await self._reject_too_large(send, length)
                        return
                elif key == b"content-encoding":
                    encoding = value.decode("latin-1")
            max_body = self.max_body
            received = 0

            async def counting_receive() -> Message:
                # Content-Length can be absent (chunked) or lie: count what actually arrives.
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > max_body:
                        raise PayloadTooLarge(f"Request body exceeds the limit of {max_body} bytes")
                return message

            async def recording_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                    if status[0] == 413:  # a body streaming past the limit: the rest of it is not read
                        message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
                await send(message)

            receive_body: Receive = counting_receive  # the cap counts compressed bytes, and decoding applies it again
            if encoding is not None:  # gzip, uncompressed here as TF Serving does (serving_core.content_encoding)
                scope, receive_body = decoding(scope, counting_receive, encoding, max_body)
            await self.app(scope, receive_body, recording_send)
        except ClientDisconnect:
            # The client left before its body arrived: nobody to answer, and not a server error (499,
            # as nginx logs it) — counting it as a 500 would page someone for a client's hang-up.
            status[0] = 499
        finally:
            m.in_flight.dec()
            m.requests.labels(endpoint, str(status[0])).inc()
            if endpoint in _TIMED:
                m.latency.observe(time.perf_counter() - start)
