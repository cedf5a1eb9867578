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

And it answers a request it cannot parse the way the apps answer everything else, with a JSON
`{"error": ...}` (uvicorn sends a text/plain 400), after the answers it owes:
- **A head larger than `max_head_bytes`** (64 KiB by default, twice nginx's largest header buffers) is
  refused with 431 and the connection closed. Without a cap, a client streaming one endless header held
  a whole server: httptools re-joins a header's partial value on every read, so the event loop's work
  grows with the square of its size (a 64 MB header stalled the gateway for 5 s, and it then took its
  own stall for a dead backend).
- **A malformed request pipelined behind good ones** no longer costs them their answers. uvicorn wrote
  its 400 and closed the connection at once, so a client got one answer, the 400, for the good request it
  sent first; here the 400 waits until the requests before it are answered. A request whose own body is
  malformed (a bad chunk size) is answered at once, and its app sees a disconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

DEFAULT_REQUEST_READ_TIMEOUT_S = 60.0
# Set to True in a request's ASGI scope when its connection closed before the answer was complete.
CLIENT_GONE = "serving_core.client_gone"
# Set to the status this protocol answered a request with itself (a malformed body) after its app started.
REFUSED = "serving_core.refused"
DEFAULT_MAX_HEAD_BYTES = 64 * 1024
# How long a refused client's remaining bytes are read and dropped before the connection closes.
LINGER_S = 2.0


class _HeadTooLarge(Exception):
    """Raised from the parser's callback; httptools hands it back as the __context__ of its error."""


class _HeadWithBodyTransport:
    """The connection's transport, holding a response head back until the body's first write.

    A held head leaves with the next write, or on its own at the loop's next turn (`call_soon`) when
    nothing follows in this one: a HEAD answer, or an app that awaits something between the two
    messages. Everything else is the wrapped transport's.
    """

    __slots__ = ("_eof", "_held", "_linger", "_loop", "_transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        linger: Callable[[], bool] | None = None,
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._eof = False
        # Asked at close: True when the client may still be sending a body (the protocol then drops what
        # arrives), so the close lingers instead of resetting the connection.
        self._linger = linger

    def write(self, data: bytes) -> None:
        if self._eof or self._transport.is_closing():
            # The request was refused and our side of the connection ended (a malformed body): what is
            # still written (an app's answer, uvicorn's "100 Continue") goes nowhere. uvloop would raise,
            # and uvicorn log an ERROR for each.
            return
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
        self._eof = True

    def is_closing(self) -> bool:  # called several times per request: spare it the __getattr__ detour
        return self._transport.is_closing()

    def _flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        if self._linger is not None and not self._eof and not self._transport.is_closing() and self._linger():
            # An answer given before the request's body was all read (a 413 for a body streaming past the
            # limit) and the connection to close: closing with the client's bytes unread sends a reset,
            # which can destroy the answer before the client reads it. A lingering close, as nginx's: end
            # our side, drop what still comes for a moment, then close (at once when the client closes).
            try:
                self._transport.write_eof()
            except (NotImplementedError, RuntimeError, OSError):
                self._transport.close()
                return
            self._eof = True
            self._loop.call_later(LINGER_S, self._transport.close)
            return
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class TimedHttpToolsProtocol(HttpToolsProtocol):
    request_read_timeout_s = DEFAULT_REQUEST_READ_TIMEOUT_S
    max_head_bytes = DEFAULT_MAX_HEAD_BYTES
    # Told the status of each request refused here, before any app saw it (for the app's metrics).
    on_refused: Callable[[int], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One timer per connection; the callback works out the current deadline and re-arms itself,
        # so the hot path only stores timestamps.
        self._timer: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # "head", "body", or None (no request being read)
        self._since = 0.0  # head: when waiting for it began; body: the last read
        # Bytes received since the current head began: a bound, counted per read, not the head's size
        # (a read may also carry the end of the previous body); the exact size is worked out only past it.
        self._head_seen = 0
        # A head that began partway through a read: the bytes before it in that read were not counted.
        self._head_unmeasured = False
        # A refusal (status, message) waiting for the answers to the requests before it.
        self._refusal: tuple[int, str] | None = None
        # Closing after an answer while the request's body still arrives: what comes is dropped unread.
        self._lingering = False

    def _enter(self, phase: str) -> None:
        self._phase = phase
        self._since = self.loop.time()
        if phase == "head":
            self._head_seen = 0
            self._head_unmeasured = False
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
        self.transport = _HeadWithBodyTransport(transport, self.loop, self._start_lingering)  # type: ignore[assignment]
        self._enter("head")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase is None:  # a pipelined head that began while the previous answer was pending
            self._enter("head")
            self._head_unmeasured = True  # partway through a read: measured exactly when complete

    def on_headers_complete(self) -> None:
        if (self._head_seen > self.max_head_bytes or self._head_unmeasured) and self._head_size() > self.max_head_bytes:
            # Came whole in one read, or began partway through one: refused before a cycle starts.
            raise _HeadTooLarge
        super().on_headers_complete()
        self._enter("body")

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._since = self.loop.time()

    def on_message_complete(self) -> None:
        self._phase = None
        super().on_message_complete()

    def _start_lingering(self) -> bool:
        """Asked by the transport when it is told to close: linger if a request body is still arriving."""
        if self._phase == "body":
            self._lingering = True
            self._phase = None  # nothing more is read for the request: its read clock stops
        return self._lingering

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the answer is out and the connection closing: the rest of the body is dropped unread
        if self._refusal is not None:
            return  # the parser has failed; what follows is not read (the connection closes after the 400)
        # The first bytes after an answer start the clock for the next head (idle time before them
        # is keep-alive's to limit). Stray bytes that begin no request, a blank line, stop uvicorn's
        # keep-alive timer; this clock still runs for them.
        if self._phase is None and (self.cycle is None or self.cycle.response_complete):
            self._enter("head")
        if self._phase == "head":
            self._head_seen += len(data)
        # uvicorn's data_received, with the parser's own reason kept for the answer.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # as uvicorn (the apps have no WebSocket route)
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # what a callback raised, if one did
            if isinstance(cause, _HeadTooLarge):
                self._refuse(431, self._head_message())
            else:
                detail = str(cause or exc).strip().rstrip(".") or "malformed"
                self._refuse(400, f"Invalid HTTP request: {detail}")
            return
        if self._phase == "head" and self._head_seen > self.max_head_bytes:
            self._refuse(431, self._head_message())  # still coming: refused before it grows further

    def _head_message(self) -> str:
        return f"Request header fields too large: a request head may have at most {self.max_head_bytes} bytes"

    def _refuse(self, status: int, message: str) -> None:
        """Answer `{"error": message}` and close, once the requests before this one have been answered."""
        self._refusal = (status, message)
        self._phase = None  # nothing more is read for a request: the read clock stops
        self.logger.info("refusing a request: %s", message)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.more_body:
            # The request whose body is being read is the malformed one: its app sees a disconnect.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                # Its answer has begun (an app that answers before reading all of its body): a 400 now
                # would land inside it. The connection is closed instead.
                self.transport.close()
                return
            # It finds in its scope the answer the client gets instead (for its log and metrics).
            cycle.scope[REFUSED] = status  # type: ignore[literal-required]  # ASGI scopes take extra keys
        elif self.on_refused is not None:  # a request no app saw: only the hook can count it
            self.on_refused(status)
        self.flow.pause_reading()
        self._send_refusal_when_due()

    def _send_refusal_when_due(self) -> None:
        if self._refusal is None or self.transport.is_closing():
            return
        cycle = self.cycle
        if self.pipeline or (cycle is not None and not cycle.response_complete and not cycle.disconnected):
            return  # answers are owed first; on_response_complete calls again
        status, message = self._refusal
        body = orjson.dumps({"error": message})
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        # A lingering close, as nginx's: closing with the client's bytes still unread would send a reset,
        # which can destroy the answer before the client reads it (a client still sending its oversized
        # head reads only once it is done). So: end our side, read and drop what still comes for a
        # moment, then close (at once when the client closes its side: eof_received).
        try:
            self.transport.write_eof()
        except (NotImplementedError, RuntimeError, OSError):
            self.transport.close()
            return
        self.flow.resume_reading()
        self.loop.call_later(LINGER_S, self.transport.close)

    def send_400_response(self, msg: str) -> None:
        # uvicorn's own calls (its data_received is not used here; kept for any other path): JSON as well.
        self._refuse(400, msg)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal is not None:
            self._send_refusal_when_due()

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The client left before its answer was written (while the app waited on a backend, say):
            # uvicorn turns the app's later sends into no-ops, so without this mark the app would log and
            # count an answer nobody received.
            cycle.scope[CLIENT_GONE] = True  # type: ignore[literal-required]  # ASGI scopes take extra keys
        self._phase = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)


def timed_protocol(
    request_read_timeout_s: float = DEFAULT_REQUEST_READ_TIMEOUT_S,
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    on_refused: Callable[[int], None] | None = None,
) -> type[TimedHttpToolsProtocol]:
    """The protocol class to give uvicorn as `http=`, with its own limits (and `on_refused`, called with
    the status of each request it refuses itself: malformed, or a head over the limit)."""
    return type(
        "TimedHttpToolsProtocol",
        (TimedHttpToolsProtocol,),
        {
            "request_read_timeout_s": request_read_timeout_s,
            "max_head_bytes": max_head_bytes,
            "on_refused": staticmethod(on_refused) if on_refused is not None else None,
        },
    )
