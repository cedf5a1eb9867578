"""Gateway overhead: latency through the gateway minus latency straight to the backend, side by side.

Starts torch_service, the TF-Serving-compatible server (REST + gRPC), three gateways (the default:
torch over the binary wire, TF over gRPC with the h2 client; TF over gRPC with grpcio's client; and
"gateway_json", which forwards JSON bodies to both: torch with GATEWAY_TORCH_WIRE=json, TF over
REST) and a plain TCP relay on free loopback ports, warms every path up,
then for each backend and concurrency sends the same request in rounds straight to the backend (over
REST, and for TF over gRPC too) and through every front (same body; each round runs every path once,
in a rotating order) and prints, per case, p50/p99 of the direct and the front's path and their
difference, plus the gateway's CPU time per request. Both TF baselines come from the same rounds as
the gateway paths they are compared with.

Cases: torch via REST (binary wire, and JSON wire); tf via the gateway's gRPC upstream compared with
a client calling TF's REST API directly and with one calling its gRPC API directly (with the gateway's
own lean HTTP/2 client, so that baseline and the gateway's upstream call cost the same); tf via
the REST upstream; tf via the gRPC upstream with GATEWAY_TF_GRPC_CLIENT=grpcio; and torch behind a
TCP relay that only copies bytes: the floor of ANY extra user-space hop on this machine, which the
gateway's overhead includes too.

    python benchmarks/gateway_overhead.py [--requests 2000] [--concurrency 1,64] [--batch 1]
    python benchmarks/gateway_overhead.py --client wrk [--wrk-duration 3]

The client is this script's own (the gateway's lean HTTP/1.1 pool on uvloop, and its HTTP/2 gRPC client
for the direct-gRPC case) or, with --client wrk, wrk (benchmarks/wrkrun.py): a C client that needs ~10 us of
CPU per request where ours needs ~100 us, which on a 2-core machine at concurrency 1 shares the cores
(and their caches) with the three servers under test. With wrk each round is one wrk run per path;
the overhead is the median over rounds of (through p50 - direct p50), both runs of a pair from the
same round (a few wrk runs apart at most).
wrk speaks HTTP/1.1 only, so there the direct-gRPC baseline is h2load's (benchmarks/h2loadrun.py, another
C client; `apt-get install -y nghttp2-client`), and left out where h2load is not installed.

With --callback-front it also starts benchmarks/callback_front.py, the torch predict path in bare
uvloop callbacks (an experiment: what the serving machinery costs), as one more way through to torch;
`--callback-front bare,pool,serve` starts one per mode, the later ones with more of the gateway's own
code behind the same front door (see that file), to show where the gateway's cost lies.

A stack that is already running can be measured instead: --torch-url, --tf-url and --gateway-url.
Where TensorFlow is not installed (the GPU image), `--backends torch` starts only torch_service, two
gateways (binary and JSON wire) and the relay; `--torch-device cuda` puts torch_service on the GPU:

    python benchmarks/gateway_overhead.py --backends torch --torch-device cuda --client wrk
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psutil
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import h2loadrun  # noqa: E402  (benchmarks/ itself is on sys.path when this file runs)
import wrkrun  # noqa: E402

from devstack.ensure_model import complete_versions, ensure_model  # noqa: E402
from devstack.process import ManagedProcess, free_port, pythonpath, stop_started_on_sigterm  # noqa: E402
from gateway.upstreams.http1 import Http1Pool  # noqa: E402


def start_stack(
    repo: Path,
    log_dir: Path,
    access_log: bool,
    backends: set[str],
    torch_device: str,
    callback_fronts: tuple[str, ...] = (),
) -> tuple[list[ManagedProcess], dict[str, str]]:
    quiet = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": pythonpath(ROOT), "MODEL_REPOSITORY": str(repo)}
    tp, rp, gp, rl = free_port(), free_port(), free_port(), free_port()
    gwp, gwr, gwg = free_port(), free_port(), free_port()
    urls = {
        "torch": f"http://127.0.0.1:{tp}",
        "tf_grpc": f"127.0.0.1:{gp}",
        "relay": f"http://127.0.0.1:{rl}",
        "tf": f"http://127.0.0.1:{rp}",
        "gateway": f"http://127.0.0.1:{gwp}",
        "gateway_json": f"http://127.0.0.1:{gwr}",
        "gateway_grpcio": f"http://127.0.0.1:{gwg}",
    }
    # (name, TF upstream protocol, its gRPC client, torch wire)
    gateways = [
        ("gateway", "grpc", "h2", "binary"),
        ("gateway_json", "rest", "h2", "json"),
        ("gateway_grpcio", "grpc", "grpcio", "binary"),
    ]
    if "tf" not in backends:
        # torch only (a machine without TensorFlow, such as the GPU image): two gateways (torch over the
        # binary and over the JSON wire), their TF upstream pointed at a port nobody listens on (TF shows
        # as not ready; torch requests never touch it).
        gateways = [("gateway", "rest", "h2", "binary"), ("gateway_json", "rest", "h2", "json")]
        for name in ("tf", "tf_grpc", "gateway_grpcio"):
            del urls[name]
    procs = [
        ManagedProcess.python_module(
            "torch_service",
            "torch_service",
            ready_url=f"{urls['torch']}/v2/health/ready",
            log_dir=log_dir,
            env={
                **quiet,
                "TORCH_SERVICE_HOST": "127.0.0.1",
                "TORCH_SERVICE_PORT": str(tp),
                "TORCH_SERVICE_LOG_LEVEL": "warning",
                "TORCH_SERVICE_DEVICE": torch_device,
            },
            cwd=ROOT,
        ),
        *(
            [
                ManagedProcess.python_module(
                    "tf_compat",
                    "tf_serving.compat",
                    ready_url=f"{urls['tf']}/v1/models/cnn",
                    log_dir=log_dir,
                    env={**quiet, "TF_SERVING_REST_PORT": str(rp), "TF_SERVING_GRPC_PORT": str(gp)},
                    cwd=ROOT,
                )
            ]
            if "tf" in backends
            else []
        ),
        *(
            ManagedProcess.python_module(
                name,
                "gateway",
                ready_url=f"{urls[name]}/readyz",
                log_dir=log_dir,
                env={
                    **quiet,
                    "GATEWAY_PORT": urls[name].rsplit(":", 1)[1],
                    "GATEWAY_TORCH_URLS": urls["torch"],
                    "GATEWAY_TF_GRPC_TARGETS": f"127.0.0.1:{gp}",
                    "GATEWAY_TF_REST_URLS": f"http://127.0.0.1:{rp}",
                    "GATEWAY_TF_PROTOCOL": protocol,
                    "GATEWAY_TF_GRPC_CLIENT": client,
                    "GATEWAY_TORCH_WIRE": wire,
                    "GATEWAY_ACCESS_LOG": str(access_log).lower(),
                    "GATEWAY_HEALTH_INTERVAL_S": "0.5",
                },
                cwd=ROOT,
            )
            for name, protocol, client, wire in gateways
        ),
        ManagedProcess(
            name="relay",
            argv=[sys.executable, str(Path(__file__).resolve()), "--relay", str(rl), str(tp)],
            ready_url=None,
            log_path=log_dir / "relay.log",
            env=quiet,
            cwd=ROOT,
        ),
    ]
    for mode in callback_fronts:  # experiments, each one more way through to torch (benchmarks/callback_front.py)
        cf = free_port()
        name = f"callback_front_{mode}"
        urls[name] = f"http://127.0.0.1:{cf}"
        script = str(Path(__file__).resolve().parent / "callback_front.py")
        procs.append(
            ManagedProcess(
                name=name,
                argv=[sys.executable, script, str(cf), str(tp), mode],
                ready_url=None,
                log_path=log_dir / f"{name}.log",
                env=quiet,
                cwd=ROOT,
            )
        )
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready(300)
    except BaseException:
        # main() only stops what this returns: a service that failed to start must not leave the
        # others running (they would go on loading the machine that later runs are measured on).
        _stop_all(procs)
        raise
    return procs, urls


async def wait_ready(gateway: str, backends: list[str], timeout: float = 120) -> dict[str, Any]:
    """Wait until the gateway has every backend in `backends` ready; returns its `/v1/backends` view of
    them (upstream protocol and wire per backend: a gateway given by URL says how it is configured)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            doc: dict[str, Any] = (await c.get(f"{gateway}/v1/backends")).json()["backends"]
            if all(doc[b]["ready"] for b in backends):
                return doc
            await asyncio.sleep(0.3)
    raise TimeoutError(f"gateway {gateway} never saw {' and '.join(backends)} ready")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
    except ConnectionError:
        pass
    finally:
        writer.close()


