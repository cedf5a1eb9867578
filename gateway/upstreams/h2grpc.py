"""A lean gRPC client for unary calls: HTTP/2 on one asyncio connection per replica.

Why not grpc.aio: measured in-process on the project's 2-core machine, a grpc.aio unary Predict costs
0.35-0.58 ms of client CPU per call (its C core runs the I/O on its own threads and hands every
completion to the event loop through a poller), more than the gateway's whole 0.5 ms overhead budget.
The gateway only makes unary calls to TF Serving over plaintext HTTP/2 (h2c), which needs a small
part of the protocol: this module frames them on the event loop's own socket, with the request's
header block encoded once, and `hpack` (python-hyper's HPACK, stateful per connection) for the
answers' headers. Messages are the generated `tensorflow-serving-api` protobufs either way.

What it implements of RFC 9113 (HTTP/2) and the gRPC wire protocol (PROTOCOL-HTTP2.md):
- the connection preface and SETTINGS in both directions (ACKed), PING answered, GOAWAY obeyed (calls
  the server never started fail as retryable; the rest finish), RST_STREAM, padding and priority
  flags, CONTINUATION frames;
- flow control both ways: large receive windows announced once and replenished; sends wait for the
  peer's connection and stream windows and split DATA at its MAX_FRAME_SIZE; MAX_CONCURRENT_STREAMS;
- gRPC framing (5-byte message prefix, no compression), `grpc-timeout`, status and percent-encoded
  message from trailers or a Trailers-Only answer, and cancellation (RST_STREAM CANCEL) on timeout.
Not implemented (not needed against TF Serving): TLS, server push (disabled in our SETTINGS),
compression, streaming calls.
"""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Settings identifiers.
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE = 1, 2, 3, 4, 5

# Error codes.
NO_ERROR, PROTOCOL_ERROR, REFUSED_STREAM, CANCEL = 0x0, 0x1, 0x7, 0x8

DEFAULT_WINDOW = 65_535
# What we let the server send before it must wait for a WINDOW_UPDATE: answers are small, but a
# large batch's answer must never stall on our window.
RECV_WINDOW = 1 << 30
MAX_STREAM_ID = (1 << 31) - 1
# Times one call is sent again after the server refused its stream (it never ran, so this is safe;
# the call's own timeout bounds the whole).
MAX_REFUSED = 50

_FRAME_HEAD = struct.Struct(">HBBBI")  # length (24 bits as 16 + 8), type, flags, stream id (31 bits)

# gRPC status codes (grpc/doc/statuscode.md) by number, for messages and error mapping.
STATUS_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


class GrpcError(Exception):
    """The server answered the call with a non-OK gRPC status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{STATUS_NAMES.get(code, str(code))}: {message}")
        self.code = code
        self.code_name = STATUS_NAMES.get(code, "UNKNOWN")
        self.message = message


class ConnectFailed(Exception):
    """No connection could be made (refused, unreachable, connect timeout)."""


class StreamRefused(Exception):
    """The server did not start this call (GOAWAY before it, REFUSED_STREAM, or the connection was
    already closing): safe to send again on a fresh connection."""


class ConnectionLost(Exception):
    """The connection broke while the call was in flight: the server may or may not have run it."""


class ProtocolError(Exception):
    """The peer broke HTTP/2 or gRPC framing rules."""


def _frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME_HEAD.pack(n >> 8, n & 0xFF, ftype, flags, stream_id) + payload


def _settings(pairs: dict[int, int]) -> bytes:
    return _frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs.items()))


def grpc_timeout(seconds: float) -> str:
    """The `grpc-timeout` header value: at most 8 digits and a unit."""
    millis = max(1, int(seconds * 1000))
    return f"{millis}m" if millis < 100_000_000 else f"{min(int(seconds), 99_999_999)}S"


def header_block(authority: str, path: str, timeout_s: float | None) -> bytes:
    """The request's HPACK block, never indexed, so it is the same bytes on every call and every
    connection (the encoder's dynamic table is never touched)."""
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    if timeout_s is not None:
        headers.append(("grpc-timeout", grpc_timeout(timeout_s)))
    return bytes(hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple(k, v) for k, v in headers], huffman=False))


