"""Run h2load (nghttp2's HTTP/2 load tool) for one closed-loop gRPC unary measurement.

wrk speaks HTTP/1.1 only, so it cannot call a gRPC API; h2load can: a unary gRPC call is an HTTP/2 POST
of a length-prefixed message with `content-type: application/grpc` and `te: trailers`. Like wrk it
is a C client (~10 us of CPU per request), so it gives the gateway's gRPC upstream a direct baseline
measured the way its REST paths are, rather than with a Python client whose own cost hides the
gateway's.

h2load does not read gRPC trailers: a call that failed with a gRPC status still counts as an HTTP 200
there. So `run` checks what it can: every request answered 200 (from the per-request log, which also
gives exact percentiles), and, when the caller passes `succeeded` (a function that reads the server's
count of successful calls, e.g. TF Serving's `:tensorflow:serving:request_count{status="OK"}`), that it
grew by at least as many calls as h2load saw answered. Counting successes rather than failures also
catches calls refused before the server's handler ran, which no failure counter sees.

h2load comes from the OS (`apt-get install -y nghttp2-client`); `available()` says whether it is on PATH.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from wrkrun import WrkResult


def available() -> bool:
    return shutil.which("h2load") is not None


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC message: flag byte, 4-byte big-endian length, the serialized protobuf."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def run(
    url: str,
    message: bytes,
    *,
    concurrency: int,
    duration_s: float,
    succeeded: Callable[[], float] | None = None,
    timeout_s: float = 10.0,
) -> WrkResult:
    """`concurrency` HTTP/2 connections, one call in flight on each, posting the gRPC `message` to `url`
    (http://host:port/package.Service/Method) for `duration_s`. Figures as wrkrun's: errors["status"] counts
    answers other than HTTP 200, and answers the server did not count as successful."""
    if not available():
        raise FileNotFoundError("h2load is not on PATH (install it with: apt-get install -y nghttp2-client)")
    with tempfile.TemporaryDirectory(prefix="h2loadrun-") as tmp:
        body = Path(tmp) / "message.bin"
        body.write_bytes(grpc_frame(message))
        log = Path(tmp) / "requests.log"
        argv = [
            "h2load",
            f"-c{concurrency}",
            "-m1",  # one stream at a time per connection: closed loop, as wrk
            "-t1",
            f"-D{max(1, round(duration_s))}",
            f"-T{max(1, round(duration_s + timeout_s))}",
            "-d",
            str(body),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            f"--log-file={log}",
            url,
        ]
        before = succeeded() if succeeded is not None else 0.0
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
        ok_calls = (succeeded() - before) if succeeded is not None else None
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    if proc.returncode != 0 or not rows:
        raise RuntimeError(f"h2load failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[:500]}")
    statuses = [int(r[1]) for r in rows]
    latency_ms = np.asarray([int(r[2]) for r in rows], dtype=np.float64) / 1000.0
    starts = [int(r[0]) for r in rows]
    span_s = (max(s + int(r[2]) for s, r in zip(starts, rows, strict=True)) - min(starts)) / 1e6
    # h2load's own summary: requests that errored (a reset stream, a lost connection) or timed out. Those
    # in flight when the duration ends are neither (started, never done: not counted, as with wrk).
    summary = next((ln for ln in proc.stdout.splitlines() if ln.strip().startswith("requests:")), "")
    fields = {k.strip().split()[-1]: int(k.split()[0]) for k in summary.split(":", 1)[-1].split(",") if k.strip()}
    errors = {
        "connect": 0,
        "read": fields.get("errored", 0),
        "write": 0,
        # A call in flight when the run ended may be counted by the server and not logged: at least, not equal.
        "status": sum(1 for s in statuses if s != 200)
        + (max(0, len(rows) - round(ok_calls)) if ok_calls is not None else 0),
        "timeout": fields.get("timeout", 0),
    }
    return WrkResult(
        requests=len(rows),
        duration_s=span_s,
        errors=errors,
        p50_ms=float(np.percentile(latency_ms, 50)),
        p99_ms=float(np.percentile(latency_ms, 99)),
        mean_ms=float(latency_ms.mean()),
    )