def relay(port: int, upstream_port: int) -> None:
    """A TCP relay that copies bytes both ways and understands nothing: the cheapest extra hop there is."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


Call = Callable[[], Awaitable[None]]


def http_call(pool: Http1Pool, path: str, body: bytes) -> Call:
    """One predict over the gateway's own lean HTTP/1.1 pool (one write per call, kept-alive
    connections): a heavier client would eat the two cores the servers under test need."""

    async def call() -> None:
        r = await pool.request("POST", path, body)
        if r.status != 200 or not r.content.startswith(b'{"predictions"'):
            raise RuntimeError(f"{path}: HTTP {r.status}: {r.content[:200]!r}")

    return call


def grpc_message(batch: np.ndarray) -> bytes:
    """The PredictRequest the gateway's gRPC upstream sends for `batch` (what both direct-gRPC clients send)."""
    from gateway.upstreams.grpc import GrpcTransport

    return GrpcTransport(timeout_s=30.0, health_timeout_s=5.0).build_request("cnn", None, batch).SerializeToString()


def grpc_call(target: str, batch: np.ndarray) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """One Predict through the gateway's own HTTP/2 gRPC client (h2grpc), the message built and the answer
    decoded as its gRPC upstream does them; and a closer. The leanest gRPC client here, so the direct
    path carries no more client cost than the gateway's own call (grpc.aio costs 0.35-0.58 ms of client
    CPU per call on the 2-vCPU VM, which made this baseline slower and the gateway look cheaper)."""
    from gateway.upstreams import h2grpc
    from gateway.upstreams.tfs_protos import PredictResponse

    message = grpc_message(batch)
    channel = h2grpc.H2Channel(target, connect_timeout_s=5.0)
    block = h2grpc.header_block(target, "/tensorflow.serving.PredictionService/Predict", 30.0)

    async def call() -> None:
        resp = PredictResponse.FromString(await channel.unary(block, message, 30.0))
        if "classes" not in resp.outputs:
            raise RuntimeError(f"gRPC Predict answered without classes: {resp}")

    async def close() -> None:
        channel.close()

    return call, close


