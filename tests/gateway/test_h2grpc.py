"""gateway/upstreams/h2grpc.py, the gateway's own gRPC client, against real gRPC servers.

Two kinds of server, both grpcio's C core (the same HTTP/2 implementation TF Serving is built on):
an in-process `grpc.server` with raw-bytes test methods (echo, slow, fail, big), where each protocol
path can be provoked (flow control, stream limits, deadlines, cancellation, keepalive PINGs, GOAWAY
on shutdown, reconnect); and the real TF-Serving-compatible server, whose answers must equal what
grpcio's own client gets for the same request.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from devstack.process import free_port
from gateway.errors import UpstreamTimeout
from gateway.upstreams import h2grpc
from gateway.upstreams.balancer import Replica
from gateway.upstreams.grpc import GrpcTransport, tensor_to_numpy
from gateway.upstreams.tfs_protos import PredictResponse
from gateway.validation import PredictRequest
from tests.gateway.conftest import Procs, tf_compat

pytestmark = pytest.mark.integration


class TestServer:
    """A real grpcio server with raw-bytes unary methods under /test.T/."""

    __test__ = False  # not a pytest class

    def __init__(self, port: int | None = None, **options: Any) -> None:
        self.port = port or free_port()
        self.cancelled = threading.Event()
        self.started_slow = threading.Event()
        self.peers: set[str] = set()
        handlers = {
            "Echo": self._echo,
            "Slow": self._slow,
            "Fail": self._fail,
            "Big": self._big,
        }
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=64), options=list(options.items()), maximum_concurrent_rpcs=None
        )
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.T", {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in handlers.items()}
                ),
            )
        )
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.peers.add(context.peer())
        return request

    def _slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.started_slow.set()
        deadline = time.monotonic() + float(request.decode())
        while time.monotonic() < deadline:
            if not context.is_active():
                self.cancelled.set()
                return b""
            time.sleep(0.01)
        return b"done"

    def _fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, request.decode())
        raise AssertionError("abort raises")

    def _big(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return bytes(range(256)) * (int(request.decode()) // 256)

    def stop(self, grace: float | None = None) -> None:
        self.server.stop(grace).wait()


@pytest.fixture
def server() -> Iterator[TestServer]:
    s = TestServer()
    yield s
    s.stop(0)


def block(target: str, method: str, timeout_s: float | None = 30.0) -> bytes:
    return h2grpc.header_block(target, f"/test.T/{method}", timeout_s)


async def test_echo_many_sizes_one_connection(server: TestServer) -> None:
    ch = h2grpc.H2Channel(server.target, connect_timeout_s=2)
    try:
        for size in (0, 1, 100, 16_379, 16_384, 70_000, 3 * 1024 * 1024 + 7):
            payload = bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8))
            assert await ch.unary(block(server.target, "Echo"), payload) == payload
        assert len(server.peers) == 1  # every call on the one kept connection
    finally:
        ch.close()


async def test_large_answer_spans_many_frames(server: TestServer) -> None:
    ch = h2grpc.H2Channel(server.target, connect_timeout_s=2)
    try:
        out = await ch.unary(block(server.target, "Big"), b"%d" % (5 * 1024 * 1024))
        assert out == bytes(range(256)) * (5 * 1024 * 1024 // 256)
    finally:
        ch.close()


async def test_concurrent_calls_respect_the_servers_stream_limit() -> None:
    server = TestServer(**{"grpc.max_concurrent_streams": 4})
    ch = h2grpc.H2Channel(server.target, connect_timeout_s=2)
    try:
        payloads = [b"call-%d-" % i * (i % 50 + 1) for i in range(200)]
        got = await asyncio.gather(*(ch.unary(block(server.target, "Echo"), p) for p in payloads))
        assert got == payloads
        assert len(server.peers) == 1
    finally:
        ch.close()
        server.stop(0)


async def test_error_status_and_percent_encoded_message(server: TestServer) -> None:
    ch = h2grpc.H2Channel(server.target, connect_timeout_s=2)
    message = "naïve input: 100% wrong / try again"
    try:
        with pytest.raises(h2grpc.GrpcError) as info:
            await ch.unary(block(server.target, "Fail"), message.encode())
        assert (info.value.code, info.value.code_name, info.value.message) == (9, "FAILED_PRECONDITION", message)
        with pytest.raises(h2grpc.GrpcError) as info:
            await ch.unary(block(server.target, "NoSuchMethod"), b"")
        assert info.value.code_name == "UNIMPLEMENTED"
        assert await ch.unary(block(server.target, "Echo"), b"still fine") == b"still fine"
    finally:
        ch.close()


async def test_grpc_timeout_header_is_enforced_by_the_server(server: TestServer) -> None:
    ch = h2grpc.H2Channel(server.target, connect_timeout_s=2)
    try:
        with pytest.raises(h2grpc.GrpcError) as info:
            await ch.unary(block(server.target, "Slow", timeout_s=0.2), b"3")
        assert info.value.code_name == "DEADLINE_EXCEEDED"
    finally:
        ch.close()


@pytest.mark.parametrize("how", ["timeout argument", "caller's asyncio.timeout"])
async def test_caller_timeout_cancels_the_call_on_the_server(server: TestServer, how: str) -> None:
    ch = h2grpc.H2Channel(server.target, connect_timeout_s=2)
    server.cancelled.clear()
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            if how == "timeout argument":
                await ch.unary(block(server.target, "Slow"), b"5", timeout=0.3)
            else:
                async with asyncio.timeout(0.3):
                    await ch.unary(block(server.target, "Slow"), b"5")
        assert time.monotonic() - start < 1.0
        # RST_STREAM(CANCEL) reached the server: its handler saw the call end, long before 5 s.
        assert await asyncio.to_thread(server.cancelled.wait, 3)
        assert await ch.unary(block(server.target, "Echo"), b"after") == b"after"
        assert len(server.peers) == 1  # the connection survived the reset stream
    finally:
        ch.close()


async def test_keepalive_pings_are_answered() -> None:
    server = TestServer(
        **{
            "grpc.keepalive_time_ms": 100,
            "grpc.keepalive_timeout_ms": 300,
            "grpc.keepalive_permit_without_calls": 1,
            "grpc.http2.max_pings_without_data": 0,
        }
    )
    ch = h2grpc.H2Channel(server.target, connect_timeout_s=2)
    try:
        assert await ch.unary(block(server.target, "Echo"), b"1") == b"1"
        conn = ch._conn
        await asyncio.sleep(1.5)  # many ping intervals; an unanswered ping would close it after 300 ms
        assert conn is not None and conn.usable and conn.pings_answered >= 3
        assert await ch.unary(block(server.target, "Echo"), b"2") == b"2"
        assert ch._conn is conn
    finally:
        ch.close()
        server.stop(0)


async def test_graceful_shutdown_finishes_calls_in_flight_then_reconnects() -> None:
    server = TestServer()
    port = server.port
    ch = h2grpc.H2Channel(server.target, connect_timeout_s=2)
    try:
        slow = asyncio.ensure_future(ch.unary(block(server.target, "Slow"), b"0.5"))
        assert await asyncio.to_thread(server.started_slow.wait, 5)
        stopping = asyncio.ensure_future(asyncio.to_thread(server.stop, 5))  # GOAWAY, then waits for calls
        assert await slow == b"done"
        await stopping
        with pytest.raises((h2grpc.ConnectFailed, h2grpc.StreamRefused, h2grpc.ConnectionLost)):
            await ch.unary(block(server.target, "Echo"), b"x")
        server = TestServer(port=port)  # the replica comes back on its address
        assert await ch.unary(block(server.target, "Echo"), b"back") == b"back"
    finally:
        ch.close()
        server.stop(0)


async def test_server_killed_mid_call_fails_that_call() -> None:
    server = TestServer()
    ch = h2grpc.H2Channel(server.target, connect_timeout_s=2)
    try:
        slow = asyncio.ensure_future(ch.unary(block(server.target, "Slow"), b"5"))
        assert await asyncio.to_thread(server.started_slow.wait, 5)
        await asyncio.to_thread(server.stop, 0)  # no grace: in-flight calls are cut off
        with pytest.raises((h2grpc.ConnectionLost, h2grpc.GrpcError)):
            async with asyncio.timeout(5):
                await slow
    finally:
        ch.close()


async def test_nothing_listening_is_connect_failed() -> None:
    target = f"127.0.0.1:{free_port()}"
    ch = h2grpc.H2Channel(target, connect_timeout_s=2)
    with pytest.raises(h2grpc.ConnectFailed):
        await ch.unary(block(target, "Echo"), b"")


async def test_not_an_http2_server_is_a_clear_error() -> None:
    async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")  # and keeps the connection
        await asyncio.sleep(10)

    server = await asyncio.start_server(http1, "127.0.0.1", 0)
    target = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    ch = h2grpc.H2Channel(target, connect_timeout_s=2)
    try:
        with pytest.raises(h2grpc.ProtocolError, match="not an HTTP/2 server"):
            async with asyncio.timeout(5):
                await ch.unary(block(target, "Echo"), b"")
    finally:
        ch.close()
        server.close()


async def test_silent_connection_is_replaced_after_a_timeout() -> None:
    """A peer that accepts and then says nothing (a dead host behind a live route): the timed-out call
    is a 504, and the next call does not wait on the same dead connection but opens a new one."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # reads (our preface, our calls), never writes

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    replica = Replica("tf", f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
    transport = GrpcTransport(timeout_s=0.3, health_timeout_s=0.3, client="h2")
    inp = PredictRequest("row", "serving_default", np.zeros((1, 28, 28, 1), np.float32))
    try:
        for expected_connections in (1, 2):
            with pytest.raises(UpstreamTimeout):
                await transport.predict(replica, "cnn", None, inp, None)
            assert len(accepted) == expected_connections
    finally:
        await transport.close()
        server.close()


async def test_calls_on_a_server_gone_silent_each_end_at_their_own_deadline() -> None:
    """A server that stops answering on a live connection (a frozen process): the first call to time out
    sends the next calls to a new connection, and the calls already waiting on the old one still end as
    timeouts (504) at their own deadlines, not all at once as a lost connection (503 after the retry)."""
    accepted: list[asyncio.StreamWriter] = []

    async def frozen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        writer.write(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # its SETTINGS (empty), then nothing
        await reader.read()

    server = await asyncio.start_server(frozen, "127.0.0.1", 0)
    replica = Replica("tf", f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
    transport = GrpcTransport(timeout_s=0.3, health_timeout_s=0.3, client="h2")
    inp = PredictRequest("row", "serving_default", np.zeros((1, 28, 28, 1), np.float32))
    try:
        channel = transport._h2_channel(replica.address)[0]
        await channel._connection()  # connected and settled before the server "freezes"
        await asyncio.sleep(0.02)
        calls = []
        for _ in range(4):
            calls.append(asyncio.ensure_future(transport.predict(replica, "cnn", None, inp, None)))
            await asyncio.sleep(0.02)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert [type(o).__name__ for o in outcomes] == ["UpstreamTimeout"] * 4
        with pytest.raises(UpstreamTimeout):
            await transport.predict(replica, "cnn", None, inp, None)
        assert len(accepted) == 2  # the call after the first timeout went to a new connection
    finally:
        await transport.close()
        server.close()


async def test_answer_before_the_upload_ends_is_not_lost(server: TestServer) -> None:
    """The server answers (here: UNIMPLEMENTED) while our 8 MB request still waits for its 4 MiB
    stream window: the call ends with that answer at once, not at its timeout."""
    ch = h2grpc.H2Channel(server.target, connect_timeout_s=2)
    try:
        async with asyncio.timeout(5):
            with pytest.raises(h2grpc.GrpcError) as info:
                await ch.unary(block(server.target, "NoSuchMethod"), b"x" * (8 * 1024 * 1024))
        assert info.value.code_name == "UNIMPLEMENTED"
        assert await ch.unary(block(server.target, "Echo"), b"next") == b"next"
    finally:
        ch.close()


# -- a scripted HTTP/2 peer, for what grpcio servers never do on demand -------------------------------

OnConnection = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
    hi, lo, ftype, flags, sid = struct.unpack(">HBBBI", await reader.readexactly(9))
    return ftype, flags, sid & 0x7FFFFFFF, await reader.readexactly((hi << 8) | lo)


def answer(encoder: Any, sid: int, body: bytes) -> bytes:
    head = encoder.encode([(":status", "200"), ("content-type", "application/grpc")])
    trailers = encoder.encode([("grpc-status", "0")])
    message = b"\0" + len(body).to_bytes(4, "big") + body
    return (
        h2grpc._frame(h2grpc.HEADERS, h2grpc.END_HEADERS, sid, head)
        + h2grpc._frame(h2grpc.DATA, 0, sid, message)
        + h2grpc._frame(h2grpc.HEADERS, h2grpc.END_HEADERS | h2grpc.END_STREAM, sid, trailers)
    )


@contextlib.asynccontextmanager
async def scripted_peer(on_connection: OnConnection) -> AsyncIterator[tuple[str, list[int]]]:
    """A raw HTTP/2 server on loopback running `on_connection(n, reader, writer)` for its n-th
    connection after reading the client preface; yields (target, [connections accepted])."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(len(accepted) + 1)
        try:
            assert await reader.readexactly(len(h2grpc.PREFACE)) == h2grpc.PREFACE
            await on_connection(len(accepted), reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}", accepted
    finally:
        server.close()


async def test_reset_while_waiting_for_the_connection_window() -> None:
    async def peer(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(h2grpc._settings({h2grpc.S_INITIAL_WINDOW_SIZE: 1 << 20}))  # connection window stays 64 KiB
        while True:
            ftype, _, sid, _ = await read_frame(reader)
            if ftype == h2grpc.DATA:
                await asyncio.sleep(0.05)
                writer.write(h2grpc._frame(h2grpc.RST_STREAM, 0, sid, struct.pack(">I", 2)))  # INTERNAL_ERROR
                await asyncio.sleep(10)

    async with scripted_peer(peer) as (target, _):
        ch = h2grpc.H2Channel(target, connect_timeout_s=2)
        try:
            async with asyncio.timeout(2):
                with pytest.raises(h2grpc.GrpcError) as info:
                    await ch.unary(block(target, "Echo"), b"x" * 200_000)
            assert info.value.code_name == "INTERNAL"
        finally:
            ch.close()


async def test_timeout_argument_covers_a_wait_for_the_window_and_resets_the_stream() -> None:
    """A server that never opens its window (nor answers): the call stops at its timeout while still
    sending, and the stream is reset so the server can drop what it got."""
    resets: list[int] = []

    async def peer(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(h2grpc._settings({}))  # default 64 KiB windows, never updated
        while True:
            ftype, _, sid, _ = await read_frame(reader)
            if ftype == h2grpc.RST_STREAM:
                resets.append(sid)

    async with scripted_peer(peer) as (target, _):
        ch = h2grpc.H2Channel(target, connect_timeout_s=2)
        try:
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                await ch.unary(block(target, "Echo"), b"x" * 200_000, timeout=0.3)
            assert time.monotonic() - start < 1.0
            await asyncio.sleep(0.1)
            assert resets == [1]
        finally:
            ch.close()


async def test_call_refused_by_goaway_goes_to_a_new_connection_at_once() -> None:
    import hpack

    async def peer(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        encoder = hpack.Encoder()
        writer.write(h2grpc._settings({}))
        while True:
            ftype, flags, sid, _ = await read_frame(reader)
            if n == 1 and ftype == h2grpc.HEADERS and sid == 3:  # stream 1 may finish; 3 never started
                writer.write(h2grpc._frame(h2grpc.GOAWAY, 0, 0, struct.pack(">II", 1, 0)))
            elif n == 2 and ftype == h2grpc.DATA and flags & h2grpc.END_STREAM:
                writer.write(answer(encoder, sid, b"from connection 2"))

    async with scripted_peer(peer) as (target, accepted):
        ch = h2grpc.H2Channel(target, connect_timeout_s=2)
        first = asyncio.ensure_future(ch.unary(block(target, "Echo"), b"1"))  # stays unanswered on connection 1
        try:
            await asyncio.sleep(0.1)
            async with asyncio.timeout(2):
                assert await ch.unary(block(target, "Echo"), b"2") == b"from connection 2"
            assert len(accepted) == 2
        finally:
            first.cancel()
            ch.close()


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (h2grpc._frame(h2grpc.WINDOW_UPDATE, 0, 0, b"\x00\x01"), "WINDOW_UPDATE payload"),
        (h2grpc._frame(h2grpc.WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)), "increment of 0"),
        (h2grpc._frame(h2grpc.WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x7FFFFFFF)), "above 2"),
        (h2grpc._frame(h2grpc.DATA, 0, 0, b"x"), "on stream 0"),
        (h2grpc._frame(h2grpc.PING, 0, 0, b"1234"), "PING payload"),
        (h2grpc._frame(h2grpc.GOAWAY, 0, 0, b"1234"), "GOAWAY payload"),
        (h2grpc._settings({h2grpc.S_MAX_FRAME_SIZE: 100}), "MAX_FRAME_SIZE"),
        (b"\x01\x00\x00" + bytes([h2grpc.DATA, 0]) + struct.pack(">I", 1), "exceeds"),
        (h2grpc._frame(h2grpc.HEADERS, h2grpc.END_HEADERS, 1, b"\xff\xff\xff"), "bad header block"),
    ],
    ids=[
        "short-window-update",
        "zero-increment",
        "window-overflow",
        "data-on-stream-0",
        "short-ping",
        "short-goaway",
        "max-frame-size",
        "oversized-frame",
        "bad-hpack",
    ],
)
async def test_malformed_frames_are_protocol_errors(frame: bytes, message: str) -> None:
    async def peer(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(h2grpc._settings({}))
        while True:
            ftype, _, _, _ = await read_frame(reader)
            if ftype == h2grpc.HEADERS:
                writer.write(frame)

    async with scripted_peer(peer) as (target, _):
        ch = h2grpc.H2Channel(target, connect_timeout_s=2)
        try:
            async with asyncio.timeout(2):
                with pytest.raises(h2grpc.ProtocolError, match=message):
                    await ch.unary(block(target, "Echo"), b"x")
        finally:
            ch.close()


def test_cached_header_blocks_follow_the_dynamic_table() -> None:
    """The same bytes can mean different headers once the server's HPACK table changes."""
    import hpack

    encoder = hpack.Encoder()
    conn = h2grpc.H2Connection()
    indexed_62 = bytes([0x80 | 62])  # "the newest entry of the dynamic table"
    assert conn._decode_headers(bytes(encoder.encode([("x-a", "1")]))) == [("x-a", "1")]
    assert conn._decode_headers(indexed_62) == [("x-a", "1")]
    assert conn._decode_headers(indexed_62) == [("x-a", "1")]  # from the cache now
    assert conn._decode_headers(bytes(encoder.encode([("x-b", "2")]))) == [("x-b", "2")]
    assert conn._decode_headers(indexed_62) == [("x-b", "2")]
    assert conn._decode_headers(bytes([0x80 | 63])) == [("x-a", "1")]
    with pytest.raises(h2grpc.ProtocolError, match="bad header block"):
        conn._decode_headers(bytes([0x80 | 99]))


def test_header_block_and_timeout_encoding() -> None:
    assert h2grpc.grpc_timeout(10) == "10000m"
    assert h2grpc.grpc_timeout(0.0001) == "1m"
    assert h2grpc.grpc_timeout(10**6) == "1000000S"
    import hpack

    decoded = dict(hpack.Decoder().decode(h2grpc.header_block("h:1", "/a.B/C", 2.5)))
    assert decoded == {
        ":method": "POST",
        ":scheme": "http",
        ":path": "/a.B/C",
        ":authority": "h:1",
        "content-type": "application/grpc",
        "te": "trailers",
        "grpc-timeout": "2500m",
    }


# -- against the real TF-Serving-compatible server -------------------------------------------------


@pytest.fixture(scope="module")
def compat_target(module_procs: Procs, model_repository: Path) -> str:
    return tf_compat(module_procs, model_repository)[2]


@pytest.mark.parametrize("batch", [1, 32])  # 32: the compat server's batching cap (large messages: tests above)
async def test_predict_equals_grpcio_and_golden(compat_target: str, golden: dict, batch: int) -> None:
    images = np.resize(golden["images"], (batch, 28, 28, 1)).astype(np.float32)
    t = GrpcTransport(timeout_s=30, health_timeout_s=5)
    request = t.build_request("cnn", None, images)
    path = "/tensorflow.serving.PredictionService/Predict"
    ch = h2grpc.H2Channel(compat_target, connect_timeout_s=5)
    channel = grpc.aio.insecure_channel(compat_target, options=[("grpc.max_receive_message_length", 1 << 26)])
    try:
        ours = PredictResponse.FromString(
            await ch.unary(h2grpc.header_block(compat_target, path, 30), request.SerializeToString())
        )
        stub = channel.unary_unary(
            path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=PredictResponse.FromString,
        )
        theirs = await stub(request, timeout=30)
    finally:
        ch.close()
        await channel.close()
    assert ours == theirs
    classes = tensor_to_numpy(ours.outputs["classes"])  # int64_val: TF Serving answers in the typed fields
    n = min(batch, len(golden["classes"]))
    np.testing.assert_array_equal(classes[:n], golden["classes"][:n])


async def test_unknown_model_error_equals_grpcio(compat_target: str) -> None:
    t = GrpcTransport(timeout_s=30, health_timeout_s=5)
    request = t.build_request("nope", None, np.zeros((1, 28, 28, 1), np.float32))
    path = "/tensorflow.serving.PredictionService/Predict"
    ch = h2grpc.H2Channel(compat_target, connect_timeout_s=5)
    channel = grpc.aio.insecure_channel(compat_target)
    try:
        with pytest.raises(h2grpc.GrpcError) as ours:
            await ch.unary(h2grpc.header_block(compat_target, path, 30), request.SerializeToString())
        stub = channel.unary_unary(path, request_serializer=type(request).SerializeToString)
        with pytest.raises(grpc.aio.AioRpcError) as theirs:
            await stub(request, timeout=30)
    finally:
        ch.close()
        await channel.close()
    assert ours.value.code_name == theirs.value.code().name == "NOT_FOUND"
    assert ours.value.message == theirs.value.details()
