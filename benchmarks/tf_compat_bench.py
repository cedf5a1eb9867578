"""Latency of the TF-Serving-compatible server: REST and gRPC at concurrency 1 and 64, beside the floor.

The floor is the in-process SavedModel signature call (what the server runs per batch); the gap to
it is what HTTP/gRPC, JSON/protobuf, batching and Python cost. One image per request, every
response checked, warm-up before timing, bounded request counts and time per phase. The client runs
on the same machine as the server, so at concurrency 64 both compete for the same cores.

    .venv/bin/python benchmarks/tf_compat_bench.py [--model-repository DIR] [--requests-c1 300] [--requests-c64 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def ensure_repository(path: Path | None) -> Path:
    if path is not None and any((path / "tensorflow" / "cnn").glob("[0-9]*/saved_model.pb")):
        return path
    from trainer.config import smoke_config
    from trainer.pipeline import train_and_publish

    repo = Path(tempfile.mkdtemp(prefix="tf_compat_bench_")) / "model_repository"
    print(f"no TF version under {path}; training the smoke model into {repo}")
    train_and_publish(smoke_config(), repo, version=1)
    return repo


def latest_version_dir(repo: Path) -> Path:
    base = repo / "tensorflow" / "cnn"
    return base / str(max(int(p.name) for p in base.iterdir() if p.name.isdigit()))


def floor(version_dir: Path, image: np.ndarray, n: int) -> list[float]:
    from tf_serving.compat.servable import SavedModelServable

    servable = SavedModelServable.load(version_dir, 1, warmup=True, verify=False)
    for _ in range(50):
        servable.run(image)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        servable.run(image)
        samples.append(time.perf_counter() - t0)
    return samples


async def run_concurrent(call, n: int, concurrency: int, max_seconds: float) -> tuple[list[float], float]:
    samples: list[float] = []
    remaining = n
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            t0 = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - start


class RawHttpConnection:
    """A minimal keep-alive HTTP/1.1 client: httpx's own per-request cost (~ms of CPU at 64 connections)
    would otherwise dominate on a 2-core machine shared by client and server."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def bench_rest(port: int, body: bytes, expected: int, n: int, c: int, max_s: float) -> tuple[list[float], float]:
    import orjson

    conns = [RawHttpConnection("127.0.0.1", port) for _ in range(c)]
    free: asyncio.Queue[RawHttpConnection] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)

    async def call() -> None:
        conn = await free.get()
        try:
            status, content = await conn.post("/v1/models/cnn:predict", body)
        finally:
            free.put_nowait(conn)
        if status != 200 or orjson.loads(content)["predictions"][0]["classes"] != expected:
            raise RuntimeError(f"bad REST response {status}: {content[:200]!r}")

    try:
        for _ in range(50):
            await call()
        return await run_concurrent(call, n, c, max_s)
    finally:
        for conn in conns:
            conn.close()


async def bench_grpc(
    target: str, image: np.ndarray, expected: int, n: int, c: int, max_s: float
) -> tuple[list[float], float]:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from gateway.upstreams.grpc import tensor_to_numpy

    req = predict_pb2.PredictRequest()
    req.model_spec.name = "cnn"
    req.inputs["images"].CopyFrom(tf.make_tensor_proto(image, dtype=tf.float32))
    async with grpc.aio.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        async def call() -> None:
            resp = await stub.Predict(req, timeout=60)
            got = tensor_to_numpy(resp.outputs["classes"])  # int64_val, as TF Serving answers
            if got.size != 1 or int(got[0]) != expected:
                raise RuntimeError(f"bad gRPC response: {got}")

        for _ in range(50):
            await call()
        return await run_concurrent(call, n, c, max_s)


