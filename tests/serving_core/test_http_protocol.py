"""The per-request read limit on uvicorn's protocol, against a real uvicorn server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
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
        if scope["path"] == "/early":  # answers before reading its body, as an app may
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        else:
            await asyncio.sleep(0)  # reads its body a moment later, as FastAPI's routes do
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            if not message.get("more_body"):
                break
        if scope["path"] == "/slow":
            await asyncio.sleep(LIMIT_S * 2)  # the app's own time is not the client's read time
        if scope["path"] != "/early":
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


# --- requests that cannot be parsed: JSON errors, a cap on the head, answers owed first ---------------


async def _answers_until_closed(reader: asyncio.StreamReader, seconds: float = 10) -> list[tuple[int, bytes, bytes]]:
    """Every answer on the connection until the server closes it: (status, head, body)."""
    out = []
    async with asyncio.timeout(seconds):
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                assert exc.partial == b"", exc.partial  # nothing half-sent
                return out
            lines = head.lower().split(b"\r\n")
            length = int(next(ln.split(b":")[1] for ln in lines if ln.startswith(b"content-length")))
            out.append((int(head.split(b" ")[1]), head, await reader.readexactly(length)))


async def _one_request_works(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    [(status, _, body)] = await _answers_until_closed(reader)
    assert (status, body) == (200, b"ok")
    writer.close()


def _json_error(head: bytes, body: bytes) -> str:
    assert b"content-type: application/json" in head.lower() and b"connection: close" in head.lower()
    return orjson.loads(body)["error"]


async def test_a_head_streamed_past_the_cap_is_refused_with_431_while_others_are_served(
    server: tuple[int, App],
) -> None:
    # One endless header: refused once 64 KiB of head have come, long before the quadratic cost of
    # re-joining its value on every read could stall the loop; other clients are served meanwhile.
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ")

    async def stream() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(4096):  # up to 64 MiB, if nothing stopped it
                writer.write(b"a" * 16384)
                await writer.drain()

    task = asyncio.create_task(stream())
    [(status, head, body)] = await _answers_until_closed(reader)
    assert status == 431 and "at most 65536 bytes" in _json_error(head, body)
    await _one_request_works(port)
    task.cancel()
    writer.close()


@pytest.mark.parametrize(("size", "status"), [(60 * 1024, 200), (70 * 1024, 431), (1024 * 1024, 431)])
async def test_a_whole_head_in_one_write_is_measured_too(server: tuple[int, App], size: int, status: int) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # A long URL and many headers count alike.
    headers = b"".join(b"X-%05d: %s\r\n" % (i, b"v" * 90) for i in range(size // 2 // 100))
    writer.write(b"GET /" + b"u" * (size // 2) + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + headers + b"\r\n")
    [(got, head, body)] = await _answers_until_closed(reader)
    assert got == status
    if status == 431:
        assert "Request header fields too large" in _json_error(head, body)
    writer.close()


async def test_a_bad_request_pipelined_after_a_good_one_waits_for_its_answer(server: tuple[int, App]) -> None:
    # uvicorn answered the 400 at once and closed: the client's only answer, to its first (good) request,
    # was that 400. Now the good one is answered first, then the 400, then the connection closes.
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    good = b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
    writer.write(good + b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" + good + b"GARBAGE\r\n\r\n" + good)
    answers = await _answers_until_closed(reader)
    assert [a[0] for a in answers] == [200, 200, 200, 400]
    assert [a[2] for a in answers[:3]] == [b"ok"] * 3
    assert _json_error(answers[3][1], answers[3][2]).startswith("Invalid HTTP request: ")
    writer.close()


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "Content-Length"),
        (b"GET /\xff HTTP/1.1\r\nHost: t\r\n\r\n", "Invalid char in url"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n", "Invalid HTTP request: "),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", "Invalid HTTP request: "),
    ],
)
async def test_framing_errors_are_json_400s(server: tuple[int, App], raw: bytes, fragment: str) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    [(status, head, body)] = await _answers_until_closed(reader)
    assert status == 400 and fragment in _json_error(head, body)
    writer.close()
    await _one_request_works(port)


async def test_a_malformed_chunk_in_a_body_being_read_is_refused_at_once(server: tuple[int, App]) -> None:
    port, app = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    await asyncio.sleep(0.1)  # the app is now waiting for the rest of its body
    writer.write(b"zz\r\n")  # not a chunk size
    [(status, head, body)] = await _answers_until_closed(reader, LIMIT_S * 0.8)  # before the read limit
    assert status == 400 and _json_error(head, body).startswith("Invalid HTTP request: ")
    for _ in range(50):
        if app.disconnects:
            break
        await asyncio.sleep(0.02)
    assert app.disconnects == 1
    writer.close()


async def test_a_big_head_pipelined_into_the_same_read_is_measured_too(server: tuple[int, App]) -> None:
    # The second head begins partway through the read that ends the first request: its bytes before
    # that read's end were not counted as it arrived, so it is measured when complete.
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    big = b"".join(b"X-%05d: %s\r\n" % (i, b"v" * 90) for i in range(1000))  # ~100 KB
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" + b"GET / HTTP/1.1\r\nHost: t\r\n" + big + b"\r\n")
    answers = await _answers_until_closed(reader)
    assert [a[0] for a in answers] == [200, 431]
    writer.close()


async def test_a_refused_expect_100_request_writes_nothing_after_the_refusal(
    server: tuple[int, App], caplog: pytest.LogCaptureFixture
) -> None:
    # The app asks for its body after the refusal; uvicorn would then write "100 Continue" on a
    # connection whose sending side has ended, and log the error with a traceback.
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n"
    )
    [(status, head, body)] = await _answers_until_closed(reader)
    assert status == 400 and _json_error(head, body).startswith("Invalid HTTP request: ")
    await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]
    writer.close()


async def test_no_400_inside_an_answer_already_begun(server: tuple[int, App]) -> None:
    # An app that has sent its answer's head before its body turned out malformed: the connection is
    # closed; a 400 written now would be read as part of that answer.
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /early HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200")
    writer.write(b"zz\r\n")
    async with asyncio.timeout(LIMIT_S * 0.8):
        rest = await reader.read()
    assert b"HTTP/1.1" not in rest
    writer.close()
