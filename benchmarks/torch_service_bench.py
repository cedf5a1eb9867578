"""torch_service benchmark: HTTP overhead over the bare TorchScript call, and batching on vs off at concurrency 64.

Measured side by side in one run on one machine, batch-1 requests (`/v1/models/cnn:predict`, row format):

1. in-process baseline: p50 of calling the TorchScript module directly (numpy in, numpy out);
2. two real servers (`python -m torch_service`, batching on with the project's batching file, and
   batching off) on free loopback ports; in each of `--repeats` rounds, each server is measured at
   concurrency 1 (latency) and at concurrency 64 (throughput, p99), alternating servers so both see
   the same machine noise;
3. overhead = p50 at concurrency 1 minus the in-process p50. Figures are medians over the rounds.

The client is a minimal keep-alive HTTP/1.1 client on asyncio (uvloop when installed), so the
figures measure the server rather than a heavy client library. Every response is checked (status
200 and the golden class). Both client and servers share this machine's cores.

    python benchmarks/torch_service_bench.py [--device auto|cpu|cuda] [--repeats 3] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.machine import cpu_model  # noqa: E402
from devstack.process import ManagedProcess, free_port, pythonpath, stop_started_on_sigterm  # noqa: E402

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


# ------------------------------------------------------------------------------------ the client
class Connection:
    """One keep-alive HTTP/1.1 connection that sends a pre-built request and reads the whole answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        m = _CONTENT_LENGTH.search(head)
        if m is None:
            raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
        body = await self.reader.readexactly(int(m[1]))
        return int(head[9:12]), body

    def close(self) -> None:
        self.writer.close()


