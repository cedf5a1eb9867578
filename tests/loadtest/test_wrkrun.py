"""benchmarks/wrkrun.py: the wrk runner the benchmarks use as their independent client.

Real wrk against the real fake server on loopback; skipped (with the reason) where wrk is not
installed, since it comes from the OS, not from the project's environment.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import wrkrun

from devstack.process import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not wrkrun.available(), reason="wrk is not installed (apt-get install -y wrk)"),
]

BODY = b'{"instances": [[[[0.3]]]]}'


def test_latency_and_counts_follow_the_server(fake_server: Callable[..., str]) -> None:
    url = fake_server("--delay-ms", "5") + "/v1/models/cnn:predict"
    r = wrkrun.run(url, BODY, concurrency=2, duration_s=1)
    assert r.failed == 0, r.errors
    # Two connections against a 5 ms server: ~400 answers a second, each a little over 5 ms.
    assert 5.0 <= r.p50_ms < 15.0
    assert r.p50_ms <= r.p99_ms
    assert 100 < r.throughput_rps <= 2 / 0.005
    assert 0.9 < r.duration_s < 2.0


def test_error_answers_are_counted_not_hidden(fake_server: Callable[..., str]) -> None:
    url = fake_server("--status", "503") + "/v1/models/cnn:predict"
    r = wrkrun.run(url, BODY, concurrency=1, duration_s=1)
    assert r.requests > 0
    assert r.errors["status"] == r.requests
    assert r.failed == r.requests


def test_nothing_listening_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="wrk failed"):
        wrkrun.run(f"http://127.0.0.1:{free_port()}/v1/models/cnn:predict", BODY, concurrency=1, duration_s=1)