@dataclass(slots=True)
class _Stream:
    id: int
    done: asyncio.Future[None]
    send_window: int
    window_open: asyncio.Event
    headers: list[tuple[str, str]] | None = None
    trailers: list[tuple[str, str]] | None = None
    data: bytearray | None = None


class H2Connection(asyncio.Protocol):
    """One HTTP/2 client connection. Calls share it (one stream each) up to the server's limit."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._decoder = hpack.Decoder()
        self._header_cache: dict[bytes, list[tuple[str, str]]] = {}
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = 16_384
        self._max_streams = 100  # until the server's SETTINGS say otherwise (RFC 9113 recommends >= 100)
        self._conn_send_window = DEFAULT_WINDOW
        self._conn_window_open = asyncio.Event()
        self._slots_free = asyncio.Event()
        self._slots_free.set()
        self._unacked_recv = 0
        self._header_stream = 0  # a stream whose header block continues in CONTINUATION frames
        self._header_fragments: list[bytes] = []
        self._header_flags = 0
        self._goaway_last: int | None = None
        self._lost: Exception | None = None
        # Set by the server's first SETTINGS: streams wait for it, so its MAX_CONCURRENT_STREAMS and
        # windows apply from the first call (else calls beyond its limit come back REFUSED_STREAM).
        self._settled = asyncio.Event()
        self.pings_answered = 0
        self.last_received = 0.0  # time.monotonic() of the last bytes from the server; 0: none yet

    # -- state -----------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """New calls may start here: open, no GOAWAY, stream ids left."""
        return (
            self.transport is not None
            and self._lost is None
            and self._goaway_last is None
            and not self.transport.is_closing()
            and self._next_id < MAX_STREAM_ID
        )

    @property
    def idle(self) -> bool:
        return not self._streams

    async def stream_finished(self) -> None:
        """Return when one of this connection's streams ends or it closes (at once if none is open)."""
        if self._streams and self._lost is None:
            self._slots_free.clear()
            await self._slots_free.wait()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(GOAWAY, 0, 0, struct.pack(">II", 0, NO_ERROR)))
            self.transport.close()

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, though they provide its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(
            PREFACE
            + _settings({S_ENABLE_PUSH: 0, S_INITIAL_WINDOW_SIZE: RECV_WINDOW})
            + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", RECV_WINDOW - DEFAULT_WINDOW))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is None:
            self._lost = ConnectionLost(f"connection closed ({exc or 'by the server'})")
        for stream in list(self._streams.values()):
            self._fail(stream, self._lost)
        self._conn_window_open.set()  # wake senders and waiters: they will see the connection is gone
        self._slots_free.set()
        self._settled.set()

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 9:
                hi, lo, ftype, flags, sid = _FRAME_HEAD.unpack_from(buf, pos)
                if ftype != SETTINGS and not self._settled.is_set():
                    raise ProtocolError(
                        f"not an HTTP/2 server (it began with {bytes(buf[:16])!r}): is this the gRPC port?"
                    )
                length = (hi << 8) | lo
                if end - pos - 9 < length:
                    break
                payload = bytes(buf[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._on_frame(ftype, flags, sid & MAX_STREAM_ID, payload)
        except ProtocolError as exc:
            self.abort(exc)
            return
        del buf[:pos]

    # -- frames in ----------------------------------------------------------------------------------

    def _on_frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self._header_stream and ftype != CONTINUATION:
            raise ProtocolError("a header block was interrupted by another frame")
        if ftype == DATA:
            self._on_data(flags, sid, payload)
        elif ftype == HEADERS:
            if flags & PADDED:
                payload = self._unpad(payload)
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self._header_stream, self._header_flags, self._header_fragments = sid, flags, [payload]
            if flags & END_HEADERS:
                self._end_headers()
        elif ftype == CONTINUATION:
            if sid != self._header_stream:
                raise ProtocolError("CONTINUATION without a header block to continue")
            self._header_fragments.append(payload)
            if flags & END_HEADERS:
                self._end_headers()
        elif ftype == SETTINGS:
            if not flags & ACK:
                self._on_settings(payload)
        elif ftype == WINDOW_UPDATE:
            (increment,) = struct.unpack(">I", payload[:4])
            increment &= MAX_STREAM_ID
            if sid == 0:
                self._conn_send_window += increment
                self._conn_window_open.set()
            elif (stream := self._streams.get(sid)) is not None:
                stream.send_window += increment
                stream.window_open.set()
        elif ftype == PING:
            if not flags & ACK and self.transport is not None:
                self.transport.write(_frame(PING, ACK, 0, payload))
                self.pings_answered += 1
        elif ftype == RST_STREAM:
            stream = self._streams.get(sid)
            if stream is not None:
                (code,) = struct.unpack(">I", payload[:4])
                if code == REFUSED_STREAM:
                    self._fail(stream, StreamRefused("the server refused the stream (REFUSED_STREAM)"))
                else:
                    status = 1 if code == CANCEL else 13  # CANCELLED, else INTERNAL (as grpcio reports it)
                    self._fail(stream, GrpcError(status, f"stream reset by the server (HTTP/2 error {code})"))
        elif ftype == GOAWAY:
            last, code = struct.unpack(">II", payload[:8])
            self._goaway_last = last & MAX_STREAM_ID
            detail = payload[8:].decode("utf-8", "replace")
            for stream in [s for s in self._streams.values() if s.id > self._goaway_last]:
                self._fail(stream, StreamRefused(f"GOAWAY (code {code}) before this call started {detail}".rstrip()))
            if self.idle and self.transport is not None:
                self.transport.close()
        elif ftype == PUSH_PROMISE:
            raise ProtocolError("PUSH_PROMISE although push is disabled")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 requires.

    @staticmethod
    def _unpad(payload: bytes) -> bytes:
        if not payload:
            raise ProtocolError("padded frame without a pad length")
        pad = payload[0]
        if pad >= len(payload):
            raise ProtocolError("padding longer than the frame")
        return payload[1 : len(payload) - pad]

    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        # Flow control counts the whole frame, padding included.
        self._unacked_recv += len(payload)
        if self._unacked_recv >= RECV_WINDOW // 2 and self.transport is not None:
            self.transport.write(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._unacked_recv)))
            self._unacked_recv = 0
        if flags & PADDED:
            payload = self._unpad(payload)
        stream = self._streams.get(sid)
        if stream is None:
            return  # a stream we already gave up on (timeout): its data is dropped
        if stream.headers is None:
            raise ProtocolError("DATA before HEADERS")
        if stream.data is None:
            stream.data = bytearray(payload)
        else:
            stream.data += payload
        if flags & END_STREAM:
            self._finish(stream)

    def _end_headers(self) -> None:
        block = b"".join(self._header_fragments)
        sid, flags = self._header_stream, self._header_flags
        self._header_stream, self._header_fragments = 0, []
        # Decoded even for streams we no longer track: the decoder's table must see every block.
        headers = self._decode_headers(block)
        stream = self._streams.get(sid)
        if stream is None:
            return
        if stream.headers is None:
            stream.headers = headers
        else:
            stream.trailers = headers
        if flags & END_STREAM:
            self._finish(stream)

    def _decode_headers(self, block: bytes) -> list[tuple[str, str]]:
        """HPACK-decode one block. A server sends the same few blocks over and over (status, content
        type, grpc-status 0, all as references into its table). A block whose decoding left the
        dynamic table as it was is a pure function of that table, so its result is kept until any
        block changes the table; this saves ~20 us per header block."""
        cached = self._header_cache.get(block)
        if cached is not None:
            return cached
        table = self._decoder.header_table
        before = tuple(table.dynamic_entries), table.maxsize
        try:
            headers = [(str(k), str(v)) for k, v in self._decoder.decode(block, raw=False)]
        except hpack.HPACKError as exc:
            raise ProtocolError(f"bad header block: {exc}") from None
        if (tuple(table.dynamic_entries), table.maxsize) == before:
            if len(self._header_cache) >= 64:
                self._header_cache.clear()
            self._header_cache[block] = headers
        else:
            self._header_cache.clear()  # the table changed: earlier results may decode differently now
        return headers

    def _on_settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise ProtocolError("SETTINGS payload is not a multiple of 6 bytes")
        for i in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == S_INITIAL_WINDOW_SIZE:
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    stream.window_open.set()
            elif key == S_MAX_FRAME_SIZE:
                self._peer_max_frame = value
            elif key == S_MAX_CONCURRENT_STREAMS:
                self._max_streams = value
                self._slots_free.set()
        if self.transport is not None:
            self.transport.write(_frame(SETTINGS, ACK, 0))
        self._settled.set()

    def _finish(self, stream: _Stream) -> None:
        self._streams.pop(stream.id, None)
        if not stream.done.done():
            stream.done.set_result(None)
        self._after_stream()

    def _fail(self, stream: _Stream, exc: Exception) -> None:
        self._streams.pop(stream.id, None)
        if not stream.done.done():
            stream.done.set_exception(exc)
        stream.window_open.set()
        self._after_stream()

    def _after_stream(self) -> None:
        self._slots_free.set()
        if self._goaway_last is not None and self.idle and self.transport is not None:
            self.transport.close()

    def abort(self, exc: Exception) -> None:
        if self.transport is not None:
            self.transport.write(_frame(GOAWAY, 0, 0, struct.pack(">II", 0, PROTOCOL_ERROR)))
            self.transport.close()
        self._lost = exc
        for stream in list(self._streams.values()):
            self._fail(stream, exc)

    # -- calls --------------------------------------------------------------------------------------

    async def unary(self, block: bytes, message: bytes) -> bytes:
        """Send one gRPC request message on a new stream; return the answer's message bytes.
        Raises GrpcError, StreamRefused, ConnectionLost or ProtocolError. If the caller is cancelled
        (its timeout), the stream is reset with CANCEL so the server stops working on it."""
        if not self._settled.is_set():
            await self._settled.wait()
        while len(self._streams) >= self._max_streams:
            self._slots_free.clear()
            await self._slots_free.wait()
        if not self.usable or self.transport is None:
            if isinstance(self._lost, ProtocolError):
                raise self._lost  # not worth a retry: the next connection would fail the same way
            raise StreamRefused("connection is closing")
        sid = self._next_id
        self._next_id += 2
        loop = asyncio.get_running_loop()
        stream = _Stream(sid, loop.create_future(), self._peer_initial_window, asyncio.Event())
        self._streams[sid] = stream
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        try:
            await self._send(stream, block, body)
            await stream.done
        except asyncio.CancelledError:
            if sid in self._streams:
                self._streams.pop(sid)
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.write(_frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL)))
                self._after_stream()
            raise
        return self._message(stream)

    async def _send(self, stream: _Stream, block: bytes, body: bytes) -> None:
        if len(block) > self._peer_max_frame:
            raise ProtocolError("request header block larger than one frame")  # ours is ~100 bytes
        out = [_frame(HEADERS, END_HEADERS, stream.id, block)]
        view = memoryview(body)
        pos = 0
        while True:
            allowed = min(len(body) - pos, self._peer_max_frame, stream.send_window, self._conn_send_window)
            if allowed > 0 or len(body) == pos:
                chunk = bytes(view[pos : pos + allowed])
                pos += allowed
                stream.send_window -= allowed
                self._conn_send_window -= allowed
                out.append(_frame(DATA, END_STREAM if pos == len(body) else 0, stream.id, chunk))
                if pos == len(body):
                    break
                continue
            # Out of window: send what we have and wait for the peer's WINDOW_UPDATE.
            self._write(out)
            out = []
            if self._conn_send_window <= 0:
                self._conn_window_open.clear()
                await self._conn_window_open.wait()
            else:
                stream.window_open.clear()
                await stream.window_open.wait()
            if stream.done.done():
                return  # failed meanwhile (reset, connection lost): the caller sees why
        self._write(out)

    def _write(self, frames: list[bytes]) -> None:
        if self._lost is not None:
            raise self._lost
        if frames and self.transport is not None:
            self.transport.write(b"".join(frames))

    @staticmethod
    def _message(stream: _Stream) -> bytes:
        headers = dict(stream.headers or ())
        status = headers.get(":status")
        trailers = dict(stream.trailers) if stream.trailers is not None else headers  # Trailers-Only
        if status != "200":
            raise GrpcError(14 if status in ("502", "503", "504") else 2, f"HTTP status {status} from the server")
        code = trailers.get("grpc-status")
        if code is None:
            raise ProtocolError("the answer has no grpc-status")
        if code != "0":
            raise GrpcError(int(code), unquote(trailers.get("grpc-message", "")))
        data = stream.data or b""
        if len(data) < 5:
            raise ProtocolError("the answer has no message")
        if data[0] != 0:
            raise ProtocolError("the answer is compressed, which was not negotiated")
        length = int.from_bytes(data[1:5], "big")
        if len(data) != 5 + length:
            raise ProtocolError(f"the answer's message is {len(data) - 5} bytes, its prefix says {length}")
        return bytes(data[5:])


