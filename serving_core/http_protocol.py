"""uvicorn's httptools protocol with time limits on reading a request.

uvicorn closes a kept-alive connection that stays idle between requests (`timeout_keep_alive`), but it
has no limit on the request itself: a connection that opens and sends nothing, a head trickled one
byte at a time (slowloris) or a body that stops halfway holds its socket and file descriptor forever,
and enough of them lock everyone out (a review opened 20,100 idle connections and the gateway's health
check stopped answering). The limits here are nginx's: the whole request head must arrive within
`request_read_timeout_s` (client_header_timeout), counted from the connection or from the first byte
after the previous answer, and while a body arrives no gap between two reads may be longer than that
(client_body_timeout), so a slow but steady upload is never cut. nginx defaults both to 60 s; so does
this. While uvicorn itself has stopped reading (the app has not taken the previous data, or a
pipelined request waits its turn) the clock does not run. A connection past a limit is closed; the
app, if it had started, sees `http.disconnect`.

It also sends a response's head and the first part of its body in one write. uvicorn writes the head
when the app sends `http.response.start` and the body when it sends `http.response.body`, and uvloop
puts each write on the socket at once: two send calls and two TCP segments per answer, and a client
that wakes for the head only to wait again for the body. In front of another server of ours (the
gateway before torch_service) that cost is paid once per hop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_REQUEST_READ_TIMEOUT_S = 60.0


class _HeadWithBodyTransport:
    """The connection's transport, holding a response head back until the body's first write.

    A held head leaves with the next write, or on its own at the loop's next turn (`call_soon`) when
    nothing follows in this one: a HEAD answer, or an app that awaits something between the two
    messages. Everything else is the wrapped transport's.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.writelines((held, data))  # one send (writev), and no copy of a large body
            return
        # uvicorn writes a response head on its own, ending in a blank line; "100 Continue" is an
        # interim answer the client waits for before it sends the body, so it is not held.
        if data.startswith(b"HTTP/1.1 ") and data.endswith(b"\r\n\r\n") and not data.startswith(b"HTTP/1.1 100"):
            self._held = data
            self._loop.call_soon(self._flush)
            return
        self._transport.write(data)

    def writelines(self, data: Any) -> None:
        self.write(b"".join(data))

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def is_closing(self) -> bool:  # called several times per request: spare it the __getattr__ detour
        return self._transport.is_closing()

    def _flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class TimedHttpToolsProtocol(HttpToolsProtocol):
    request_read_timeout_s = DEFAULT_REQUEST_READ_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One timer per connection; the callback works out the current deadline and re-arms itself,
        # so the hot path only stores timestamps.
        self._timer: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # "head", "body", or None (no request being read)
        self._since = 0.0  # head: when waiting for it began; body: the last read

    def _enter(self, phase: str) -> None:
        self._phase = phase
        self._since = self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_at(self._since + self.request_read_timeout_s, self._check)

    def _check(self) -> None:
        self._timer = None
        if self._phase is None or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:
            self._since = now  # uvicorn is not reading: the client cannot be the slow one
        deadline = self._since + self.request_read_timeout_s
        if now < deadline:
            self._timer = self.loop.call_at(deadline, self._check)
            return
        what = "request head" if self._phase == "head" else "request body (no data)"
        self.logger.info("closing a connection: %s for over %gs", what, self.request_read_timeout_s)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Every request cycle uvicorn makes from here on writes through this.
        self.transport = _HeadWithBodyTransport(transport, self.loop)  # type: ignore[assignment]
        self._enter("head")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase is None:  # a pipelined head that began while the previous answer was pending
            self._enter("head")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._enter("body")

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._since = self.loop.time()

    def on_message_complete(self) -> None:
        self._phase = None
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        # The first bytes after an answer start the clock for the next head (idle time before them
        # is keep-alive's to limit). Stray bytes that begin no request, a blank line, stop uvicorn's
        # keep-alive timer; this clock still runs for them.
        if self._phase is None and (self.cycle is None or self.cycle.response_complete):
            self._enter("head")
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)


def timed_protocol(request_read_timeout_s: float = DEFAULT_REQUEST_READ_TIMEOUT_S) -> type[TimedHttpToolsProtocol]:
    """The protocol class to give uvicorn as `http=`, with its own time limit."""
    return type(
        "TimedHttpToolsProtocol",
        (TimedHttpToolsProtocol,),
        {"request_read_timeout_s": request_read_timeout_s},
    )
