"""A lean gRPC client for unary calls: HTTP/2 on one asyncio connection per replica.

Why not grpc.aio: measured in-process on the project's 2-core machine, a grpc.aio unary Predict costs
0.35-0.58 ms of client CPU per call (its C core runs the I/O on its own threads and hands every
completion to the event loop through a poller), more than the gateway's whole 0.5 ms overhead budget.
The gateway only makes unary calls to TF Serving over plaintext HTTP/2 (h2c), which needs a small
part of the protocol: this module frames them on the event loop's own socket, with the request's
header block encoded once, and `hpack` (python-hyper's HPACK, stateful per connection) for the
answers' headers. Messages are TF Serving's protobufs either way (declared in tfs_protos.py).

What it implements of RFC 9113 (HTTP/2) and the gRPC wire protocol (PROTOCOL-HTTP2.md):
- the connection preface and SETTINGS in both directions (ACKed), PING answered, GOAWAY obeyed (calls
  the server never started fail as retryable; the rest finish), RST_STREAM, padding and priority
  flags, CONTINUATION frames;
- flow control both ways: large receive windows announced once and replenished; sends wait for the
  peer's connection and stream windows and split DATA at its MAX_FRAME_SIZE; MAX_CONCURRENT_STREAMS;
- gRPC framing (5-byte message prefix, no compression), `grpc-timeout`, status and percent-encoded
  message from trailers or a Trailers-Only answer, and cancellation (RST_STREAM CANCEL) on timeout;
- the peer's frames checked (sizes, stream ids, window bounds, SETTINGS values), with limits on what
  one answer may make us buffer.
Not implemented (not needed against TF Serving): TLS, server push (disabled in our SETTINGS),
compression, streaming calls, client keepalive PINGs. A connection that died silently is found by
the next call that times out on it (`H2Channel.drop_if_silent`: later calls use a new connection),
and the gateway's health probe goes through the same connection every GATEWAY_HEALTH_INTERVAL_S, so
that happens within seconds; pinging more often than every 5 minutes would break grpc servers'
default ping policy (GOAWAY "too_many_pings").
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
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x0, 0x1, 0x3, 0x7, 0x8, 0x9
# RST_STREAM error code -> gRPC status (PROTOCOL-HTTP2.md, "Errors"); anything else is INTERNAL.
_RST_STATUS = {CANCEL: 1, 0xB: 8, 0xC: 7}  # CANCELLED, RESOURCE_EXHAUSTED (ENHANCE_YOUR_CALM), PERMISSION_DENIED
# HTTP status of a non-gRPC answer -> gRPC status (grpc/doc/http-grpc-status-mapping.md).
_HTTP_STATUS = {"400": 13, "401": 16, "403": 7, "404": 12, "429": 14, "502": 14, "503": 14, "504": 14}

DEFAULT_WINDOW = 65_535
# What we let the server send before it must wait for a WINDOW_UPDATE: answers are small, but a
# large batch's answer must never stall on our window.
RECV_WINDOW = 1 << 30
MAX_STREAM_ID = (1 << 31) - 1
MAX_WINDOW = (1 << 31) - 1
MAX_FRAME = 16_384  # the frame size we accept (we never raise SETTINGS_MAX_FRAME_SIZE)
MAX_HEADER_BLOCK = 256 * 1024  # HEADERS + CONTINUATION of one block
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


@dataclass(slots=True, eq=False)  # identity equality and hashing: streams go in sets
class _Stream:
    id: int
    done: asyncio.Future[None]
    send_window: int
    window_open: asyncio.Event
    headers: list[tuple[str, str]] | None = None
    trailers: list[tuple[str, str]] | None = None
    data: bytearray | None = None


def _expire(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_exception(TimeoutError())


class H2Connection(asyncio.Protocol):
    """One HTTP/2 client connection. Calls share it (one stream each) up to the server's limit."""

    def __init__(self, max_message: int = 64 * 1024 * 1024) -> None:
        self.transport: asyncio.Transport | None = None
        self.max_message = max_message
        self._buf = bytearray()
        self._decoder = hpack.Decoder()
        self._header_cache: dict[bytes, list[tuple[str, str]]] = {}
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = 16_384
        self._max_streams = 100  # until the server's SETTINGS say otherwise (RFC 9113 recommends >= 100)
        self._conn_send_window = DEFAULT_WINDOW
        self._conn_blocked: set[_Stream] = set()  # senders waiting for the connection window
        self._slots_free = asyncio.Event()
        self._slots_free.set()
        self._unacked_recv = 0
        self._header_stream = 0  # a stream whose header block continues in CONTINUATION frames
        self._header_fragments: list[bytes] = []
        self._header_size = 0
        self._header_flags = 0
        self._goaway_last: int | None = None
        self._draining = False  # replaced by a newer connection: closes once its calls are done
        self._lost: Exception | None = None
        # Set by the server's first SETTINGS: streams wait for it, so its MAX_CONCURRENT_STREAMS and
        # windows apply from the first call (else calls beyond its limit come back REFUSED_STREAM).
        self._settled = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set in connection_made
        self.pings_answered = 0
        self.last_received = 0.0  # time.monotonic() of the last bytes from the server; 0: none yet

    # -- state -----------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """New calls may start here: open, no GOAWAY, not draining, stream ids left."""
        return (
            self.transport is not None
            and self._lost is None
            and self._goaway_last is None
            and not self._draining
            and not self.transport.is_closing()
            and self._next_id < MAX_STREAM_ID
        )

    @property
    def lost(self) -> Exception | None:
        return self._lost

    @property
    def idle(self) -> bool:
        return not self._streams

    async def stream_finished(self) -> None:
        """Return when one of this connection's streams ends or it closes (at once if none is open)."""
        if self._streams and self._lost is None:
            self._slots_free.clear()
            await self._slots_free.wait()

    def drain(self) -> None:
        """Take no new calls; close once the calls in flight are done."""
        self._draining = True
        if self.idle:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(GOAWAY, 0, 0, struct.pack(">II", 0, NO_ERROR)))
            self.transport.close()

    def abort(self, exc: Exception, code: int = PROTOCOL_ERROR) -> None:
        """Fail every call on this connection with `exc` and close it (telling the server why)."""
        if self._lost is None:
            self._lost = exc
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(GOAWAY, 0, 0, struct.pack(">II", 0, code)))
            self.transport.close()
        for stream in list(self._streams.values()):
            self._fail(stream, exc)
        self._settled.set()
        self._slots_free.set()

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, though they provide its methods.
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()  # once: get_running_loop() costs a getpid() per use on 3.11
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
        self._slots_free.set()  # wake every waiter: each sees the connection is gone
        self._settled.set()

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        view = memoryview(buf)
        try:
            while end - pos >= 9:
                hi, lo, ftype, flags, sid = _FRAME_HEAD.unpack_from(buf, pos)
                if ftype != SETTINGS and not self._settled.is_set():
                    start = bytes(buf[:16])
                    raise ProtocolError(f"not an HTTP/2 server (it began with {start!r}): is this the gRPC port?")
                length = (hi << 8) | lo
                if length > MAX_FRAME:
                    raise ProtocolError(f"frame of {length} bytes exceeds the {MAX_FRAME} we allow")
                if end - pos - 9 < length:
                    break
                payload = bytes(view[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._on_frame(ftype, flags, sid & MAX_STREAM_ID, payload)
        except ProtocolError as exc:
            view.release()
            self.abort(exc, COMPRESSION_ERROR if "header block" in str(exc) else PROTOCOL_ERROR)
            return
        view.release()
        del buf[:pos]

    # -- frames in ----------------------------------------------------------------------------------

    def _on_frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self._header_stream and ftype != CONTINUATION:
            raise ProtocolError("a header block was interrupted by another frame")
        if ftype in (DATA, HEADERS, CONTINUATION, RST_STREAM, PRIORITY) and sid == 0:
            raise ProtocolError(f"frame type {ftype} on stream 0")
        if ftype in (SETTINGS, PING, GOAWAY) and sid != 0:
            raise ProtocolError(f"frame type {ftype} on stream {sid}")
        if ftype == DATA:
            self._on_data(flags, sid, payload)
        elif ftype == HEADERS:
            if flags & PADDED:
                payload = self._unpad(payload)
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self._header_stream, self._header_flags = sid, flags
            self._header_fragments, self._header_size = [payload], len(payload)
            if flags & END_HEADERS:
                self._end_headers()
        elif ftype == CONTINUATION:
            if sid != self._header_stream:
                raise ProtocolError("CONTINUATION without a header block to continue")
            self._header_fragments.append(payload)
            self._header_size += len(payload)
            if self._header_size > MAX_HEADER_BLOCK:
                raise ProtocolError(f"header block larger than {MAX_HEADER_BLOCK} bytes")
            if flags & END_HEADERS:
                self._end_headers()
        elif ftype == SETTINGS:
            if flags & ACK:
                if payload:
                    raise ProtocolError("SETTINGS ACK with a payload")
            else:
                self._on_settings(payload)
        elif ftype == WINDOW_UPDATE:
            self._on_window_update(sid, payload)
        elif ftype == PING:
            if len(payload) != 8:
                raise ProtocolError("PING payload is not 8 bytes")
            if not flags & ACK and self.transport is not None and not self.transport.is_closing():
                self.transport.write(_frame(PING, ACK, 0, payload))
                self.pings_answered += 1
        elif ftype == RST_STREAM:
            if len(payload) != 4:
                raise ProtocolError("RST_STREAM payload is not 4 bytes")
            stream = self._streams.get(sid)
            if stream is not None:
                (code,) = struct.unpack(">I", payload)
                if code == REFUSED_STREAM:
                    self._fail(stream, StreamRefused("the server refused the stream (REFUSED_STREAM)"))
                else:
                    status = _RST_STATUS.get(code, 13)
                    self._fail(stream, GrpcError(status, f"stream reset by the server (HTTP/2 error {code})"))
        elif ftype == GOAWAY:
            if len(payload) < 8:
                raise ProtocolError("GOAWAY payload shorter than 8 bytes")
            last, code = struct.unpack(">II", payload[:8])
            self._goaway_last = last & MAX_STREAM_ID
            detail = payload[8:].decode("utf-8", "replace")
            for stream in [s for s in self._streams.values() if s.id > self._goaway_last]:
                self._fail(stream, StreamRefused(f"GOAWAY (code {code}) before this call started {detail}".rstrip()))
            self._after_stream()
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

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError("WINDOW_UPDATE payload is not 4 bytes")
        (increment,) = struct.unpack(">I", payload)
        increment &= MAX_WINDOW
        if increment == 0:
            raise ProtocolError("WINDOW_UPDATE with an increment of 0")
        if sid == 0:
            self._conn_send_window += increment
            if self._conn_send_window > MAX_WINDOW:
                raise ProtocolError("connection flow-control window above 2^31-1")
            for blocked in self._conn_blocked:
                blocked.window_open.set()
        elif (stream := self._streams.get(sid)) is not None:
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                raise ProtocolError("stream flow-control window above 2^31-1")
            stream.window_open.set()

    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        # Flow control counts the whole frame, padding included.
        self._unacked_recv += len(payload)
        if self._unacked_recv >= RECV_WINDOW // 2 and self.transport is not None and not self.transport.is_closing():
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
        if len(stream.data) > self.max_message + 5:
            self._reset(stream, CANCEL)
            self._fail(stream, GrpcError(8, f"answer larger than the {self.max_message}-byte message limit"))
            return
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
                if value > MAX_WINDOW:
                    raise ProtocolError("SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ProtocolError("stream flow-control window above 2^31-1")
                    stream.window_open.set()
            elif key == S_MAX_FRAME_SIZE:
                if not 16_384 <= value <= 16_777_215:
                    raise ProtocolError(f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                self._peer_max_frame = value
            elif key == S_MAX_CONCURRENT_STREAMS:
                self._max_streams = value
                self._slots_free.set()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(SETTINGS, ACK, 0))
        self._settled.set()

    def _finish(self, stream: _Stream) -> None:
        self._streams.pop(stream.id, None)
        if not stream.done.done():
            stream.done.set_result(None)
        stream.window_open.set()  # a sender still waiting for window learns the answer is in
        self._after_stream()

    def _fail(self, stream: _Stream, exc: Exception) -> None:
        self._streams.pop(stream.id, None)
        if not stream.done.done():
            stream.done.set_exception(exc)
        stream.window_open.set()
        self._after_stream()

    def _after_stream(self) -> None:
        self._slots_free.set()
        if (self._goaway_last is not None or self._draining) and self.idle:
            self.close()

    def _reset(self, stream: _Stream, code: int) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(RST_STREAM, 0, stream.id, struct.pack(">I", code)))

    # -- calls --------------------------------------------------------------------------------------

    async def unary(self, block: bytes, message: bytes, deadline: float | None = None) -> bytes:
        """Send one gRPC request message on a new stream; return the answer's message bytes.
        Raises GrpcError, StreamRefused, ConnectionLost or ProtocolError, and TimeoutError past
        `deadline` (the loop's clock). If the call is cancelled or times out, the stream is reset with
        CANCEL so the server stops working on it.

        The deadline is a timer on the answer's future, with an asyncio.timeout_at() block only around
        the waits a call rarely has (the server's first SETTINGS, a free stream, flow-control window):
        a block around every call cost the gateway measurable time per request (see http1.py)."""
        if not self._settled.is_set() or (self.usable and len(self._streams) >= self._max_streams):
            async with asyncio.timeout_at(deadline):
                if not self._settled.is_set():
                    await self._settled.wait()
                while self.usable and len(self._streams) >= self._max_streams:
                    self._slots_free.clear()
                    await self._slots_free.wait()
        if not self.usable or self.transport is None:
            if isinstance(self._lost, ProtocolError):
                raise self._lost  # not worth a retry: the next connection would fail the same way
            raise StreamRefused("connection is closing")
        if len(block) > self._peer_max_frame:
            raise ProtocolError("request header block larger than one frame")  # ours is ~100 bytes
        sid = self._next_id
        self._next_id += 2
        loop = self._loop
        stream = _Stream(sid, loop.create_future(), self._peer_initial_window, asyncio.Event())
        self._streams[sid] = stream
        timer = None if deadline is None else loop.call_at(deadline, _expire, stream.done)
        try:
            await self._send(stream, block, message, deadline)
            await stream.done
        except BaseException:
            if self._streams.pop(sid, None) is not None:  # still ours: tell the server to stop
                self._reset(stream, CANCEL)
                self._after_stream()
            if stream.done.done() and not stream.done.cancelled():
                stream.done.exception()  # retrieved: no "exception was never retrieved" log
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return self._message(stream)

    async def _send(self, stream: _Stream, block: bytes, message: bytes, deadline: float | None) -> None:
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        out = [_frame(HEADERS, END_HEADERS, stream.id, block)]
        view = memoryview(body)
        pos, total = 0, len(body)
        while True:
            allowed = min(total - pos, self._peer_max_frame, stream.send_window, self._conn_send_window)
            if allowed > 0:
                pos += allowed
                stream.send_window -= allowed
                self._conn_send_window -= allowed
                out.append(_frame(DATA, END_STREAM if pos == total else 0, stream.id, bytes(view[pos - allowed : pos])))
                if pos == total:
                    break
                continue
            # Out of window: send what we have and wait for the peer's WINDOW_UPDATE (or the answer).
            self._write(out)
            out = []
            stream.window_open.clear()
            if self._conn_send_window <= 0:
                self._conn_blocked.add(stream)
            try:
                async with asyncio.timeout_at(deadline):
                    await stream.window_open.wait()
            finally:
                self._conn_blocked.discard(stream)
            if stream.done.done():
                # Answered (or failed) before we finished sending, as a server may (RFC 9113 8.1):
                # stop sending; a complete answer stands, and the caller reads it from stream.done.
                if not stream.done.cancelled() and stream.done.exception() is None:
                    self._reset(stream, NO_ERROR)
                return
        self._write(out)

    def _write(self, frames: list[bytes]) -> None:
        if self._lost is not None:
            raise self._lost
        if self.transport is None or self.transport.is_closing():
            # The peer reset the connection and its loss is not delivered yet (uvloop would raise
            # RuntimeError on the write).
            raise ConnectionLost("connection closed before the call was sent")
        if frames:
            self.transport.write(b"".join(frames))

    @staticmethod
    def _message(stream: _Stream) -> bytes:
        headers = dict(stream.headers or ())
        status = headers.get(":status")
        trailers = dict(stream.trailers) if stream.trailers is not None else headers  # Trailers-Only
        if status != "200":
            raise GrpcError(_HTTP_STATUS.get(status or "", 2), f"HTTP status {status} from the server")
        code = trailers.get("grpc-status")
        if code is None:
            raise ProtocolError("the answer has no grpc-status")
        if not code.isdigit():
            raise ProtocolError(f"the answer's grpc-status is not a number: {code[:20]!r}")
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
        return bytes(memoryview(data)[5:])


class H2Channel:
    """The connection to one target (host:port), reopened when the server closes it; calls that the
    server never started are sent once more on the fresh connection."""

    def __init__(self, target: str, *, connect_timeout_s: float, max_message: int = 64 * 1024 * 1024) -> None:
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{target!r}: expected host:port")
        self.host = host.strip("[]")
        self.port = int(port)
        self.authority = target
        self.max_message = max_message
        self._connect_timeout = connect_timeout_s
        self._conn: H2Connection | None = None
        self._draining: list[H2Connection] = []  # replaced connections still finishing their calls
        self._connecting: asyncio.Future[H2Connection] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _connection(self) -> H2Connection:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        if self._connecting is None:
            fut = self._connecting = asyncio.ensure_future(self._open())

            def done(f: asyncio.Future[H2Connection]) -> None:
                # Cleared by the attempt itself: a result or error must not outlive it, even when every
                # caller waiting for it has given up (timed out) before it finished.
                if self._connecting is f:
                    self._connecting = None
                if not f.cancelled():
                    f.exception()  # retrieved: no "exception was never retrieved" log

            fut.add_done_callback(done)
        return await asyncio.shield(self._connecting)

    async def _open(self) -> H2Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(lambda: H2Connection(self.max_message), self.host, self.port)
        except TimeoutError:
            raise ConnectFailed(f"connect timeout after {self._connect_timeout}s") from None
        except OSError as exc:
            raise ConnectFailed(exc.strerror or str(exc)) from None
        old, self._conn = self._conn, conn
        if old is not None:
            old.drain()
            self._draining.append(old)
        self._draining = [c for c in self._draining if c.transport is not None and not c.transport.is_closing()]
        return conn

    async def unary(self, block: bytes, message: bytes, timeout: float | None = None) -> bytes:
        """One call; past `timeout` (seconds, connecting included) TimeoutError."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()  # once: it costs a getpid() per use on Python 3.11
        deadline = None if timeout is None else self._loop.time() + timeout
        refused = 0
        while True:
            conn = self._conn
            if conn is None or not conn.usable:
                async with asyncio.timeout_at(deadline):
                    conn = await self._connection()
            try:
                return await conn.unary(block, message, deadline)
            except StreamRefused:
                # The server never started this call, so sending it again is safe: on a fresh connection
                # after a GOAWAY, or on this one once a stream has finished (grpc's server can refuse a
                # stream just over its MAX_CONCURRENT_STREAMS before its count sees one of ours close).
                refused += 1
                if refused > MAX_REFUSED:
                    raise
                if conn.usable:
                    async with asyncio.timeout_at(deadline):
                        await conn.stream_finished()
                        await asyncio.sleep(min(0.0005 * 2**refused, 0.05))  # while the server catches up

    def drop_if_silent(self, since: float) -> None:
        """After a call timed out: if the connection has received nothing at all since `since`, it may be
        dead without having been closed (a vanished host, a dropped route, a frozen server), so the next
        call connects afresh. The calls still on the old connection keep their own deadlines, each ending
        answered or timed out as on any connection, and it closes once the last is done. (Failing them
        at once, as this did first, turned one timeout into a burst of "unavailable" errors for the
        calls sent at about the same moment.)"""
        conn = self._conn
        if conn is not None and conn.lost is None and conn.last_received < since:
            self._conn = None
            conn.drain()
            if not conn.idle:
                self._draining.append(conn)

    def close(self) -> None:
        for conn in [self._conn, *self._draining]:
            if conn is not None:
                conn.close()
        self._conn, self._draining = None, []
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