async def run_path(call: Call, n: int, concurrency: int) -> list[float]:
    """n calls with `concurrency` in flight; latencies in ms. Every answer is checked by `call`."""
    latencies: list[float] = []
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - t0) * 1000.0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def cpu_s(proc: psutil.Process | None) -> float:
    if proc is None:
        return float("nan")
    t = proc.cpu_times()
    return t.user + t.system


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


async def measure(
    urls: dict[str, str], args: argparse.Namespace, gw_pids: dict[str, int], views: dict[str, dict[str, Any]]
) -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    body = orjson.dumps(
        {"instances": rng.random((args.batch, 28, 28, 1), dtype=np.float32)}, option=orjson.OPT_SERIALIZE_NUMPY
    )
    pools = {
        name: Http1Pool(url, max_connections=256, connect_timeout_s=5)
        for name, url in urls.items()
        if url and url.startswith("http")
    }
    predict = "/v1/models/cnn:predict"
    # name -> the URL an HTTP client posts to (wrk), and the call this script makes itself
    targets = {name: f"{url}{predict}" for name, url in urls.items() if url.startswith("http")}
    calls: dict[str, Call] = {name: http_call(pool, predict, body) for name, pool in pools.items()}
    closers = []
    grpc_direct: GrpcDirect | None = None
    if "tf_grpc" in urls and args.client == "wrk" and h2loadrun.available() and not urls.get("tf"):
        print("# no direct-gRPC baseline: h2load's calls are checked through TF's metrics, so it needs --tf-url")
        del urls["tf_grpc"]
    if "tf_grpc" in urls and (args.client == "python" or h2loadrun.available()):
        # wrk speaks HTTP/1.1 only: with --client wrk the direct-gRPC baseline is h2load's (when installed),
        # a C client too. This script's own gRPC call still warms the path up and checks the answer.
        images = np.asarray(orjson.loads(body)["instances"], dtype=np.float32)
        calls["tf_grpc"], close = grpc_call(urls["tf_grpc"], images)
        closers.append(close)
        targets["tf_grpc"] = f"http://{urls['tf_grpc']}/tensorflow.serving.PredictionService/Predict"
        grpc_direct = GrpcDirect(grpc_message(images), urls["tf"]) if urls.get("tf") else None
    for name, backend in (
        ("gateway", "torch"),
        ("gateway_json", "torch"),
        ("gateway", "tf"),
        ("gateway_json", "tf"),
        ("gateway_grpcio", "tf"),
    ):
        if name in pools:
            calls[f"{name}?{backend}"] = http_call(pools[name], f"{predict}?backend={backend}", body)
            targets[f"{name}?{backend}"] = f"{urls[name]}{predict}?backend={backend}"
    main_view = views.get("gateway", {})
    upstream = "gRPC" if main_view.get("tf", {}).get("protocol", "grpc") == "grpc" else "REST"
    wire = "JSON" if main_view.get("torch", {}).get("wire") == "json" else "binary"
    # case -> (direct call, call through the front, the front's process for its CPU time)
    cases = {
        f"torch (REST, {wire})": ("torch", "gateway?torch", "gateway"),
        # The client's JSON forwarded as sent (GATEWAY_TORCH_WIRE=json): torch_service parses it again. A
        # gateway given by --gateway-url that uses that wire is the row above, under this same name.
        **({"torch (REST, JSON)": ("torch", "gateway_json?torch", "gateway_json")} if wire != "JSON" else {}),
        f"tf ({upstream}) vs direct REST": ("tf", "gateway?tf", "gateway"),
        f"tf ({upstream}) vs direct gRPC": ("tf_grpc", "gateway?tf", "gateway"),
        "tf (REST)": ("tf", "gateway_json?tf", "gateway_json"),
        # The same gRPC upstream through grpcio's client (GATEWAY_TF_GRPC_CLIENT=grpcio) instead of h2.
        "tf (gRPC, grpcio) vs direct REST": ("tf", "gateway_grpcio?tf", "gateway_grpcio"),
        "torch via TCP relay (floor)": ("torch", "relay", "relay"),
        # --callback-front: the same predict work in bare callbacks, without the serving machinery, then
        # with the gateway's pool (and transport and client), then with its whole serve_predict.
        "torch via callback front (experiment)": ("torch", "callback_front_bare", "callback_front_bare"),
        "torch via callback front + gateway pool": ("torch", "callback_front_pool", "callback_front_pool"),
        "torch via callback front + serve_predict": ("torch", "callback_front_serve", "callback_front_serve"),
    }
    cases = {k: v for k, v in cases.items() if v[0] in calls and v[1] in calls}
    gw_procs = {name: psutil.Process(pid) for name, pid in gw_pids.items()}
    # The cases of one backend are measured in the same rounds: each round runs every path they use once
    # (the direct paths, REST and gRPC for TF, and every way through), in an order that rotates from round
    # to round, so two ways through (binary and JSON wire, gRPC and REST upstream, the relay) and two
    # baselines of one way through are compared under the same machine state, not minutes apart on a
    # shared, noisy host.
    groups: dict[str, list[str]] = {}
    for case, (direct, _, _) in cases.items():
        groups.setdefault("tf" if direct == "tf_grpc" else direct, []).append(case)
    rows = []
    for direct, through, _ in cases.values():  # warm-up: connections, graph caches, batching threads
        for name in (direct, through):
            await run_path(calls[name], args.warmup, 4)  # every answer checked here, whichever client follows
    for concurrency in args.concurrency:
        for names in groups.values():
            paths = list(dict.fromkeys(p for case in names for p in cases[case][:2]))
            procs = {cases[case][1]: gw_procs.get(cases[case][2]) for case in names}
            if args.client == "wrk":

                def runner(path: str, c: int = concurrency) -> Run:
                    if path == "tf_grpc" and grpc_direct is not None:
                        return grpc_direct.run(targets[path], c, args.wrk_duration)
                    return wrkrun.run(targets[path], body, concurrency=c, duration_s=args.wrk_duration)

                group = await measure_rounds(paths, procs, runner, args.rounds)
            else:

                def runner(path: str, c: int = concurrency) -> Run:
                    return run_path(calls[path], max(c, args.requests // args.rounds), c)

                group = await measure_rounds(paths, procs, runner, args.rounds)
            for case in names:
                direct, through, _ = cases[case]
                row = {"backend": case, "concurrency": concurrency, **overhead(group, direct, through)}
                rows.append(row)
                print(
                    f"{case:28s} c={concurrency:<3d} n={row['n']:<6d} direct p50 {row['direct_p50']:7.3f} "
                    f"p99 {row['direct_p99']:7.3f} | gateway p50 {row['gateway_p50']:7.3f} "
                    f"p99 {row['gateway_p99']:7.3f} | overhead p50 {row['overhead_p50']:+7.3f} "
                    f"p99 {row['overhead_p99']:+7.3f} ms | gateway CPU {row['gateway_cpu_ms']:.3f} ms/request",
                    flush=True,
                )
    for pool in pools.values():
        await pool.aclose()
    for close in closers:
        await close()
    return rows


# One measured run of a path: latencies (ms) from this script's client, or a wrk / h2load result (its
# percentiles); an awaitable for the former.
Run = Any


def _rotation(paths: list[str], r: int) -> list[str]:
    """Every path once, starting from a different one every other round and in reverse order in odd
    rounds, so no path always runs first or last (each keeps its neighbours: the order is a rotation)."""
    k = (r // 2) % len(paths)
    order = [*paths[k:], *paths[:k]]
    return order if r % 2 == 0 else order[::-1]


@dataclass
class Rounds:
    """Each path's runs, one per round, and the CPU time of the process behind each way through."""

    runs: dict[str, list[Any]]
    cpu_s: dict[str, float]
    requests: dict[str, int]


async def measure_rounds(
    paths: list[str], procs: dict[str, psutil.Process | None], runner: Callable[[str], Run], rounds: int
) -> Rounds:
    runs: dict[str, list[Any]] = {p: [] for p in paths}
    # No process (a direct path, or a gateway given by --gateway-url): its CPU time is unknown, not zero.
    cpu = {p: 0.0 if procs.get(p) is not None else float("nan") for p in paths}
    requests = dict.fromkeys(paths, 0)
    for r in range(rounds):
        for path in _rotation(paths, r):
            proc = procs.get(path)
            before = cpu_s(proc)
            res = runner(path)
            if asyncio.iscoroutine(res):
                res = await res
            # wrk or h2load: a run that failed is never quoted
            if not isinstance(res, list) and (res.failed or not res.requests):
                tool = "h2load" if path == "tf_grpc" else "wrk"
                raise RuntimeError(f"{tool} against {path}: {res.requests} requests, errors {res.errors}")
            runs[path].append(res)
            requests[path] += len(res) if isinstance(res, list) else res.requests
            if proc is not None:
                cpu[path] += cpu_s(proc) - before
    return Rounds(runs, cpu, requests)


def overhead(group: Rounds, direct: str, through: str) -> dict[str, object]:
    """This script's client: all latencies of every round pooled, then percentiles of each path, and their
    difference. wrk / h2load: medians over rounds of each percentile and of the paired differences (the
    two runs of a pair from the same round, a few runs apart at most)."""
    row: dict[str, object] = {"n": group.requests[through]}
    d_runs, g_runs = group.runs[direct], group.runs[through]
    for q in (50, 99):
        if isinstance(g_runs[0], list):
            d, g = pct([x for run in d_runs for x in run], q), pct([x for run in g_runs for x in run], q)
            row |= {f"direct_p{q}": d, f"gateway_p{q}": g, f"overhead_p{q}": g - d}
        else:
            ds = [getattr(x, f"p{q}_ms") for x in d_runs]
            gs = [getattr(x, f"p{q}_ms") for x in g_runs]
            row |= {
                f"direct_p{q}": statistics.median(ds),
                f"gateway_p{q}": statistics.median(gs),
                f"overhead_p{q}": statistics.median(y - x for x, y in zip(ds, gs, strict=True)),
            }
    # With wrk the CPU counter also runs during its connect and teardown: a slight overestimate per request.
    row["gateway_cpu_ms"] = group.cpu_s[through] * 1000.0 / group.requests[through]
    return row


class GrpcDirect:
    """The direct-gRPC baseline under --client wrk: h2load posting the gateway's own PredictRequest.

    h2load does not read gRPC trailers, so a call that failed is an HTTP 200 to it. What tells is the
    server's own count of successful calls (TF Serving's `:tensorflow:serving:request_count{status="OK"}`,
    on its REST port, with --monitoring_config_file as this project's deployments set it): every call
    h2load saw answered must have added one. A call refused before Predict ran (a message gRPC could not
    read, one too large) adds none, and is counted as failed too."""

    def __init__(self, message: bytes, rest_url: str) -> None:
        self.message = message
        self.metrics_url = f"{rest_url}/monitoring/prometheus/metrics"

    def ok_calls(self) -> float:
        resp = httpx.get(self.metrics_url, timeout=10)
        resp.raise_for_status()  # no metrics page (monitoring off, a wrong --tf-url): nothing could be checked
        counts = [
            float(line.rsplit(" ", 1)[1])
            for line in resp.text.splitlines()
            if line.startswith(":tensorflow:serving:request_count{") and 'status="OK"' in line
        ]
        if not counts and ":tensorflow:serving:" not in resp.text:
            raise RuntimeError(f"{self.metrics_url} has no TF Serving metrics: the h2load run cannot be checked")
        return sum(counts)

    def run(self, url: str, concurrency: int, duration_s: float) -> wrkrun.WrkResult:
        return h2loadrun.run(url, self.message, concurrency=concurrency, duration_s=duration_s, succeeded=self.ok_calls)


def markdown(rows: list[dict[str, object]], args: argparse.Namespace) -> str:
    lines = [
        "| backend (gateway upstream) | concurrency | direct p50 / p99 (ms) | via gateway p50 / p99 (ms) "
        "| overhead p50 / p99 (ms) | gateway (or relay) CPU per request (ms) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['concurrency']} | {r['direct_p50']:.3f} / {r['direct_p99']:.3f} "
            f"| {r['gateway_p50']:.3f} / {r['gateway_p99']:.3f} "
            f"| {r['overhead_p50']:+.3f} / {r['overhead_p99']:+.3f} | {r['gateway_cpu_ms']:.3f} |"
        )
    return "\n".join(lines)


def _stop_all(procs: list[ManagedProcess]) -> None:
    for p in reversed(procs):
        with contextlib.suppress(Exception):  # one that will not stop must not strand the others
            p.stop(grace=5)


def _torch_only_version(repo: Path) -> int:
    """The latest TorchScript version: a torch-only run needs no TensorFlow tree (and cannot train one)."""
    versions = complete_versions(repo, frameworks=("torchscript",))
    if not versions:
        raise SystemExit(f"--backends torch: no {repo}/torchscript/cnn/<version>/model.pt (train: python -m trainer)")
    return versions[-1]


def main() -> int:
    if sys.argv[1:2] == ["--relay"]:  # the relay process this script starts (see start_stack)
        relay(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000, help="per path, backend and concurrency")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved direct/gateway rounds")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64])
    ap.add_argument("--batch", type=int, default=1, help="images per request")
    ap.add_argument(
        "--model-repository", type=Path, default=Path(os.environ.get("MODEL_REPOSITORY", "model_repository"))
    )
    ap.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gateway access log on (the default deployment) or off",
    )
    ap.add_argument(
        "--backends",
        type=lambda s: set(s.split(",")),
        default={"torch", "tf"},
        help="torch,tf (default) or torch: start and measure only torch_service (no TensorFlow needed)",
    )
    ap.add_argument(
        "--torch-device",
        default=None,
        help="torch_service's device (auto | cpu | cuda | cuda:N); default $TORCH_SERVICE_DEVICE or auto",
    )
    ap.add_argument("--torch-url")
    ap.add_argument("--tf-url")
    ap.add_argument("--tf-grpc", help="host:port of TF Serving's gRPC API (the direct-gRPC baseline)")
    ap.add_argument("--gateway-url")
    ap.add_argument(
        "--client",
        choices=("python", "wrk"),
        default="python",
        help="who sends the requests: this script (uvloop + the gateway's HTTP pool and gRPC client) or wrk",
    )
    ap.add_argument("--wrk-duration", type=float, default=3.0, help="seconds per wrk run (--client wrk)")
    ap.add_argument(
        "--callback-front",
        nargs="?",
        const=("bare",),
        default="",
        type=lambda s: tuple(m for m in s.split(",") if m),
        help="also measure benchmarks/callback_front.py, the torch predict path in bare uvloop callbacks "
        "(an experiment: what the serving machinery costs); modes bare (the default), pool, serve, comma-separated",
    )
    args = ap.parse_args()
    if not args.backends <= {"torch", "tf"} or "torch" not in args.backends:
        ap.error("--backends: torch,tf or torch (the relay and the gateway's TF cases all need torch_service)")
    if args.gateway_url and (args.backends != {"torch", "tf"} or args.torch_device is not None):
        ap.error("--backends and --torch-device choose what this script starts; with --gateway-url it starts nothing")
    if set(args.callback_front) - {"bare", "pool", "serve"}:
        ap.error("--callback-front: modes bare, pool, serve (comma-separated)")
    if args.gateway_url and args.callback_front:
        ap.error("--callback-front is started by this script; with --gateway-url it starts nothing")
    args.torch_device = args.torch_device or os.environ.get("TORCH_SERVICE_DEVICE", "auto")
    if not re.fullmatch(r"auto|cpu|cuda|cuda:\d+", args.torch_device):
        ap.error(f"--torch-device {args.torch_device!r}: use auto, cpu, cuda or cuda:N")
    stop_started_on_sigterm()
    if args.client == "wrk" and not wrkrun.available():
        ap.error("--client wrk: wrk is not on PATH (install it with: apt-get install -y wrk)")

    procs: list[ManagedProcess] = []
    try:
        if args.gateway_url:
            given = {"torch": args.torch_url, "tf": args.tf_url, "tf_grpc": args.tf_grpc, "gateway": args.gateway_url}
            urls = {name: url for name, url in given.items() if url}
        else:
            repo = args.model_repository.resolve()
            if "tf" in args.backends:
                version, trained = ensure_model(repo)
            else:
                version, trained = _torch_only_version(repo), False
            print(f"model repository {repo} (version {version}{', trained now' if trained else ''})")
            log_dir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
            started = "torch_service, " + ("tf_serving.compat, gateways" if "tf" in args.backends else "two gateways")
            print(f"starting {started} (logs in {log_dir}) ...", flush=True)
            procs, urls = start_stack(
                repo, log_dir, args.access_log, args.backends, args.torch_device, args.callback_front
            )
        views: dict[str, dict[str, Any]] = {}
        for name in ("gateway", "gateway_json", "gateway_grpcio"):
            if name in urls:
                wanted: list[str] = [b for b in ("torch", "tf") if b in urls or (b == "tf" and "tf_grpc" in urls)]
                views[name] = asyncio.run(wait_ready(urls[name], wanted or ["torch"]))
        print(
            f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
            f"{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}; batch {args.batch}, "
            + ("" if args.gateway_url else f"torch_service on {args.torch_device}, ")
            + f"access log {'on' if args.access_log else 'off'}, client "
            + ("this script (uvloop)" if args.client == "python" else f"wrk 1 thread, {args.wrk_duration:g} s per run"),
            flush=True,
        )
        gw_pids = {
            p.name: p.proc.pid for p in procs if p.name.startswith(("gateway", "relay", "callback_front")) and p.proc
        }
        rows = uvloop.run(measure(urls, args, gw_pids, views))
        print()
        print(markdown(rows, args))
    finally:
        _stop_all(procs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
