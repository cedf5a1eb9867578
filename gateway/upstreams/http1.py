"""A minimal pooled HTTP/1.1 keep-alive client for the REST hot path.

Why not httpx: measured on this project's 2-core machine against a raw asyncio server, an httpx
AsyncClient POST cost 2.5-5.6 ms per call against 0.06 ms for one write of head + body on a kept-alive
connection: httpx's per-call machinery (and its separate header/body writes) would alone be ten times
the gateway's whole 0.5 ms overhead budget. The upstreams are our own servers speaking plain HTTP/1.1
with Content-Length (chunked answers are read too), so this small client is all we need.

Each connection is an asyncio Protocol whose answers are parsed by httptools (the C parser uvicorn
uses) as bytes arrive, and a call awaits one future that the parser's last callback resolves. An
earlier version read through asyncio streams with a hand-written parser; measured side by side on the
gateway's side the two cost the same (docs/benchmarks.md), and this one is a real parser: interim
100 answers, bodies delimited by the connection's close, and anything that is not HTTP/1.1 refused.
The call's time limit is one timer on that future (see `request`), which did measure: 0.07-0.11 ms
of p50 per call against an asyncio.timeout() block.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools


class ConnectFailed(Exception):
    """No connection could be made (refused, unreachable, connect timeout)."""


class ConnectionLost(Exception):
    """The connection broke before a complete answer arrived."""


class ProtocolError(Exception):
    """The peer answered something that is not HTTP/1.1."""


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    content: bytes


class _StaleConnection(Exception):
    """Nothing came back on a kept-alive connection: the peer closed it; safe to resend elsewhere."""


class _Conn(asyncio.Protocol):
    """One kept-alive connection; at most one call in flight on it (no pipelining)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[HttpResponse] | None = None
        self.closed = False
        self.reusable = False  # the last answer allows another call on this connection
        self.got_bytes = False  # part of an answer has arrived (a failure after that is not "stale")
        self.headers_done = False
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def begin(self, waiter: asyncio.Future[HttpResponse]) -> None:
        self.waiter = waiter
        self.reusable = False
        self.got_bytes = False

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            # Bytes nobody asked for (or after a call gave up): whatever they are, the connection's
            # framing can no longer be trusted.
            self.reusable = False
            self.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"not an HTTP/1.1 answer ({exc})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if not self.got_bytes:
            waiter.set_exception(_StaleConnection("connection closed before the answer"))
        elif self.headers_done and "content-length" not in self.headers and "transfer-encoding" not in self.headers:
            # An answer delimited by closing the connection: complete now.
            self.headers["connection"] = "close"
            waiter.set_result(HttpResponse(self.parser.get_status_code(), self.headers, b"".join(self.body)))
        else:
            waiter.set_exception(ConnectionLost(f"connection lost mid-answer ({type(exc).__name__ if exc else 'EOF'})"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.headers_done = False
        self.headers = {}
        self.body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            return  # an interim answer (100 Continue): the real one follows on the same connection
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.reusable = False  # a second answer to one request
            return
        self.reusable = self.parser.should_keep_alive()
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        waiter.set_result(HttpResponse(status, self.headers, body))


def _expire(waiter: asyncio.Future[HttpResponse]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Http1Pool:
    """Kept-alive connections to one origin; at most `max_connections` at once (callers queue)."""

    def __init__(self, base_url: str, *, max_connections: int, connect_timeout_s: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{base_url!r}: only plain http:// upstreams are supported on the fast path")
        self.host = parts.hostname
        self.port = parts.port or 80
        self._host_header = f"{self.host}:{self.port}".encode()
        self._connect_timeout = connect_timeout_s
        self._idle: deque[_Conn] = deque()
        self._slots = asyncio.Semaphore(max_connections)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _connect(self, deadline: float | None) -> _Conn:
        loop = self._loop_now()
        limit = self._connect_timeout
        call_limited = deadline is not None and deadline - loop.time() < limit
        if call_limited:
            assert deadline is not None
            limit = max(deadline - loop.time(), 0.0)
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(_Conn, self.host, self.port), limit)
        except TimeoutError:
            if call_limited:
                raise  # the call's own time is up, not the connect's
            raise ConnectFailed(f"connect timeout after {self._connect_timeout}s") from None
        except OSError as exc:
            raise ConnectFailed(exc.strerror or str(exc)) from None
        return conn

    def _loop_now(self) -> asyncio.AbstractEventLoop:
        # Looked up once: asyncio.get_running_loop() costs a getpid() system call per use on Python 3.11.
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        content_type: str = "application/json",
        extra_headers: str = "",
        timeout: float | None = None,
    ) -> HttpResponse:
        """One call (GET or POST: an answer to HEAD would be misread); `extra_headers` are complete
        header lines, each ending in CRLF. `timeout` covers the whole call, waiting for a free
        connection and connecting included: past it, TimeoutError. A call that times out or is
        cancelled closes its connection, so a late answer is never read as the next call's.

        The time limit is one timer on the answer's future rather than an asyncio.timeout() block
        around the call: on the 2-vCPU VM the block's per-call bookkeeping (the current task, two
        getpid() calls, a timer armed and cancelled through the task's cancellation machinery) was a
        visible part of the gateway's per-request cost."""
        loop = self._loop_now()
        deadline = None if timeout is None else loop.time() + timeout
        head = (
            f"{method} {path} HTTP/1.1\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"{extra_headers}".encode()
            + b"Host: "
            + self._host_header
            + b"\r\n\r\n"
        )
        slots = self._slots
        if slots.locked() and deadline is not None:  # every connection busy: queue, within the time limit
            async with asyncio.timeout_at(deadline):
                await slots.acquire()
        else:
            await slots.acquire()  # (returns at once unless every connection is busy)
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.usable:
                    conn.close()
                    continue
                try:
                    return await self._exchange(conn, head, body, deadline)
                except _StaleConnection:
                    continue  # the server closed an idle connection before we used it: take another
            conn = await self._connect(deadline)
            try:
                return await self._exchange(conn, head, body, deadline)
            except _StaleConnection as exc:
                raise ConnectionLost(str(exc)) from None
        finally:
            slots.release()

    async def _exchange(self, conn: _Conn, head: bytes, body: bytes, deadline: float | None) -> HttpResponse:
        if not conn.usable:
            # Closed under us between connect (or the idle check) and now: the peer reset it. uvloop
            # would raise RuntimeError on the write; nothing was sent, so this is safe to resend.
            conn.close()
            raise _StaleConnection("connection closed before the request was written")
        loop = self._loop_now()
        waiter: asyncio.Future[HttpResponse] = loop.create_future()
        timer = None if deadline is None else loop.call_at(deadline, _expire, waiter)
        conn.begin(waiter)
        assert conn.transport is not None
        conn.transport.writelines((head, body) if body else (head,))  # one send (writev), no copy of the body
        ok = False
        try:
            resp = await waiter
            ok = conn.reusable
            return resp
        finally:
            if timer is not None:
                timer.cancel()
            conn.waiter = None
            if ok:
                self._idle.append(conn)
            else:
                conn.close()

    async def aclose(self) -> None:
        while self._idle:
            conn = self._idle.pop()
            conn.close()
        await asyncio.sleep(0)  # let the transports finish closing
