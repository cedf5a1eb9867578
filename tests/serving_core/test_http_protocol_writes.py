"""How the project's uvicorn protocol writes answers: head and body in one write, nothing held back.

A real uvicorn server on loopback with `timed_protocol`; the only addition is a recorder between the
protocol and the socket's transport that keeps each write it is asked for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from devstack.process import free_port
from serving_core.http_protocol import timed_protocol


class _Recorder:
    """The socket's transport, keeping a copy of every write (a writelines call is one write)."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def writelines(self, parts: Any) -> None:  # one send (writev) of several buffers
        parts = list(parts)
        self._writes.append(b"".join(parts))
        self._transport.writelines(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class App:
    def __init__(self) -> None:
        self.go = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/stream":  # chunked: the head, then body parts the test lets out one by one
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await self.go.wait()
            await send({"type": "http.response.body", "body": b"part1", "more_body": True})
            await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": b"part2"})
            return
        answer = b"echo:" + body
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]}
        )
        await send({"type": "http.response.body", "body": answer})


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, App, list[bytes]]]:
    app = App()
    writes: list[bytes] = []

    class Recording(timed_protocol()):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(_Recorder(transport, writes))

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=Recording, lifespan="off", log_level="warning")
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        await asyncio.sleep(0.02)
    yield port, app, writes
    srv.should_exit = True
    await task


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


async def test_head_and_body_leave_in_one_write(server: tuple[int, App, list[bytes]]) -> None:
    port, _, writes = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(3):  # kept alive: each answer is one write of its own
        writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\n%d" % i)
        head, body = await _response(reader)
        assert head.startswith(b"HTTP/1.1 200") and body == b"echo:%d" % i
    writer.close()
    assert len(writes) == 3, writes
    assert all(w.startswith(b"HTTP/1.1 200") and w.endswith(b"echo:%d" % i) for i, w in enumerate(writes))


async def test_an_answer_without_a_body_is_not_held_back(server: tuple[int, App, list[bytes]]) -> None:
    # HEAD: uvicorn writes the head and never a body; the connection then serves the next request.
    port, _, writes = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 5" in head.lower()
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    head, body = await _response(reader)
    assert head.startswith(b"HTTP/1.1 200") and body == b"echo:"
    writer.close()
    assert len(writes) == 2, writes  # one per answer


async def test_a_head_reaches_the_client_while_the_app_still_works_on_the_body(
    server: tuple[int, App, list[bytes]],
) -> None:
    port, app, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
    # The app waits for `go` after its head: the head must arrive anyway (held, it would never come).
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    app.go.set()
    rest = b""
    while not rest.endswith(b"0\r\n\r\n"):
        rest += await asyncio.wait_for(reader.read(4096), 5)
    assert rest == b"5\r\npart1\r\n5\r\npart2\r\n0\r\n\r\n"
    writer.close()


async def test_100_continue_reaches_a_client_that_waits_for_it(server: tuple[int, App, list[bytes]]) -> None:
    # A client that sends "Expect: 100-continue" waits for the interim answer before its body, which
    # is then answered in full.
    port, _, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"abc")
    head, body = await _response(reader)
    assert head.startswith(b"HTTP/1.1 200") and body == b"echo:abc"
    writer.close()


async def test_a_closing_answer_is_sent_whole_before_the_close(server: tuple[int, App, list[bytes]]) -> None:
    port, _, writes = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi")
    data = await asyncio.wait_for(reader.read(), 5)  # to EOF: the server closed after answering
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\necho:hi")
    assert len(writes) == 1
    writer.close()
