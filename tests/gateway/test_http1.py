"""The gateway's pooled HTTP/1.1 client against real asyncio servers on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from devstack.process import free_port
from gateway.upstreams.http1 import ConnectFailed, ConnectionLost, Http1Pool, ProtocolError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return await reader.readexactly(length) if length else b""


def answer(body: bytes, status: int = 200) -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nX-Model-Version: 4\r\n\r\n" % (status, len(body)) + body


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while await self.handler(reader, writer, n):
                n += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
    body = await read_request(reader)
    writer.write(answer(b"echo:" + body))
    await writer.drain()
    return True


async def test_keep_alive_reuses_one_connection_and_reads_headers() -> None:
    server = Server(echo)
    async with server as url:
        pool = Http1Pool(url, max_connections=4, connect_timeout_s=1)
        for i in range(20):
            resp = await pool.request("POST", "/x", f"{i}".encode())
            assert (resp.status, resp.content, resp.headers["x-model-version"]) == (200, f"echo:{i}".encode(), "4")
        await pool.aclose()
    assert server.connections == 1


async def test_concurrent_calls_open_at_most_max_connections() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await read_request(reader)
        await asyncio.sleep(0.02)
        writer.write(answer(b"ok"))
        return True

    server = Server(slow)
    async with server as url:
        pool = Http1Pool(url, max_connections=3, connect_timeout_s=1)
        results = await asyncio.gather(*(pool.request("POST", "/", b"") for _ in range(12)))
        assert all(r.content == b"ok" for r in results)
        await pool.aclose()
    assert server.connections == 3


async def test_chunked_answer() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        return True

    async with Server(chunked) as url:
        pool = Http1Pool(url, max_connections=1, connect_timeout_s=1)
        assert (await pool.request("GET", "/", b"")).content == b"hello world"
        assert (await pool.request("GET", "/", b"")).content == b"hello world"  # connection still usable
        await pool.aclose()


async def test_answer_trickled_byte_by_byte_interim_100_and_close_delimited_body() -> None:
    """The parser sees answers as TCP delivers them: a head split anywhere, a 100 Continue before the
    real answer, and a body with neither length nor chunks that ends when the server closes."""

    async def odd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await read_request(reader)
        if n == 0:
            for byte in b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"trickled"):
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0)
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nX-Model-Version: 5\r\n\r\nuntil-close")
        await writer.drain()
        return False

    server = Server(odd)
    async with server as url:
        pool = Http1Pool(url, max_connections=1, connect_timeout_s=1)
        first = await pool.request("POST", "/", b"x")
        assert (first.status, first.content, first.headers["x-model-version"]) == (200, b"trickled", "4")
        second = await pool.request("POST", "/", b"x")  # same connection, answered until close
        assert (second.status, second.content, second.headers["connection"]) == (200, b"until-close", "close")
        third = await pool.request("POST", "/", b"x")  # not reused after the close: a new connection
        assert third.content == b"trickled"
        await pool.aclose()
    assert server.connections == 2


async def test_garbage_answer_is_a_protocol_error_and_bytes_after_an_answer_retire_the_connection() -> None:
    calls = 0

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        nonlocal calls
        calls += 1
        await read_request(reader)
        if calls == 1:
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            return True
        # A complete answer with stray bytes behind it: answered, but the connection is not reused.
        writer.write(answer(b"ok") + b"junk")
        await writer.drain()
        return True

    server = Server(garbage)
    async with server as url:
        pool = Http1Pool(url, max_connections=1, connect_timeout_s=1)
        with pytest.raises(ProtocolError, match=r"not an HTTP/1\.1 answer"):
            await pool.request("GET", "/", b"")
        assert (await pool.request("GET", "/", b"")).content == b"ok"
        assert (await pool.request("GET", "/", b"")).content == b"ok"
        await pool.aclose()
    assert server.connections == 3


async def test_idle_connection_closed_by_server_is_replaced_transparently() -> None:
    async def one_per_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await read_request(reader)
        writer.write(answer(b"ok"))
        await writer.drain()
        return False  # close after each answer, without saying so (keep-alive timeout on the server)

    server = Server(one_per_conn)
    async with server as url:
        pool = Http1Pool(url, max_connections=1, connect_timeout_s=1)
        for _ in range(5):
            assert (await pool.request("POST", "/", b"x")).content == b"ok"
            await asyncio.sleep(0.01)
        await pool.aclose()
    assert server.connections == 5


async def test_refused_and_lost_connections() -> None:
    pool = Http1Pool(f"http://127.0.0.1:{free_port()}", max_connections=1, connect_timeout_s=1)
    with pytest.raises(ConnectFailed):
        await pool.request("GET", "/", b"")

    async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part")
        await writer.drain()
        return False

    async with Server(half_answer) as url:
        with pytest.raises(ConnectionLost):
            await Http1Pool(url, max_connections=1, connect_timeout_s=1).request("GET", "/", b"")


@pytest.mark.parametrize("how", ["timeout argument", "caller's asyncio.timeout"])
async def test_timed_out_call_closes_its_connection(how: str) -> None:
    calls = 0

    async def stall_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        nonlocal calls
        await read_request(reader)
        calls += 1
        first = calls == 1
        if first:
            await asyncio.sleep(0.3)
        writer.write(answer(b"late" if first else b"fresh"))
        return True

    server = Server(stall_first)
    async with server as url:
        pool = Http1Pool(url, max_connections=1, connect_timeout_s=1)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            if how == "timeout argument":
                await pool.request("GET", "/", b"", timeout=0.1)
            else:
                async with asyncio.timeout(0.1):
                    await pool.request("GET", "/", b"")
        assert time.monotonic() - start < 0.25  # not the 0.3 s the server took
        # The late answer must never be read as the next call's answer.
        assert (await pool.request("GET", "/", b"")).content == b"fresh"
        await pool.aclose()
    assert server.connections == 2


async def test_timeout_covers_waiting_for_a_free_connection() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await read_request(reader)
        await asyncio.sleep(0.4)
        writer.write(answer(b"ok"))
        return True

    async with Server(slow) as url:
        pool = Http1Pool(url, max_connections=1, connect_timeout_s=1)
        busy = asyncio.create_task(pool.request("GET", "/", b"", timeout=5))
        await asyncio.sleep(0.05)  # the only connection is taken
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await pool.request("GET", "/", b"", timeout=0.1)
        assert time.monotonic() - start < 0.3
        assert (await busy).content == b"ok"
        assert (await pool.request("GET", "/", b"", timeout=5)).content == b"ok"  # the slot was given back
        await pool.aclose()


def test_connection_reset_before_the_first_write_is_a_lost_connection_under_uvloop() -> None:
    """A replica killed under load: the connect succeeds, then its reset lands before the request is
    written. uvloop (what the gateway runs on) raises RuntimeError on a write to a closed transport,
    which reached the client as a 500; it must be ConnectionLost (retried on another replica)."""
    import uvloop

    async def scenario() -> None:
        async with Server(echo) as url:
            pool = Http1Pool(url, max_connections=1, connect_timeout_s=1)
            real_connect = pool._connect

            async def connect_then_reset(deadline: float | None) -> Any:
                conn = await real_connect(deadline)
                assert conn.transport is not None
                conn.transport.abort()  # the peer's RST, processed before our first write
                await asyncio.sleep(0.01)  # (the handle is fully closed by then)
                return conn

            pool._connect = connect_then_reset  # type: ignore[method-assign]
            with pytest.raises(ConnectionLost):
                await pool.request("POST", "/", b"x")
            pool._connect = real_connect  # type: ignore[method-assign]
            assert (await pool.request("POST", "/", b"x")).content == b"echo:x"
            await pool.aclose()

    uvloop.run(scenario())
