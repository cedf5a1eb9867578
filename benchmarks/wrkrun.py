"""Run wrk (https://github.com/wg/wrk) for one closed-loop POST measurement and read its figures.

wrk is the independent yardstick of the benchmarks: a C client that costs ~10 us of CPU per request,
so on a small machine it disturbs the servers under test less than any Python client can. Its
latency histogram is read through a Lua `done` hook (exact microseconds, not the rounded text
summary), and every kind of error it counts is returned, so a run that failed is never quoted.

wrk comes from the OS (`apt-get install -y wrk`); `available()` says whether it is on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Percentiles in microseconds, then the counters: one parseable line after wrk's own summary.
_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("WRKRUN_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKRUN %d %d %d %d %d %d %d %.1f %.1f %.1f\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: dict[str, int]  # connect, read, write, status (non-2xx/3xx answers), timeout
    p50_ms: float
    p99_ms: float
    mean_ms: float

    @property
    def throughput_rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def available() -> bool:
    return shutil.which("wrk") is not None


def run(
    url: str, body: bytes, *, concurrency: int, duration_s: float, threads: int = 1, timeout_s: float = 10.0
) -> WrkResult:
    """One wrk run: `concurrency` kept-alive connections POSTing `body` to `url` for `duration_s`."""
    if not available():
        raise FileNotFoundError("wrk is not on PATH (install it with: apt-get install -y wrk)")
    with tempfile.TemporaryDirectory(prefix="wrkrun-") as tmp:
        body_path = Path(tmp) / "body.json"
        body_path.write_bytes(body)
        script = Path(tmp) / "post.lua"
        script.write_text(_SCRIPT)
        argv = [
            "wrk",
            f"-t{min(threads, concurrency)}",
            f"-c{concurrency}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "-s",
            str(script),
            url,
        ]
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=duration_s + timeout_s + 30,
            env={**os.environ, "WRKRUN_BODY": str(body_path)},
        )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRKRUN ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[:500]}")
    f = line.split()[1:]
    requests, duration_us = int(f[0]), int(f[1])
    errors = dict(zip(("connect", "read", "write", "status", "timeout"), map(int, f[2:7]), strict=True))
    return WrkResult(
        requests=requests,
        duration_s=duration_us / 1e6,
        errors=errors,
        p50_ms=float(f[7]) / 1000.0,
        p99_ms=float(f[8]) / 1000.0,
        mean_ms=float(f[9]) / 1000.0,
    )
