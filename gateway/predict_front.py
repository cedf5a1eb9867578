"""Predict answered below ASGI: the gateway's hot path as a cycle of uvicorn's HTTP protocol.

Through ASGI each predict call pays for uvicorn's request cycle (a scope dict, receive and send
messages and their checks, an asyncio.Event), the gateway's two ASGI layers and a response head built
header by header. benchmarks/callback_front.py measured the same predict work without any of that at
about half the gateway's CPU per request, and 0.2 ms less p50 overhead on the project's 2-vCPU VM.
This keeps what made the difference and nothing else: when a predict request's head is complete, the
front claims it (serving_core.http_protocol.RequestFront), collects its body, runs `serve_predict` (the
same function the ASGI routes call: validation, balancing, retry, ejection, timeouts) in one task, and
writes the answer, head and body, in one write. Keep-alive, pipelining order, flow control, the read
time limits, disconnects and graceful shutdown stay uvicorn's, which drives this cycle like its own.

The request id, API keys, body cap, metrics, access log and the error mapping are the same pieces
the ASGI layers use (gateway/middleware.py, gateway/errors.py), so both paths answer alike; the tests
send every bad input through both and compare. Only the common case is claimed. Anything else goes on
to ASGI unchanged: another method or path, a percent-encoded path, HTTP/1.0, `Expect`, a chunked
body, a body over INLINE_PARSE_BYTES (parsed in a worker thread there) or over the cap (413), and
a missing or wrong API key (401).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from gateway.api.deps import INLINE_PARSE_BYTES
from gateway.api.predict import serve_predict
from gateway.errors import error_for
from gateway.fastpath import PREDICT_PATH, query_backend
from gateway.middleware import ApiKeys, Recorder, request_id
from gateway.service import Gateway
from serving_core.http_protocol import TimedHttpToolsProtocol

log = logging.getLogger("gateway")

_JSON_HEAD = b"content-type: application/json\r\ncontent-length: "


class PredictFront:
    """Decides, per request head, whether the predict cycle below serves it."""

    def __init__(self, gateway: Gateway, *, api_keys: ApiKeys, max_body_bytes: int, recorder: Recorder) -> None:
        self.gateway = gateway
        self.keys = api_keys
        self.max_inline_body = min(INLINE_PARSE_BYTES, max_body_bytes)
        self.recorder = recorder
        self._default_headers: list[tuple[bytes, bytes]] | None = None
        self._default_block = b""

    def claim(self, proto: TimedHttpToolsProtocol) -> PredictCycle | None:
        parser = proto.parser
        if parser.get_method() != b"POST" or parser.get_http_version() != "1.1" or proto.expect_100_continue:
            return None
        url = httptools.parse_url(proto.url)
        raw_path: bytes = url.path
        if b"%" in raw_path or proto.root_path:
            return None  # (uvicorn unquotes; the ASGI path answers these)
        path = raw_path.decode("ascii", "replace")
        match = PREDICT_PATH.fullmatch(path)
        if match is None:
            return None
        length = rid = backend = authorization = None
        for name, value in proto.headers:  # names are lower-case (uvicorn's on_header)
            if name == b"content-length":
                length = value
            elif name == b"x-request-id":
                rid = value
            elif name == b"x-backend" and backend is None:  # the first one, as Starlette's headers.get
                backend = value
            elif name == b"authorization":
                authorization = value
            elif name == b"transfer-encoding" or name == b"expect":
                return None
        if length is None or not length.isdigit() or int(length) > self.max_inline_body:
            return None
        if self.keys.keys and not self.keys.authorized(authorization):
            return None
        return PredictCycle(
            self,
            proto,
            path,
            match.group(1),
            match.group(2),
            query_backend(url.query) if url.query else None,
            backend.decode("latin-1") if backend is not None else None,
            request_id(rid),
            parser.should_keep_alive(),
        )

    def default_headers(self, proto: TimedHttpToolsProtocol) -> bytes:
        """uvicorn's server and date headers as one block (the server renews the list every second)."""
        headers = proto.server_state.default_headers
        if headers is not self._default_headers:
            self._default_block = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            self._default_headers = headers
        return self._default_block


