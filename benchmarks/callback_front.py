"""An experiment, not a server to deploy: the torch predict path written as bare uvloop callbacks.

It measures how much of the gateway's overhead belongs to the serving machinery it runs on: uvicorn's
ASGI cycle (scope, messages, one task per request), the gateway's ASGI layers, and asyncio streams
and futures for the upstream call. It does the same per-request work as the gateway's predict path
over the binary wire: the same parser and validation (serving_core.tfs_rest), the same binary
request to torch_service and the same rendering of its answer (serving_core.oip). It does all of it in
protocol callbacks, with one upstream connection per client connection, and nothing else: no request
id, API keys, body cap, metrics, access log, timeouts, replicas, retries or error mapping beyond
400/upstream status. What it saves is an upper bound on what moving the gateway's predict path below
ASGI could save.

Two more modes put the gateway's own code back, one layer at a time, to find where its cost lies:
- `pool`: the request is parsed as above, then sent through the gateway's real BackendPool (balancer,
  retry and ejection bookkeeping, the per-call timeout, RestTransport's binary wire and the pooled
  HTTP/1.1 client) in one task per request, and the answer rendered by PredictResult;
- `serve`: the gateway's whole `serve_predict` (what its ASGI fast path calls: backend choice, model
  check, parsing, the pool, the upstream-latency metric and the answer headers) in one task per request.
What is left between `serve` and the gateway itself is uvicorn's HTTP protocol and ASGI cycle, the
gateway's ASGI layers and its per-request features (request id, API keys, metrics, access log).

    python benchmarks/gateway_overhead.py --backends torch --client wrk --callback-front bare,pool,serve

starts one front per mode next to the gateway (`python benchmarks/callback_front.py PORT TORCH_PORT
[MODE]`) and measures each as one more way through to torch_service, in the same rounds.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from pathlib import Path

import httptools
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.api.predict import serve_predict
from gateway.errors import GatewayError, error_for
from gateway.metrics import Metrics
from gateway.service import Gateway
from gateway.settings import Settings
from serving_core import oip
from serving_core.errors import ServingError
from serving_core.tfs_rest import PredictRequest, parse_predict_body, predict_response


class _Upstream(asyncio.Protocol):
    """One kept-alive connection to torch_service; each complete answer goes to its front."""

    def __init__(self, front: _Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.header_length: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"inference-header-content-length":
            self.header_length = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        header_length, self.header_length = self.header_length, None
        self.front.answered(self.parser.get_status_code(), body, header_length)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.close()


class _Door(asyncio.Protocol):
    """The front door both kinds of front share: httptools parsing, a body per request, a bare answer."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def _reply(self, status: int, content: bytes) -> None:
        self.transport.write(
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, len(content), content)
        )

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    def close(self) -> None:
        self.transport.close()


class _GatewayFront(_Door):
    """Modes `pool` and `serve`: the same front door, the gateway's own code behind it."""

    def __init__(self, gateway: Gateway, mode: str) -> None:
        super().__init__()
        self.gateway = gateway
        self.mode = mode

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        asyncio.get_running_loop().create_task(self._answer(body))

    async def _answer(self, body: bytes) -> None:
        try:
            if self.mode == "pool":
                request = parse_predict_body(body, max_batch_size=32)
                result = await self.gateway.pools["torch"].predict("cnn", None, request, None)
                content = result.json_body()
            else:
                content, _ = await serve_predict(self.gateway, {}, "cnn", None, None, None, body)
            status = 200
        except (ServingError, GatewayError) as exc:
            status, message, _ = error_for(exc)
            content = orjson.dumps({"error": message})
        self._reply(status, content)


class _Front(_Door):
    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.upstream: _Upstream | None = None
        self.waiting: bytes | None = None  # a body that arrived before the upstream connection
        self.request: PredictRequest | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(lambda: _Upstream(self), "127.0.0.1", self.upstream_port)
        self.upstream = upstream
        if self.waiting is not None:
            self._forward(self.waiting)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        if self.upstream is None:
            self.waiting = body
        else:
            self._forward(body)

    def _forward(self, body: bytes) -> None:
        try:
            self.request = parse_predict_body(body, max_batch_size=32)
        except ServingError as exc:
            self._reply(exc.http_status, orjson.dumps({"error": exc.message}))
            return
        payload, header_length = oip.binary_infer_request(self.request.images)
        assert self.upstream is not None and self.upstream.transport is not None
        self.upstream.transport.write(
            b"POST /v2/models/cnn/infer HTTP/1.1\r\nHost: torch\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\nInference-Header-Content-Length: %d\r\n\r\n%s"
            % (len(payload), header_length, payload)
        )

    def answered(self, status: int, body: bytes, header_length: str | None) -> None:
        if status != 200 or self.request is None:
            self._reply(status, body)
            return
        _, outputs = oip.read_infer_response(body, header_length)
        self._reply(200, predict_response(self.request.format, outputs))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


MODES = ("bare", "pool", "serve")


def main() -> None:
    port, upstream_port = int(sys.argv[1]), int(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else "bare"
    if mode not in MODES:
        raise SystemExit(f"mode {mode!r}: one of {', '.join(MODES)}")

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        if mode == "bare":
            server = await loop.create_server(lambda: _Front(upstream_port), "127.0.0.1", port)
        else:
            settings = Settings(
                torch_urls=[f"http://127.0.0.1:{upstream_port}"],
                tf_protocol="rest",
                tf_rest_urls=[f"http://127.0.0.1:{upstream_port}"],  # never called: torch only
                access_log=False,
            )
            gateway = Gateway(settings, Metrics())
            await gateway.start()
            # The gateway's own GC tuning (gateway/__main__.py), so only the code path differs.
            gc.freeze()
            gc.set_threshold(20_000, 50, 100)
            server = await loop.create_server(lambda: _GatewayFront(gateway, mode), "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