async def bench_grpc_h2(
    target: str, image: np.ndarray, expected: int, n: int, c: int, max_s: float
) -> tuple[list[float], float]:
    """The same Predict through the gateway's own HTTP/2 gRPC client (gateway/upstreams/h2grpc.py): the
    client cost of the gateway's TF upstream, a fraction of grpc.aio's, so the server's share shows."""
    from gateway.loadtest.grpc_wire import encode_predict_request
    from gateway.upstreams import h2grpc
    from gateway.upstreams.grpc import tensor_to_numpy
    from gateway.upstreams.tfs_protos import PredictResponse

    message = encode_predict_request(image)
    channel = h2grpc.H2Channel(target, connect_timeout_s=5)
    block = h2grpc.header_block(target, "/tensorflow.serving.PredictionService/Predict", 60)

    async def call() -> None:
        resp = PredictResponse.FromString(await channel.unary(block, message, 60))
        got = tensor_to_numpy(resp.outputs["classes"])  # int64_val, as TF Serving answers
        if got.size != 1 or int(got[0]) != expected:
            raise RuntimeError(f"bad gRPC response: {got}")

    try:
        for _ in range(50):
            await call()
        return await run_concurrent(call, n, c, max_s)
    finally:
        channel.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model-repository", type=Path, default=Path(os.environ.get("MODEL_REPOSITORY", "model_repository"))
    )
    ap.add_argument("--requests-c1", type=int, default=300)
    ap.add_argument("--requests-c64", type=int, default=2000)
    ap.add_argument("--max-seconds", type=float, default=40.0, help="time cap per phase")
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devstack is not an installed package
    from devstack.machine import cpu_model
    from devstack.process import ManagedProcess, free_port

    repo = ensure_repository(args.model_repository)
    vdir = latest_version_dir(repo)
    with np.load(vdir / "golden.npz") as g:
        image, expected = g["images"][:1].astype(np.float32), int(g["classes"][0])

    rows: list[tuple[str, int, list[float], float | None, float | None]] = []
    fl = floor(vdir, image, args.requests_c1)
    rows.append(("in-process signature call (floor)", 1, fl, None, None))

    rest_port, grpc_port = free_port(), free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="tf_compat_bench_logs_"))
    proc = ManagedProcess.python_module(
        "tf_serving_compat",
        "tf_serving.compat",
        ready_url=f"http://127.0.0.1:{rest_port}/v1/models/cnn",
        ready_body='"AVAILABLE"',
        log_dir=log_dir,
        env={
            "MODEL_REPOSITORY": str(repo),
            "TF_SERVING_REST_PORT": str(rest_port),
            "TF_SERVING_GRPC_PORT": str(grpc_port),
            "TF_SERVING_LOG_LEVEL": "WARNING",
        },
    ).start()
    try:
        proc.wait_ready(timeout=180)
        import orjson
        import psutil

        server = psutil.Process(proc.proc.pid) if proc.proc is not None else None

        def server_cpu() -> float:
            t = server.cpu_times() if server is not None else None
            return t.user + t.system if t is not None else 0.0

        body = orjson.dumps({"instances": image.tolist()})
        target = f"127.0.0.1:{grpc_port}"
        phases = (
            (
                "compat REST (JSON, row format)",
                lambda n, c: bench_rest(rest_port, body, expected, n, c, args.max_seconds),
            ),
            (
                "compat gRPC (PredictionService, grpc.aio client)",
                lambda n, c: bench_grpc(target, image, expected, n, c, args.max_seconds),
            ),
            (
                "compat gRPC (PredictionService, the gateway's h2 client)",
                lambda n, c: bench_grpc_h2(target, image, expected, n, c, args.max_seconds),
            ),
        )
        for c, n in ((1, args.requests_c1), (64, args.requests_c64)):
            for name, bench in phases:
                before = server_cpu()
                s, wall = asyncio.run(bench(n, c))
                # Warm-up calls included (50 per phase): the server's CPU per answered request.
                rows.append((name, c, s, len(s) / wall, (server_cpu() - before) / (len(s) + 50)))
    finally:
        proc.stop()

    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\nmachine: {os.cpu_count()} CPUs ({cpu_model()}), shared with other jobs; {now}")
    print(f"model: {vdir}; one 28x28x1 image per request; batching.config of tf_serving/ (timeout 1 ms)\n")
    print("| path | concurrency | requests | p50 ms | p99 ms | mean ms | throughput req/s | server CPU ms/request |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, c, s, rps, cpu in rows:
        ms = [x * 1e3 for x in s]
        tput = f"{rps:.0f}" if rps is not None else f"{1 / statistics.mean(s):.0f} (1 thread)"
        cpu_ms = f"{cpu * 1e3:.3f}" if cpu is not None else "-"
        print(
            f"| {name} | {c} | {len(s)} | {pct(ms, 50):.2f} | {pct(ms, 99):.2f} | {statistics.mean(ms):.2f} | {tput} "
            f"| {cpu_ms} |"
        )


if __name__ == "__main__":
    main()
