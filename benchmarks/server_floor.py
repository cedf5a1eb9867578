"""What the HTTP server itself costs per request: uvicorn (as the gateway runs it) against a bare protocol.

Each front answers the same constant JSON (the size of a predict answer) to the same POST, so what
differs is only the server machinery:

- `bare`: an asyncio Protocol on uvloop with httptools' parser and one write per answer, nothing else;
- `uvicorn`: uvicorn with the gateway's HTTP protocol (serving_core.http_protocol: httptools, time limits,
  head and body in one write) and a minimal ASGI app, as `python -m gateway` configures it;
- `uvicorn+layer`: the same with the gateway's request-id / key / metrics / access-log layer in front
  (gateway.middleware, with metrics recorded for each request).

The difference between `bare` and `uvicorn+layer` is the most a server of the gateway's own for the
predict path could save: the gateway's remaining overhead beyond it is its own predict work.

    python benchmarks/server_floor.py [--rounds 5] [--duration 3]

needs wrk on PATH; prints per front the median p50 (wrk, one connection) and the median CPU time per
request of the server process (/proc/PID/stat), rounds interleaved so machine noise hits all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BODY = b'{"predictions":[{"probabilities":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0],"classes":9}]}' * 3
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
    (b"x-backend", b"torch"),
    (b"x-model-version", b"1"),
    (b"x-upstream-latency-ms", b"1.234"),
]
FRONTS = ("bare", "uvicorn", "uvicorn+layer")


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    info = scope.get("gateway.log")
    if info is not None:
        info["endpoint"], info["backend"] = "predict", "torch"  # so the layer records metrics as for predict
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def serve(front: str, port: int) -> None:
    """Run one front in this process (the benchmark starts one process per front)."""
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    if front == "bare":
        import httptools
        import uvloop

        answer = b"HTTP/1.1 200 OK\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in HEADERS) + b"\r\n" + BODY

        class Bare(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: asyncio.Transport = transport  # type: ignore[assignment]
                self.parser = httptools.HttpRequestParser(self)

            def data_received(self, data: bytes) -> None:
                self.parser.feed_data(data)

            def on_message_complete(self) -> None:
                self.transport.write(answer)

        async def main() -> None:
            server = await asyncio.get_running_loop().create_server(Bare, "127.0.0.1", port)
            await server.serve_forever()

        uvloop.run(main())
        return
    import uvicorn

    from serving_core.http_protocol import timed_protocol

    app: Any = _app
    if front == "uvicorn+layer":
        from gateway.metrics import Metrics
        from gateway.middleware import GatewayMiddleware

        app = GatewayMiddleware(_app, api_keys=[], max_body_bytes=1 << 20, metrics=Metrics(), access_log=None)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=timed_protocol(),
        access_log=False,
        log_level="warning",
        proxy_headers=False,
        lifespan="off",
    )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(url: str, script: Path, duration: float) -> tuple[float, int]:
    out = subprocess.run(
        ["wrk", "-t1", "-c1", f"-d{duration:g}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    p50 = re.search(r"^\s*50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    count = re.search(r"^\s*(\d+) requests in", out, re.M)
    assert p50 and count, out
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p50.group(2)]
    return float(p50.group(1)) * scale, int(count.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of wrk per front per round")
    parser.add_argument("--serve", nargs=2, metavar=("FRONT", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (Debian: apt-get install wrk)")
    from devstack.process import free_port

    body = b'{"instances": [' + str([[[0.5]] * 28] * 28).encode() + b"]}"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "body.json").write_bytes(body)
        script = Path(tmp) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f'local f = assert(io.open("{tmp}/body.json", "rb"))\nwrk.body = f:read("*a")\nf:close()\n'
        )
        procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        try:
            for front in FRONTS:
                port = free_port()
                cmd = [sys.executable, __file__, "--serve", front, str(port)]
                procs[front] = (subprocess.Popen(cmd, cwd=ROOT), port)
            time.sleep(3.0)
            p50s: dict[str, list[float]] = {f: [] for f in FRONTS}
            cpus: dict[str, list[float]] = {f: [] for f in FRONTS}
            for _ in range(args.rounds):
                for front, (proc, port) in procs.items():
                    before = _cpu_seconds(proc.pid)
                    p50, count = _wrk(f"http://127.0.0.1:{port}/v1/models/cnn:predict", script, args.duration)
                    cpus[front].append((_cpu_seconds(proc.pid) - before) * 1000.0 / count)
                    p50s[front].append(p50)
        finally:
            for proc, _ in procs.values():
                proc.terminate()
                proc.wait(10)
    print(f"{'front':<15} {'p50 (ms)':>9} {'CPU/request (ms)':>17}   medians of {args.rounds} rounds, wrk -c1")
    for front in FRONTS:
        print(f"{front:<15} {statistics.median(p50s[front]):>9.3f} {statistics.median(cpus[front]):>17.4f}")
    base_p50, base_cpu = statistics.median(p50s["bare"]), statistics.median(cpus["bare"])
    for front in FRONTS[1:]:
        print(
            f"{front} - bare: p50 {statistics.median(p50s[front]) - base_p50:+.3f} ms, "
            f"CPU {statistics.median(cpus[front]) - base_cpu:+.4f} ms per request"
        )


if __name__ == "__main__":
    main()
