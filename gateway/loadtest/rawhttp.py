"""Closed-loop HTTP/1.1 POSTs over raw sockets: the REST load path without per-request asyncio objects.

Each connection is a small state machine (connect, write the pre-encoded request, read and frame the
response, hand it over, write the next one) driven by `select.epoll` directly. With exactly one
connection a blocking socket (send, then recv until the response is complete) does the same work
without the epoll_wait call. Measured against asyncio streams in benchmarks/loadgen_vs_wrk.py: the
futures, tasks and StreamReader buffers per request were most of the generator's cost.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from gateway.loadtest.targets import ERR_CONNECT, ERR_PROTOCOL, ERR_TIMEOUT, RequestFailed, TargetError

# issue() -> index of the next request to send, or -1 when this loop must not send another.
Issue = Callable[[], int]
# complete(index, sent, done, status, body): `done` was taken the moment the response was complete.
Complete = Callable[[int, float, float, int, bytes], None]
# fail(index, started, done, error)
Fail = Callable[[int, float, float, RequestFailed], None]

CONNECT_BACKOFF_S = 0.05  # after a failed connect: a refused port must not become a busy loop
SWEEP_S = 0.01  # how often timeouts, back-offs, the step end and cancellation are looked at when idle
RECV_BYTES = 256 * 1024


def request_head(base_url: str, path: str, headers: str = "") -> bytes:
    """The request line and fixed headers of a POST to `path` under `base_url`, up to Content-Length."""
    parts = urlsplit(base_url)
    if parts.scheme != "http":
        raise TargetError(f"only http:// targets are supported by the raw client: {base_url}")
    return (
        f"POST {parts.path.rstrip('/')}{path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nAccept: application/json\r\n{headers}"
    ).encode()


def encode_posts(base_url: str, path: str, bodies: Sequence[bytes], headers: str = "") -> list[bytes]:
    """Whole requests, encoded once before the run so the hot loop only writes bytes."""
    head = request_head(base_url, path, headers)
    return [head + b"Content-Length: %d\r\n\r\n" % len(b) + b for b in bodies]


def _host_port(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    return parts.hostname or "127.0.0.1", parts.port or 80


class _Malformed(Exception):
    pass


_HEADS: dict[bytes, tuple[int, int]] = {}  # keep-alive, Content-Length heads: (status, length)


def frame_response(buf: bytes, eof: bool) -> tuple[int, bytes, bool, int] | None:
    """(status, body, server closes, bytes used) once `buf` holds a whole response; None until then.

    Handles Content-Length, chunked transfer coding, `Connection: close` (and HTTP/1.0 without
    keep-alive), a body delimited by the end of the connection, and skips 1xx interim answers.
    """
    head_end = buf.find(b"\r\n\r\n")
    if head_end >= 0:
        # A server repeats its response head byte for byte (a Date header changes once a second):
        # a head seen before is framed with one dictionary look-up.
        known = _HEADS.get(buf[:head_end])
        if known is not None:
            status, length = known
            end = head_end + 4 + length
            if len(buf) < end:
                return None
            return status, buf[head_end + 4 : end], False, end
        # The usual answer (HTTP/1.1, Content-Length, neither Connection nor Transfer-Encoding) in as
        # few steps as Python allows: this runs once per response on the generator's only core.
        head = buf[:head_end].lower()
        pos = head.find(b"\r\ncontent-length:")
        if (
            pos > 0
            and head.startswith(b"http/1.1 ")
            and b"\r\nconnection:" not in head
            and b"\r\ntransfer-encoding:" not in head
        ):
            eol = head.find(b"\r\n", pos + 17)
            try:
                status = int(head[9:12])
                length = int(head[pos + 17 : eol] if eol > 0 else head[pos + 17 :])
            except ValueError:
                raise _Malformed(f"bad status line or Content-Length: {head[:200]!r}") from None
            if status >= 200 and status not in (204, 304):
                if len(_HEADS) >= 1024:
                    _HEADS.clear()
                _HEADS[buf[:head_end]] = (status, length)
                end = head_end + 4 + length
                if len(buf) < end:
                    return None
                return status, buf[head_end + 4 : end], False, end
    return _frame_general(buf, eof)


def _frame_general(buf: bytes, eof: bool) -> tuple[int, bytes, bool, int] | None:
    start = 0
    while True:
        head_end = buf.find(b"\r\n\r\n", start)
        if head_end < 0:
            if len(buf) - start > 65536:
                raise _Malformed("response head over 64 KiB")
            return None
        if buf[start : start + 7] != b"HTTP/1.":
            raise _Malformed(f"not an HTTP/1.x status line: {buf[start : start + 40]!r}")
        try:
            status = int(buf[start + 9 : start + 12])
        except ValueError:
            raise _Malformed(f"bad status line: {buf[start : start + 40]!r}") from None
        body_start = head_end + 4
        if 100 <= status < 200 and status != 101:
            start = body_start  # "100 Continue" and friends: the real answer follows
            continue
        break
    head = buf[start:head_end].lower()
    close = b"\r\nconnection: close" in head or (head.startswith(b"http/1.0") and b"keep-alive" not in head)
    if status in (204, 304):
        return status, b"", close, body_start
    pos = head.find(b"\r\ncontent-length:")
    if pos >= 0:
        eol = head.find(b"\r\n", pos + 17)
        try:
            length = int(head[pos + 17 : eol if eol >= 0 else len(head)])
        except ValueError:
            raise _Malformed("bad Content-Length") from None
        end = body_start + length
        if len(buf) < end:
            return None
        return status, buf[body_start:end], close, end
    te = head.find(b"\r\ntransfer-encoding:")
    if te >= 0:
        te_end = head.find(b"\r\n", te + 2)
        if b"chunked" in head[te : te_end if te_end >= 0 else len(head)]:
            return _dechunk(buf, body_start, status, close)
    # Neither: the body runs to the end of the connection.
    if not eof:
        return None
    return status, buf[body_start:], True, len(buf)


def _dechunk(buf: bytes, pos: int, status: int, close: bool) -> tuple[int, bytes, bool, int] | None:
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(buf[pos:eol].split(b";")[0], 16)
        except ValueError:
            raise _Malformed(f"bad chunk size line {buf[pos:eol][:40]!r}") from None
        pos = eol + 2
        if size == 0:
            if buf[pos : pos + 2] == b"\r\n":
                return status, b"".join(parts), close, pos + 2
            trailers_end = buf.find(b"\r\n\r\n", pos - 2)
            if trailers_end < 0:
                return None
            return status, b"".join(parts), close, trailers_end + 4
        if len(buf) < pos + size + 2:
            return None
        if buf[pos + size : pos + size + 2] != b"\r\n":
            raise _Malformed("chunk not followed by CRLF")
        parts.append(buf[pos : pos + size])
        pos += size + 2


# Connection states.
IDLE, CONNECTING, BUSY, BACKOFF, DONE = range(5)


class _Conn:
    __slots__ = (
        "addr",
        "buf",
        "deadline",
        "fd",
        "idx",
        "out",
        "requests",
        "retried",
        "reused",
        "sent",
        "sock",
        "started",
        "state",
        "used",
        "wake_at",
    )

    def __init__(self, addr: tuple[str, int], requests: Sequence[bytes]):
        self.addr = addr
        self.requests = requests
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = IDLE
        self.idx = -1
        self.started = 0.0  # when the request was taken (errors count from here, connect included)
        self.sent = 0.0  # when its bytes were written (latency counts from here)
        self.deadline = 0.0
        self.wake_at = 0.0
        self.used = False  # this socket has answered before: a failure may be a stale keep-alive
        self.reused = False
        self.retried = False
        self.buf = b""
        self.out: memoryview | None = None


class ClosedLoop:
    """Connections that each send their next request as soon as the previous one answered.

    `slots` gives, per connection, its base URL (connections are spread over replicas by the caller)
    and the pre-encoded requests for that URL (index = what `issue` returns). Requests stop when
    `issue` returns -1, at `end`, or when `cancel` is set; requests in flight then still finish (or
    time out), as a closed-loop client would let them.
    """

    ep: select.epoll  # epoll mode only, made by run()

    def __init__(
        self,
        slots: Sequence[tuple[str, Sequence[bytes]]],
        timeout_s: float,
        issue: Issue,
        complete: Complete,
        fail: Fail,
    ):
        self.conns = [_Conn(_host_port(url), reqs) for url, reqs in slots]
        self.timeout_s = timeout_s
        self.issue = issue
        self.complete = complete
        self.fail = fail
        self._sockaddrs: dict[tuple[str, int], tuple[int, tuple]] = {}
        self.by_fd: dict[int, _Conn] = {}  # epoll mode: which connection an event is for
        # One receive buffer for all reads: recv(n) would allocate (and, this large, mmap) n bytes
        # per call; the answer is copied out at its real size.
        self._rbuf = bytearray(RECV_BYTES)
        self._rview = memoryview(self._rbuf)

    def run(self, end: float, cancel: threading.Event | None = None) -> None:
        if len(self.conns) == 1:
            self._run_blocking(self.conns[0], end, cancel)
        else:
            self._run_epoll(end, cancel)

    # -- shared ---------------------------------------------------------------------------------------

    def _sockaddr(self, addr: tuple[str, int]) -> tuple[int, tuple]:
        found = self._sockaddrs.get(addr)
        if found is None:
            info = socket.getaddrinfo(addr[0], addr[1], type=socket.SOCK_STREAM)[0]
            found = self._sockaddrs[addr] = (info[0], info[4])
        return found

    def _new_socket(self, c: _Conn) -> tuple[socket.socket, tuple]:
        family, sockaddr = self._sockaddr(c.addr)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, sockaddr

    @staticmethod
    def _may_send(end: float, cancel: threading.Event | None) -> bool:
        return time.perf_counter() < end and not (cancel is not None and cancel.is_set())

    # -- one connection: blocking socket --------------------------------------------------------------

    def _run_blocking(self, c: _Conn, end: float, cancel: threading.Event | None) -> None:
        # One connection has nothing to multiplex: a blocking recv wakes exactly when the answer is
        # there, and saves the epoll_wait round per request. Kernel-side timeouts (SO_RCVTIMEO) bound
        # every call without the poll() that Python's socket timeouts add before each recv.
        pending: tuple[int, float, float, int, bytes] | None = None
        try:
            while self._may_send(end, cancel):
                idx = self.issue()
                if idx < 0:
                    break
                started = time.perf_counter()
                c.retried = False
                while True:
                    if c.sock is None:
                        try:
                            self._connect_blocking(c)
                        except RequestFailed as exc:
                            self.fail(idx, started, time.perf_counter(), exc)
                            _backoff(cancel)
                            break
                    reused = c.used
                    assert c.sock is not None
                    sent = time.perf_counter()
                    try:
                        try:
                            c.sock.sendall(c.requests[idx])
                        except BlockingIOError:  # SO_SNDTIMEO ran out: the server stopped reading
                            raise _Timeout() from None
                        if pending is not None:
                            # Check the previous answer while the server works on this request.
                            self.complete(*pending)
                            pending = None
                        status, body, close, done = self._read_blocking(c, sent + self.timeout_s)
                    except _Timeout:
                        self._close(c)
                        self.fail(idx, sent, time.perf_counter(), _timeout_error(self.timeout_s))
                        break
                    except _Malformed as exc:
                        self._close(c)
                        self.fail(idx, sent, time.perf_counter(), RequestFailed(ERR_PROTOCOL, str(exc)))
                        break
                    except OSError as exc:
                        self._close(c)
                        if reused and not c.retried:
                            c.retried = True  # a keep-alive connection the server closed: once more, fresh
                            continue
                        self.fail(idx, started, time.perf_counter(), RequestFailed(ERR_CONNECT, _why(exc)))
                        _backoff(cancel)
                        break
                    c.used = True
                    if close:
                        self._close(c)
                    pending = (idx, sent, done, status, body)
                    break
        finally:
            if pending is not None:
                self.complete(*pending)
            self._close(c)

    def _connect_blocking(self, c: _Conn) -> None:
        try:
            sock, sockaddr = self._new_socket(c)
        except OSError as exc:
            raise RequestFailed(ERR_CONNECT, _why(exc)) from exc
        try:
            sock.settimeout(self.timeout_s)
            sock.connect(sockaddr)
            sock.settimeout(None)
            tv = _timeval(self.timeout_s)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        except TimeoutError as exc:
            sock.close()
            raise RequestFailed(ERR_CONNECT, "connect timed out") from exc
        except OSError as exc:
            sock.close()
            raise RequestFailed(ERR_CONNECT, _why(exc)) from exc
        c.sock, c.used = sock, False

    def _read_blocking(self, c: _Conn, deadline: float) -> tuple[int, bytes, bool, float]:
        """(status, body, server closes, time the last byte was read)."""
        assert c.sock is not None
        sock = c.sock
        buf = b""
        shortened = False
        rbuf, rview = self._rbuf, self._rview
        while True:
            try:
                n = sock.recv_into(rbuf)
            except BlockingIOError:  # SO_RCVTIMEO ran out
                raise _Timeout() from None
            now = time.perf_counter()
            data = rview[:n].tobytes()
            if not data:
                framed = frame_response(buf, True) if buf else None
                if framed is None:
                    raise ConnectionResetError("server closed the connection before answering")
            else:
                buf = buf + data if buf else data
                framed = frame_response(buf, False)
            if framed is not None:
                status, body, close, used = framed
                if shortened:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self.timeout_s))
                return status, body, close or used != len(buf), now
            # An answer in several pieces: the next recv may only wait for what is left of the timeout.
            left = deadline - time.perf_counter()
            if left <= 0:
                raise _Timeout()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(left))
            shortened = True

    # -- several connections: non-blocking sockets and epoll ------------------------------------------

    def _run_epoll(self, end: float, cancel: threading.Event | None) -> None:
        self.ep = ep = select.epoll()
        try:
            for c in self.conns:
                self._next(c, end, cancel)
            next_sweep = time.perf_counter() + SWEEP_S
            answers: list[tuple[_Conn, int, float, float, int, bytes]] = []
            while True:
                events = ep.poll(SWEEP_S)
                # Three passes over what is ready: read every answer (each timestamped as it is read),
                # then send each connection's next request, then check the answers. Sending between
                # reads would delay the later answers' timestamps by a send system call each.
                for fd, mask in events:
                    found = self.by_fd.get(fd)
                    if found is None:
                        continue
                    c = found
                    if c.state == BUSY:
                        if mask & select.EPOLLOUT and c.out is not None:
                            self._write_more(c, end, cancel)
                        else:
                            self._read(c, end, cancel, answers)
                    elif c.state == CONNECTING:
                        self._connected(c, end, cancel)
                    else:
                        self._close(c)  # a readable idle socket: the server hung up; nothing to read
                if answers:
                    for answer in answers:
                        self._next(answer[0], end, cancel)
                    for _c, idx, sent, done, status, body in answers:
                        self.complete(idx, sent, done, status, body)
                    answers.clear()
                now = time.perf_counter()
                if now >= next_sweep:
                    next_sweep = now + SWEEP_S
                    if not self._sweep(now, end, cancel):
                        return
        finally:
            for c in self.conns:
                self._close(c)
            ep.close()

    def _sweep(self, now: float, end: float, cancel: threading.Event | None) -> bool:
        """Timeouts and back-offs; False once every connection is done."""
        live = False
        for c in self.conns:
            if c.state in (BUSY, CONNECTING) and now >= c.deadline:
                kind = ERR_TIMEOUT if c.state == BUSY else ERR_CONNECT
                self._close(c)
                err = (
                    _timeout_error(self.timeout_s) if kind == ERR_TIMEOUT else RequestFailed(kind, "connect timed out")
                )
                self.fail(c.idx, c.sent if kind == ERR_TIMEOUT else c.started, now, err)
                self._next(c, end, cancel)
            elif c.state == BACKOFF and (now >= c.wake_at or not self._may_send(end, cancel)):
                self._next(c, end, cancel)
            if c.state != DONE:
                live = True
        return live

    def _next(self, c: _Conn, end: float, cancel: threading.Event | None) -> None:
        """Take the next request for this connection, or retire it."""
        now = time.perf_counter()
        idx = self.issue() if now < end and (cancel is None or not cancel.is_set()) else -1
        if idx < 0:
            c.state = DONE
            self._close(c)
            return
        c.idx = idx
        c.retried = False
        c.started = now
        self._send(c, end, cancel)

    def _send(self, c: _Conn, end: float, cancel: threading.Event | None) -> None:
        if c.sock is None:
            self._connect(c, end, cancel)
            return
        c.reused = c.used
        c.buf = b""
        c.state = BUSY
        data = c.requests[c.idx]
        c.sent = time.perf_counter()
        c.deadline = c.sent + self.timeout_s
        try:
            n = c.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._broken(c, exc, end, cancel)
            return
        if n < len(data):
            # A body bigger than the socket buffer: the rest goes out as the buffer drains.
            c.out = memoryview(data)[n:]
            self.ep.modify(c.fd, select.EPOLLIN | select.EPOLLOUT)

    def _write_more(self, c: _Conn, end: float, cancel: threading.Event | None) -> None:
        assert c.sock is not None and c.out is not None
        try:
            n = c.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self._broken(c, exc, end, cancel)
            return
        c.out = c.out[n:]
        if not len(c.out):
            c.out = None
            self.ep.modify(c.fd, select.EPOLLIN)

    def _connect(self, c: _Conn, end: float, cancel: threading.Event | None) -> None:
        try:
            sock, sockaddr = self._new_socket(c)
        except OSError as exc:
            self._connect_failed(c, _why(exc), end, cancel)
            return
        sock.setblocking(False)
        err = sock.connect_ex(sockaddr)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._connect_failed(c, f"[Errno {err}] {errno.errorcode.get(err, '')} connecting to {c.addr}", end, cancel)
            return
        c.sock, c.fd, c.used = sock, sock.fileno(), False
        self.by_fd[c.fd] = c
        if err == 0:
            self.ep.register(c.fd, select.EPOLLIN)
            self._send(c, end, cancel)
        else:
            self.ep.register(c.fd, select.EPOLLOUT)
            c.state = CONNECTING
            c.deadline = time.perf_counter() + self.timeout_s

    def _connected(self, c: _Conn, end: float, cancel: threading.Event | None) -> None:
        assert c.sock is not None
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._close(c)
            self._connect_failed(c, f"[Errno {err}] {errno.errorcode.get(err, '')} connecting to {c.addr}", end, cancel)
            return
        self.ep.modify(c.fd, select.EPOLLIN)
        self._send(c, end, cancel)

    def _connect_failed(self, c: _Conn, detail: str, end: float, cancel: threading.Event | None) -> None:
        self.fail(c.idx, c.started, time.perf_counter(), RequestFailed(ERR_CONNECT, detail))
        c.state = BACKOFF
        c.wake_at = time.perf_counter() + CONNECT_BACKOFF_S

    def _read(
        self,
        c: _Conn,
        end: float,
        cancel: threading.Event | None,
        answers: list[tuple[_Conn, int, float, float, int, bytes]],
    ) -> None:
        assert c.sock is not None
        try:
            n = c.sock.recv_into(self._rbuf)
        except BlockingIOError:
            return
        except OSError as exc:
            self._broken(c, exc, end, cancel)
            return
        # The response is complete the moment its last bytes are read, not after they are parsed.
        done = time.perf_counter()
        data = self._rview[:n].tobytes()
        try:
            if data:
                c.buf = c.buf + data if c.buf else data
                framed = frame_response(c.buf, False)
                if framed is None:
                    return
            else:
                framed = frame_response(c.buf, True) if c.buf else None
                if framed is None:
                    self._broken(c, ConnectionResetError("server closed the connection before answering"), end, cancel)
                    return
        except _Malformed as exc:
            self._close(c)
            self.fail(c.idx, c.sent, time.perf_counter(), RequestFailed(ERR_PROTOCOL, str(exc)))
            self._next(c, end, cancel)
            return
        status, body, close, used = framed
        c.used = True
        if close or used != len(c.buf):
            self._close(c)
        c.buf = b""
        c.state = IDLE
        answers.append((c, c.idx, c.sent, done, status, body))

    def _broken(self, c: _Conn, exc: OSError, end: float, cancel: threading.Event | None) -> None:
        self._close(c)
        if c.reused and not c.retried:
            c.retried = True  # the server closed a keep-alive connection: retry once on a fresh one
            self._send(c, end, cancel)
            return
        self._connect_failed(c, _why(exc), end, cancel)

    def _close(self, c: _Conn) -> None:
        if c.sock is None:
            return
        if c.fd >= 0:
            self.by_fd.pop(c.fd, None)
            with contextlib.suppress(OSError, ValueError):
                self.ep.unregister(c.fd)
        c.sock.close()
        c.sock, c.fd, c.out = None, -1, None
        if c.state in (BUSY, CONNECTING):
            c.state = IDLE


class _Timeout(Exception):
    pass


def _backoff(cancel: threading.Event | None) -> None:
    if cancel is not None:
        cancel.wait(CONNECT_BACKOFF_S)
    else:
        time.sleep(CONNECT_BACKOFF_S)


def _timeout_error(timeout_s: float) -> RequestFailed:
    return RequestFailed(ERR_TIMEOUT, f"no answer within {timeout_s}s")


def _timeval(seconds: float) -> bytes:
    seconds = max(seconds, 0.001)
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


__all__ = ["ClosedLoop", "encode_posts", "frame_response", "request_head"]
