"""Our load generator next to wrk against one trivial local endpoint, and its highest rate per worker.

    .venv/bin/python benchmarks/loadgen_vs_wrk.py [--duration 8] [--rounds 3]

1. A minimal asyncio HTTP server (a separate process) answers every POST at once with a fixed
   TF-Serving-style body, so the client side is what is measured.
2. Closed loop at the same concurrency, wrk (1 thread) and our engine (1 worker process; REST closed
   loop on raw sockets, gateway/loadtest/rawhttp.py) taking turns on the same server, `--rounds`
   times each (wrk, ours, ours, wrk, ...), and once httpx.AsyncClient (the alternative the engine does
   not use). Four settings: 1 and 8 connections against an instant answer (where the generator's own
   per-request cost is all there is to see), and 1 and 8 connections against a 2 ms answer (a server
   that does some work, the case the tool is for). Printed: each measurement, then per setting the
   median p50 of each client and ours against wrk's.
3. Open loop with one worker at rising rates: the highest rate our own lag detector still calls
   valid is the generator's maximum rate per worker process.

wrk comes from Debian (`apt-get install -y wrk`); when it is missing this script says so and
prints the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import wrkrun  # noqa: E402  (benchmarks/ itself is on sys.path when this file runs)

RESPONSE = b'{"predictions": [{"probabilities": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], "classes": 3}]}'


# -- the trivial endpoint --------------------------------------------------------------------------


DELAY_S = 0.0


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head_out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(RESPONSE)
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if m:
                await reader.readexactly(int(m.group(1)))
            if DELAY_S:
                await asyncio.sleep(DELAY_S)
            writer.write(head_out + RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def serve(port: int, delay_ms: float) -> None:
    global DELAY_S
    DELAY_S = delay_ms / 1000.0

    async def main() -> None:
        server = await asyncio.start_server(_handle, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


# -- clients -----------------------------------------------------------------------------------------


def run_wrk(url: str, body: bytes, concurrency: int, duration: float) -> dict[str, float] | None:
    if not wrkrun.available():
        return None
    r = wrkrun.run(url, body, concurrency=concurrency, duration_s=duration)
    return {"throughput_rps": r.throughput_rps, "p50": r.p50_ms, "p99": r.p99_ms, "failed": r.failed}


def run_ours(url: str, bodies, concurrency: int, duration: float) -> dict[str, float]:
    from gateway.loadtest.engine import StepSpec, WorkerPool
    from gateway.loadtest.targets import Target

    target = Target("bench", "rest", (url,), path="/v1/models/cnn:predict")
    with WorkerPool(1, bodies) as pool:
        res = pool.run(StepSpec(target, "closed", concurrency=concurrency, duration_s=duration))
    return {
        "throughput_rps": res["throughput_rps"],
        "p50": res["latency_ms"]["p50"],
        "p99": res["latency_ms"]["p99"],
        "failed": res["failed"],
    }


def run_httpx(url: str, body: bytes, concurrency: int, duration: float) -> dict[str, float]:
    import httpx

    from gateway.loadtest import histograms as H

    hist = H.new_histogram()

    async def run() -> int:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits) as client:
            end = time.perf_counter() + duration
            done = 0

            async def one() -> None:
                nonlocal done
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    r = await client.post(
                        "/v1/models/cnn:predict", content=body, headers={"Content-Type": "application/json"}
                    )
                    r.json()
                    H.record_s(hist, time.perf_counter() - t0)
                    done += 1

            await asyncio.gather(*(one() for _ in range(concurrency)))
            return done

    t0 = time.perf_counter()
    n = asyncio.run(run())
    s = H.summary_ms(hist)
    return {"throughput_rps": n / (time.perf_counter() - t0), "p50": s["p50"], "p99": s["p99"]}


def max_rate_per_worker(url: str, bodies, duration: float) -> list[tuple[float, bool, float, float]]:
    from gateway.loadtest.engine import StepSpec, WorkerPool
    from gateway.loadtest.targets import Target

    target = Target("bench", "rest", (url,), path="/v1/models/cnn:predict")
    rows = []
    with WorkerPool(1, bodies) as pool:
        for rate in (2000, 4000, 8000, 16000, 24000, 32000, 48000, 64000):
            res = pool.run(StepSpec(target, "open", rate=rate, connections=64, duration_s=duration, timeout_s=5))
            rows.append((rate, res["valid"], res["throughput_rps"], res["lag_ms"]["p99"]))
            if not res["valid"]:
                break
    return rows


def start_server(port: int, delay_ms: float) -> subprocess.Popen:
    import socket

    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--delay-ms", str(delay_ms)], cwd=ROOT)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of each client per setting")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--delay-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.delay_ms)
        return 0

    from devstack.process import free_port
    from gateway.loadtest.data import build_bodies, load_images
    from gateway.loadtest.resources import machine

    images = load_images()
    bodies = build_bodies(images, 1, 42, 64)
    body = bodies.rest[0]
    print(f"machine: {os.cpu_count()} logical cores, {machine()['cpu_model']}; {platform.platform()}")
    print(
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average before: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"endpoint: trivial asyncio server (1 process, uvloop); request body {len(body)} bytes "
        f"({images.source.split('/')[-1]}); closed loop, {args.duration:g} s per measurement"
    )
    if not wrkrun.available():
        print("wrk: NOT INSTALLED (apt-get update && apt-get install -y wrk); only our figures follow")
    print(f"\n{'server delay':>12s} {'conns':>5s}  {'client':34s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}")
    comparisons = []
    for delay_ms, conns in ((0.0, 1), (0.0, 8), (2.0, 1), (2.0, 8)):
        port = free_port()
        server = start_server(port, delay_ms)
        url = f"http://127.0.0.1:{port}"
        p50s: dict[str, list[float]] = {"wrk": [], "ours": []}

        def show(name: str, r: dict[str, float], delay_ms: float = delay_ms, conns: int = conns) -> None:
            print(
                f"{delay_ms:10.0f}ms {conns:5d}  {name:34s} {r['throughput_rps']:9.0f} {r['p50']:8.3f} "
                f"{r['p99']:8.3f}" + (f"  ({r['failed']} failed)" if r.get("failed") else ""),
                flush=True,
            )

        try:
            for i in range(args.rounds):
                # Alternate who goes first, so a slow drift of the machine favours neither.
                order = ("wrk", "ours") if i % 2 == 0 else ("ours", "wrk")
                for who in order:
                    if who == "wrk":
                        wrk = run_wrk(url + "/v1/models/cnn:predict", body, conns, args.duration)
                        if wrk is not None:
                            p50s["wrk"].append(wrk["p50"])
                            show("wrk 1 thread", wrk)
                    else:
                        ours = run_ours(url, bodies, conns, args.duration)
                        p50s["ours"].append(ours["p50"])
                        show("gateway.loadtest 1 worker", ours)
            if (delay_ms, conns) == (0.0, 8):
                show("httpx.AsyncClient (for contrast)", run_httpx(url, body, conns, args.duration))
            if p50s["wrk"]:
                comparisons.append((delay_ms, conns, statistics.median(p50s["ours"]), statistics.median(p50s["wrk"])))
        finally:
            server.terminate()
            server.wait(5)
    print(f"\nmedians over {args.rounds} measurements each:")
    for delay_ms, conns, ours_p50, wrk_p50 in comparisons:
        rel = ours_p50 / wrk_p50 - 1
        verdict = "within" if abs(rel) <= 0.15 else "OUTSIDE"
        print(
            f"server delay {delay_ms:g} ms, {conns} conns: p50 ours {ours_p50:.3f} ms, wrk {wrk_p50:.3f} ms: "
            f"{rel:+.1%} ({(ours_p50 - wrk_p50) * 1000:+.0f} us), {verdict} 15%"
        )

    port = free_port()
    server = start_server(port, 0.0)
    try:
        print("\nopen loop, 1 worker process, Poisson arrivals: highest rate the lag detector accepts")
        print(f"{'offered/s':>10s} {'achieved/s':>11s} {'lag p99 ms':>11s}  valid")
        rows2 = max_rate_per_worker(f"http://127.0.0.1:{port}", bodies, min(args.duration, 5.0))
        for rate, valid, got, lag in rows2:
            print(f"{rate:10.0f} {got:11.0f} {lag:11.2f}  {'yes' if valid else 'NO'}")
        best = max((r for r, v, _, _ in rows2 if v), default=None)
        print(
            f"\nmaximum valid rate per worker process: {best if best else 'below 1000'}/s"
            + (" (or higher: every rate tried was valid)" if rows2 and rows2[-1][1] else "")
        )
    finally:
        server.terminate()
        server.wait(5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
