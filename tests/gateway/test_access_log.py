"""The access log: batched lines, written on time, on size and on shutdown, never failing a request."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import sys
import time

import httpx
import pytest

from gateway.access_log import AccessLog
from tests.gateway.conftest import Procs, gateway, unused_target, unused_url


def _lines(stream: io.BytesIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_lines_are_batched_and_written_within_the_interval() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream, flush_interval_s=0.05)
    for i in range(3):
        log.write({"id": f"r{i}", "status": 200})
    assert stream.getvalue() == b""  # batched, not one write per line
    await asyncio.sleep(0.2)
    assert [line["id"] for line in _lines(stream)] == ["r0", "r1", "r2"]
    log.write({"id": "r3"})  # a new batch starts its own timer
    await asyncio.sleep(0.2)
    assert [line["id"] for line in _lines(stream)] == ["r0", "r1", "r2", "r3"]


async def test_a_full_buffer_is_written_at_once() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream, flush_interval_s=60, max_buffered_bytes=100)
    log.write({"id": "a" * 40})
    assert stream.getvalue() == b""
    log.write({"id": "b" * 60})  # past 100 bytes: no waiting a minute
    assert [line["id"] for line in _lines(stream)] == ["a" * 40, "b" * 60]
    log.close()


async def test_close_writes_what_is_buffered() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream, flush_interval_s=60)
    log.write({"id": "last"})
    log.close()
    assert _lines(stream) == [{"id": "last"}]


def test_lines_written_under_a_new_event_loop_still_get_their_timer() -> None:
    # A timer armed on a loop that ended never fires; the next loop must arm its own.
    stream = io.BytesIO()
    log = AccessLog(stream, flush_interval_s=0.02)

    async def write_then_wait(entry_id: str, wait_s: float) -> None:
        log.write({"id": entry_id})
        await asyncio.sleep(wait_s)

    asyncio.run(write_then_wait("first", 0))  # the loop ends before its timer fires
    asyncio.run(write_then_wait("second", 0.2))
    assert [line["id"] for line in _lines(stream)] == ["first", "second"]


async def test_lines_after_close_are_written_at_once() -> None:
    # Requests that finish during shutdown log after close(): no timer would be left to flush them.
    stream = io.BytesIO()
    log = AccessLog(stream, flush_interval_s=60)
    log.close()
    log.write({"id": "straggler"})
    assert _lines(stream) == [{"id": "straggler"}]


@pytest.mark.parametrize("stdout", [None, io.StringIO()], ids=["no-stdout", "text-stdout"])
async def test_an_unusable_stdout_drops_lines_without_failing_requests(
    stdout: io.StringIO | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdout", stdout)  # as a process started with fd 1 closed, or an embedding app
    log = AccessLog(flush_interval_s=60, max_buffered_bytes=1)
    log.write({"id": "x"})  # flushes at once (over 1 byte): must not raise into the request


async def test_a_broken_stream_drops_lines_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.BytesIO()
    stream.close()  # as a closed stdout: writing raises
    log = AccessLog(stream, flush_interval_s=60, max_buffered_bytes=1)
    with caplog.at_level(logging.WARNING, logger="gateway.access_log"):
        for _ in range(3):
            log.write({"id": "x"})  # must not raise into the request
    warnings = [r for r in caplog.records if r.name == "gateway.access_log"]
    assert len(warnings) == 1 and "dropped" in warnings[0].getMessage()


@pytest.mark.integration
def test_the_gateway_process_logs_to_stdout_promptly_and_on_shutdown(procs: Procs) -> None:
    proc, url = gateway(procs, torch_urls=unused_url(), tf_grpc_targets=unused_target(), access_log="true")
    with httpx.Client(base_url=url, timeout=5) as client:
        for i in range(3):
            client.post("/v1/models/cnn:predict?backend=torch", content=b"{}", headers={"X-Request-ID": f"early-{i}"})
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and proc.log_path.read_text().count('"early-') < 3:
            time.sleep(0.05)
        assert proc.log_path.read_text().count('"early-') == 3, proc.log_tail()  # without waiting for shutdown
        client.get("/healthz", headers={"X-Request-ID": "late-1"})
    # A graceful stop: uvicorn finishes, runs the shutdown, then ends by the signal it was sent.
    assert proc.stop(grace=10) in (0, -signal.SIGTERM)
    records = [json.loads(line) for line in proc.log_path.read_text().splitlines() if line.startswith('{"ts"')]
    by_id = {r["id"]: r for r in records}
    assert by_id["early-0"]["status"] == 400 and by_id["early-0"]["backend"] == "torch"
    assert by_id["late-1"]["path"] == "/healthz"  # still buffered at SIGTERM: written on the way out