class _BodyEvent:
    """The `message_event` uvicorn's protocol sets on body data, body end and disconnect."""

    __slots__ = ("cycle",)

    def __init__(self, cycle: PredictCycle) -> None:
        self.cycle = cycle

    def set(self) -> None:
        waiter = self.cycle.waiter
        if waiter is not None and not waiter.done() and (not self.cycle.more_body or self.cycle.disconnected):
            waiter.set_result(None)


class PredictCycle:
    """One predict request on one connection, from its complete head to its written answer."""

    __slots__ = (
        "backend",
        "body",
        "disconnected",
        "front",
        "keep_alive",
        "message_event",
        "model",
        "more_body",
        "path",
        "proto",
        "query_backend",
        "request_id",
        "response_complete",
        "start",
        "version",
        "waiter",
    )

    def __init__(
        self,
        front: PredictFront,
        proto: TimedHttpToolsProtocol,
        path: str,
        model: str,
        version: str | None,
        query_backend: str | None,
        backend: str | None,
        rid: str,
        keep_alive: bool,
    ) -> None:
        self.start = time.perf_counter()
        self.front = front
        self.proto = proto
        self.path = path
        self.model = model
        self.version = version
        self.query_backend = query_backend
        self.backend = backend
        self.request_id = rid
        self.keep_alive = keep_alive
        self.body = bytearray()
        self.more_body = True
        self.disconnected = False
        self.response_complete = False
        self.waiter: asyncio.Future[None] | None = None
        self.message_event = _BodyEvent(self)

    async def run_asgi(self, _app: object) -> None:
        """The task uvicorn starts for this request (named after the ASGI one it stands in for)."""
        info: dict[str, Any] = {"request_id": self.request_id}
        status = 500
        try:
            if self.more_body and not self.disconnected:
                # The body is still arriving (the usual one came in the same read as the head).
                self.proto.flow.resume_reading()
                self.waiter = self.proto.loop.create_future()
                await self.waiter
            if self.disconnected:
                info["client_gone"] = True  # nobody to answer: logged as 499, as nginx does
                return
            status = await self._answer(info)
        except asyncio.CancelledError:  # past the graceful shutdown's time limit: no answer can follow
            self.proto.transport.close()
            raise
        except Exception:  # a bug in writing the answer: this connection's framing is lost
            log.exception("predict cycle failed")
            self.proto.transport.close()
        finally:
            self.front.recorder.record("POST", self.path, info, 499 if self.disconnected else status, self.start)

    async def _answer(self, info: dict[str, Any]) -> int:
        extra = b""
        try:
            content, headers = await serve_predict(
                self.front.gateway,
                info,
                self.model,
                self.version,
                self.query_backend,
                self.backend,
                bytes(self.body),
            )
            for name, value in headers.items():  # (values checked by serve_predict)
                extra += name.encode() + b": " + value.encode("latin-1") + b"\r\n"
            status = 200
        except Exception as exc:  # every error becomes {"error": ...}, as through the ASGI path
            status, message, extra_headers = error_for(exc)
            content = orjson.dumps({"error": message})
            extra = b"".join(
                k.lower().encode() + b": " + v.encode("latin-1") + b"\r\n" for k, v in (extra_headers or {}).items()
            )
        await self._write(status, content, extra)
        return status

    async def _write(self, status: int, content: bytes, extra: bytes) -> None:
        proto = self.proto
        if proto.flow.write_paused and not self.disconnected:
            await proto.flow.drain()  # the client is not reading: wait, as uvicorn's send does
        if self.disconnected or proto.transport.is_closing():
            # Gone while the backend answered. (uvicorn marks only the newest request of a connection
            # disconnected; one answered while a pipelined request waited finds the transport closed.)
            self.disconnected = True
            return
        head = b"".join(
            (
                STATUS_LINE[status],
                self.front.default_headers(proto),
                _JSON_HEAD,
                str(len(content)).encode(),
                b"\r\n",
                extra,
                b"x-request-id: ",
                self.request_id.encode(),
                b"\r\n" if self.keep_alive else b"\r\nconnection: close\r\n",
                b"\r\n",
            )
        )
        proto.transport.write(head + content)
        self.response_complete = True
        if not self.keep_alive:
            proto.transport.close()
        proto.on_response_complete()
