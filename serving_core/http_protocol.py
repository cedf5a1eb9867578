"""uvicorn's httptools protocol with a time limit on reading each request.

uvicorn closes a kept-alive connection that stays idle between requests (`timeout_keep_alive`), but it
has no limit on the request itself: a connection that opens and sends nothing, a head trickled one
byte at a time (slowloris) or a body that stops halfway holds its socket and file descriptor forever,
and enough of them lock everyone out (a review opened 20,100 idle connections and the gateway's health
check stopped answering). Here each request must arrive whole, head and body, within
`request_read_timeout_s` of its first byte (of the connection, for the first one), or the connection
is closed: the app, if it had started, sees `http.disconnect`. nginx's client_header_timeout and
client_body_timeout default to 60 s; so does this.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_REQUEST_READ_TIMEOUT_S = 60.0


class TimedHttpToolsProtocol(HttpToolsProtocol):
    request_read_timeout_s = DEFAULT_REQUEST_READ_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self.request_read_timeout_s, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection whose request took over %gs to arrive", self.request_read_timeout_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # the first request's clock starts with the connection

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # a later request's clock starts with its first byte (idle time is keep-alive's)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def timed_protocol(request_read_timeout_s: float = DEFAULT_REQUEST_READ_TIMEOUT_S) -> type[TimedHttpToolsProtocol]:
    """The protocol class to give uvicorn as `http=`, with its own time limit."""
    return type(
        "TimedHttpToolsProtocol",
        (TimedHttpToolsProtocol,),
        {"request_read_timeout_s": request_read_timeout_s},
    )
