"""The per-request read limit on uvicorn's protocol, against a real uvicorn server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from devstack.process import free_port
from serving_core.http_protocol import timed_protocol

LIMIT_S = 0.6


class App:
    """Answers after reading the whole body (or records that the client vanished)."""

    def __init__(self) -> None:
        self.disconnects = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            if not message.get("more_body"):
                break
        if scope["path"] == "/slow":
            await asyncio.sleep(LIMIT_S * 2)  # the app's own time is not the client's read time
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, App]]:
    app = App()
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=timed_protocol(LIMIT_S), lifespan="off", log_level="warning"
    )
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        await asyncio.sleep(0.02)
    yield port, app
    srv.should_exit = True
    await task


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closed the connection (reads whatever it sent first)."""
    start = time.monotonic()
    async with asyncio.timeout(seconds):
        while await reader.read(65536):
            pass
    return time.monotonic() - start


async def test_a_connection_that_sends_nothing_is_closed(server: tuple[int, App]) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await _closed_within(reader, 10) >= LIMIT_S * 0.9
    writer.close()


async def test_a_trickled_head_is_closed_even_though_bytes_keep_coming(server: tuple[int, App]) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n")

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for i in range(100):
                writer.write(b"X-%d: y\r\n" % i)
                await writer.drain()
                await asyncio.sleep(LIMIT_S / 4)

    task = asyncio.create_task(trickle())
    await _closed_within(reader, 10)
    task.cancel()
    writer.close()


async def test_a_body_that_stops_halfway_is_closed_and_the_app_sees_a_disconnect(server: tuple[int, App]) -> None:
    port, app = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    await _closed_within(reader, 10)
    writer.close()
    for _ in range(50):
        if app.disconnects:
            break
        await asyncio.sleep(0.05)
    assert app.disconnects == 1


async def test_kept_alive_clients_and_slow_answers_are_not_cut(server: tuple[int, App]) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for path in ("/", "/slow", "/"):
        writer.write(b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc" % path.encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert await reader.readexactly(2) == b"ok"
        await asyncio.sleep(LIMIT_S * 1.5)  # idle between requests longer than the limit: keep-alive's business
    writer.close()


async def test_a_blank_line_after_an_answer_does_not_switch_the_clock_off(server: tuple[int, App]) -> None:
    # uvicorn's keep-alive timer stops at any byte, and a blank line begins no request: before, such a
    # connection was never closed.
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200")
    assert await reader.readexactly(2) == b"ok"
    writer.write(b"\r\n")
    await _closed_within(reader, 10)
    writer.close()


async def test_a_slow_but_steady_body_is_not_cut(server: tuple[int, App]) -> None:
    # The body limit is on silence between reads (nginx's client_body_timeout), not on the total time.
    port, app = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunks = 12
    writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (chunks * 100))
    for _ in range(chunks):  # 12 x 0.15 s = 1.8 s in all, three times the limit
        writer.write(b"x" * 100)
        await writer.drain()
        await asyncio.sleep(LIMIT_S / 4)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200") and app.disconnects == 0
    writer.close()