def build_request(port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def check(status: int, body: bytes, expected_class: int) -> None:
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
    doc = orjson.loads(body)
    if "predictions" in doc:
        got = doc["predictions"][0]["classes"]
    else:  # OIP
        got = next(o["data"][0] for o in doc["outputs"] if o["name"] == "classes")
    if got != expected_class:
        raise RuntimeError(f"wrong class {got}, expected {expected_class}")


async def run_load(port: int, request: bytes, expected: int, concurrency: int, total: int) -> tuple[np.ndarray, float]:
    """`total` requests over `concurrency` connections; returns per-request latencies (s) and wall time."""
    conns = [await Connection.open("127.0.0.1", port) for _ in range(concurrency)]
    latencies: list[float] = []
    remaining = total

    async def worker(conn: Connection) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            status, body = await conn.send(request)
            latencies.append(time.perf_counter() - t0)
            check(status, body, expected)  # outside the timed span, but every response is checked

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    wall = time.perf_counter() - t0
    for c in conns:
        c.close()
    return np.asarray(latencies), wall


# ------------------------------------------------------------------------------- in-process side
def in_process_p50(model_path: Path, image: np.ndarray, device: str, n: int) -> float:
    import torch

    # One thread: for a single image intra-op parallelism only adds synchronisation, so this is the
    # fastest in-process figure on CPU (the overhead it yields is, if anything, overstated).
    torch.set_num_threads(1)
    dev = torch.device(device)
    module = torch.jit.load(str(model_path), map_location=dev).eval()
    times = []
    with torch.inference_mode():
        for i in range(n + 200):
            t0 = time.perf_counter()
            out = module(torch.from_numpy(image).to(dev))
            _ = {k: out[k].cpu().numpy() for k in ("probabilities", "classes")}
            if i >= 200:  # the first calls are warm-up (TorchScript profiling runs)
                times.append(time.perf_counter() - t0)
    return float(np.percentile(times, 50))


# ---------------------------------------------------------------------------------------- servers
def find_model(repo: Path | None, tmp: Path) -> Path:
    """A repository with a TorchScript version; trains a small one into `tmp` if none is given/found."""
    candidates = [repo] if repo else [Path(os.environ.get("MODEL_REPOSITORY", ROOT / "model_repository"))]
    for c in candidates:
        base = c / "torchscript" / "cnn"
        if base.is_dir() and any(p.name.isdigit() and (p / "model.pt").is_file() for p in base.iterdir()):
            return c
    if repo:
        raise SystemExit(f"{repo} holds no torchscript/cnn/<version>/model.pt")
    print("no model repository found: training the small smoke model into a temporary one (~1 min)", flush=True)
    from trainer.config import smoke_config
    from trainer.pipeline import train_and_publish

    train_and_publish(smoke_config(), tmp / "repo", version=1)
    return tmp / "repo"


def start_server(name: str, repo: Path, log_dir: Path, env: dict[str, str]) -> tuple[ManagedProcess, int]:
    port = free_port()
    proc = ManagedProcess.python_module(
        name,
        "torch_service",
        ready_url=f"http://127.0.0.1:{port}/v2/health/ready",
        log_dir=log_dir,
        env={"MODEL_REPOSITORY": str(repo), "TORCH_SERVICE_PORT": str(port), "PYTHONPATH": pythonpath(ROOT), **env},
    )
    proc.start()
    try:
        proc.wait_ready(180)
    except BaseException:
        proc.stop(grace=5)  # not ready in time: don't leave it running behind the error
        raise
    return proc, port


@dataclass
class Round:
    server: str
    c1_p50_ms: float
    c1_p99_ms: float
    c1_server_cpu_ms: float  # server process CPU time per request: robust to a busy machine
    c64_rps: float
    c64_p50_ms: float
    c64_p99_ms: float
    c64_server_cpu_ms: float


def cpu_seconds(proc: ManagedProcess) -> float:
    import psutil

    assert proc.proc is not None
    t = psutil.Process(proc.proc.pid).cpu_times()
    return t.user + t.system


async def measure(
    name: str, proc: ManagedProcess, port: int, request: bytes, expected: int, args: argparse.Namespace
) -> Round:
    c0 = cpu_seconds(proc)
    lat1, _ = await run_load(port, request, expected, 1, args.requests)
    c1 = cpu_seconds(proc)
    lat64, wall = await run_load(port, request, expected, 64, args.throughput_requests)
    c2 = cpu_seconds(proc)
    ms = 1000.0
    return Round(
        name,
        float(np.percentile(lat1, 50) * ms),
        float(np.percentile(lat1, 99) * ms),
        (c1 - c0) / len(lat1) * ms,
        len(lat64) / wall,
        float(np.percentile(lat64, 50) * ms),
        float(np.percentile(lat64, 99) * ms),
        (c2 - c1) / len(lat64) * ms,
    )


async def main_async(args: argparse.Namespace) -> dict:
    import torch

    load_start = os.getloadavg()[0]
    device = args.device
    if device == "auto":
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="torch_service_bench-") as tmp_s:
        tmp = Path(tmp_s)
        repo = find_model(args.model_repository, tmp)
        base = repo / "torchscript" / "cnn"
        version = max(int(p.name) for p in base.iterdir() if p.name.isdigit())
        golden = np.load(base / str(version) / "golden.npz")
        image = np.ascontiguousarray(golden["images"][:1], dtype=np.float32)
        expected = int(golden["classes"][0])
        print(f"device: {device}; model: {base / str(version)}", flush=True)

        baseline_ms = in_process_p50(base / str(version) / "model.pt", image, device, args.requests) * 1000
        print(f"in-process TorchScript p50: {baseline_ms:.3f} ms", flush=True)

        common = {"TORCH_SERVICE_DEVICE": device, "TORCH_SERVICE_LOG_LEVEL": "warning"}
        if args.batching_file:
            common["TORCH_SERVICE_BATCHING_PARAMETERS_FILE"] = str(args.batching_file)
        servers: dict[str, tuple[ManagedProcess, int]] = {}
        try:
            servers["batching on"] = start_server("bench-batching-on", repo, tmp / "logs", common)
            servers["batching off"] = start_server(
                "bench-batching-off", repo, tmp / "logs", {**common, "TORCH_SERVICE_ENABLE_BATCHING": "false"}
            )
            body = orjson.dumps({"instances": image.tolist()})
            v2_body = orjson.dumps(
                {"inputs": [{"name": "images", "shape": [1, 28, 28, 1], "datatype": "FP32", "data": image.ravel()}]},
                option=orjson.OPT_SERIALIZE_NUMPY,
            )
            requests = {n: build_request(p, "/v1/models/cnn:predict", body) for n, (_, p) in servers.items()}
            for n, (_, port) in servers.items():  # warm-up: connections, code paths, batch shapes
                await run_load(port, requests[n], expected, 1, 300)
                await run_load(port, requests[n], expected, 64, 64 * 10)
            rounds: list[Round] = []
            for r in range(args.repeats):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for n in order:
                    rd = await measure(n, servers[n][0], servers[n][1], requests[n], expected, args)
                    rounds.append(rd)
                    print(
                        f"round {r + 1} {n:>12}: c1 p50 {rd.c1_p50_ms:.3f} ms p99 {rd.c1_p99_ms:.3f} ms "
                        f"cpu/req {rd.c1_server_cpu_ms:.3f} ms | c64 {rd.c64_rps:.0f} req/s p50 {rd.c64_p50_ms:.2f} ms "
                        f"p99 {rd.c64_p99_ms:.2f} ms cpu/req {rd.c64_server_cpu_ms:.3f} ms",
                        flush=True,
                    )
            # OIP v2 infer at concurrency 1 on the batching-on server, for comparison with v1.
            port_on = servers["batching on"][1]
            v2_req = build_request(port_on, "/v2/models/cnn/infer", v2_body)
            await run_load(port_on, v2_req, expected, 1, 200)
            v2_lat, _ = await run_load(port_on, v2_req, expected, 1, args.requests)
        finally:
            for proc, _ in servers.values():
                proc.stop(grace=10)

    def med(server: str, field: str) -> float:
        return statistics.median(getattr(r, field) for r in rounds if r.server == server)

    fields = [f for f in Round.__dataclass_fields__ if f != "server"]
    summary = {server: {f: med(server, f) for f in fields} for server in servers}
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}",
        "load_average_start_end": [load_start, os.getloadavg()[0]],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "requests_c1": args.requests,
        "requests_c64": args.throughput_requests,
        "repeats": args.repeats,
        "in_process_p50_ms": baseline_ms,
        "servers": summary,
        "overhead_p50_ms": {s: v["c1_p50_ms"] - baseline_ms for s, v in summary.items()},
        "v2_infer_c1_p50_ms": float(np.percentile(v2_lat, 50) * 1000),
        "rounds": [asdict(r) for r in rounds],
    }