class H2Channel:
    """The connection to one target (host:port), reopened when the server closes it; calls that the
    server never started are sent once more on the fresh connection."""

    def __init__(self, target: str, *, connect_timeout_s: float) -> None:
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{target!r}: expected host:port")
        self.host = host.strip("[]")
        self.port = int(port)
        self.authority = target
        self._connect_timeout = connect_timeout_s
        self._conn: H2Connection | None = None
        self._connecting: asyncio.Future[H2Connection] | None = None

    async def _connection(self) -> H2Connection:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        fut = self._connecting
        try:
            return await asyncio.shield(fut)
        finally:
            if fut.done() and self._connecting is fut:
                self._connecting = None

    async def _open(self) -> H2Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(H2Connection, self.host, self.port)
        except TimeoutError:
            raise ConnectFailed(f"connect timeout after {self._connect_timeout}s") from None
        except OSError as exc:
            raise ConnectFailed(exc.strerror or str(exc)) from None
        old, self._conn = self._conn, conn
        if old is not None and old.idle:
            old.close()
        return conn

    async def unary(self, block: bytes, message: bytes) -> bytes:
        refused = 0
        while True:
            conn = await self._connection()
            try:
                return await conn.unary(block, message)
            except StreamRefused:
                # The server never started this call, so sending it again is safe: on a fresh connection
                # after a GOAWAY, or on this one once a stream has finished (grpc's server can refuse a
                # stream just over its MAX_CONCURRENT_STREAMS before its count sees one of ours close).
                refused += 1
                if refused > MAX_REFUSED:
                    raise
                await conn.stream_finished()
                await asyncio.sleep(min(0.0005 * 2**refused, 0.05))  # backs off while the server catches up

    def drop_if_silent(self, since: float) -> None:
        """After a call timed out: if the connection has received nothing at all since `since`, it may be
        dead without having been closed (a vanished host, a dropped route), so close it; the calls still
        on it fail as ConnectionLost and the next call connects afresh. (grpcio finds such connections
        with keepalive PINGs; a timed-out call is the same evidence, sooner.)"""
        conn = self._conn
        if conn is not None and conn.last_received < since:
            conn.abort(ConnectionLost("no answer and no frame from the server before the call's timeout"))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