def print_report(res: dict) -> None:
    print()
    print(f"command: {res['command']}")
    print(f"machine: {res['machine']}; python {res['python']}, torch {res['torch']}; device {res['device']}")
    print(f"date: {res['date']}; medians of {res['repeats']} interleaved rounds")
    la = res["load_average_start_end"]
    print(f"1-min load average: {la[0]:.1f} at start, {la[1]:.1f} at end (shared machine)")
    print()
    print("| | batching on | batching off |")
    print("| --- | --- | --- |")
    on, off = res["servers"]["batching on"], res["servers"]["batching off"]
    rows = [
        ("in-process TorchScript p50 (ms)", res["in_process_p50_ms"], res["in_process_p50_ms"], "{:.3f}"),
        ("HTTP p50, concurrency 1 (ms)", on["c1_p50_ms"], off["c1_p50_ms"], "{:.3f}"),
        (
            "**overhead p50 (ms)**",
            res["overhead_p50_ms"]["batching on"],
            res["overhead_p50_ms"]["batching off"],
            "{:.3f}",
        ),
        ("HTTP p99, concurrency 1 (ms)", on["c1_p99_ms"], off["c1_p99_ms"], "{:.3f}"),
        ("server CPU per request, concurrency 1 (ms)", on["c1_server_cpu_ms"], off["c1_server_cpu_ms"], "{:.3f}"),
        ("throughput, concurrency 64 (req/s)", on["c64_rps"], off["c64_rps"], "{:.0f}"),
        ("p50, concurrency 64 (ms)", on["c64_p50_ms"], off["c64_p50_ms"], "{:.2f}"),
        ("p99, concurrency 64 (ms)", on["c64_p99_ms"], off["c64_p99_ms"], "{:.2f}"),
        ("server CPU per request, concurrency 64 (ms)", on["c64_server_cpu_ms"], off["c64_server_cpu_ms"], "{:.3f}"),
    ]
    for label, a, b, fmt in rows:
        print(f"| {label} | {fmt.format(a)} | {fmt.format(b)} |")
    print(f"\nOIP v2 `infer`, concurrency 1, batching on: p50 {res['v2_infer_c1_p50_ms']:.3f} ms")


def main() -> int:
    stop_started_on_sigterm()  # `timeout`/`kill`: the servers run in sessions of their own
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (servers and in-process baseline)")
    p.add_argument(
        "--model-repository", type=Path, default=None, help="default: $MODEL_REPOSITORY or ./model_repository"
    )
    p.add_argument("--batching-file", type=Path, default=None, help="default: the project's tf_serving/batching.config")
    p.add_argument("--requests", type=int, default=2000, help="requests per concurrency-1 run (and baseline calls)")
    p.add_argument("--throughput-requests", type=int, default=64 * 50, help="requests per concurrency-64 run")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; figures are medians")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    res = asyncio.run(main_async(args))
    print_report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
