"""Two versions of the gateway side by side: this working tree against an earlier git revision.

    python benchmarks/gateway_versions.py --baseline <git-ref> [--delay-ms 2] [--rounds 16] [--per-round 200]
        [--baseline-env NAME=VALUE ...] [--current-env NAME=VALUE ...]
        [--upstream tf-grpc --model-repository DIR]

Both gateways run at once in front of one stand-in backend (an asyncio server that answers every
predict after --delay-ms with a fixed answer, TF Serving's JSON or, for the binary wire, OIP binary
tensors, so the backend's own noise is out of the picture), and one client sends the same predict
body at concurrency 1 to the backend directly and to each gateway, in interleaved rounds whose order
alternates. Printed per path: p50, the overhead over
the direct call, and the gateway process's CPU time per request. The baseline is checked out into a
temporary git worktree and run from there with this checkout's virtual environment. --baseline-env and
--current-env set gateway settings on one side only, so one revision can also be compared with itself
under two settings (`--baseline HEAD --baseline-env GATEWAY_ACCESS_LOG=false`). Against a baseline from
before the binary wire, `--current-env GATEWAY_TORCH_WIRE=json` compares like with like; without it the
comparison includes the wire (here the stand-in parses nothing, so only the gateway's side of it shows).

`--upstream tf-grpc` puts the real TF-Serving-compatible server (tf_serving.compat, on the model in
--model-repository) behind both gateways instead, reached over gRPC (their default for TF), and
measures `?backend=tf` through them against the compat server's own REST API. Printed per gateway in
either mode: seconds from start to ready, and resident memory after the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import psutil
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.process import ManagedProcess, free_port, pythonpath  # noqa: E402
from gateway.upstreams.http1 import Http1Pool  # noqa: E402
from serving_core import contract, oip  # noqa: E402

ANSWER = orjson.dumps({"predictions": [{"probabilities": [0.1] * 10, "classes": 3}]})
STATUS = orjson.dumps({"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {}}]})
# The same answer over the binary wire (OIP infer with binary outputs), what a gateway with
# GATEWAY_TORCH_WIRE=binary (the default) asks torch_service for.
_OIP_REQUEST = oip.InferRequest(
    None, np.zeros((1, 28, 28, 1), np.float32), contract.OUTPUT_NAMES, frozenset(contract.OUTPUT_NAMES)
)
_OIP_BODY, _OIP_HEAD = oip.infer_response(
    "cnn", 1, _OIP_REQUEST, {"probabilities": np.full((1, 10), 0.1, np.float32), "classes": np.array([3], np.int64)}
)
OIP_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nInference-Header-Content-Length: %d\r\n"
    b"Content-Length: %d\r\n\r\n" % (_OIP_HEAD or 0, len(_OIP_BODY))
) + _OIP_BODY


def serve_backend(port: int, delay_s: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")), 0
                )
                await reader.readexactly(length)
                body = STATUS if head.startswith(b"GET") else ANSWER
                if delay_s and body is ANSWER:
                    await asyncio.sleep(delay_s)
                if head.startswith(b"POST /v2/"):
                    writer.write(OIP_ANSWER)
                    continue
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                )
                writer.write(body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


async def measure(urls: dict[str, str], pids: dict[str, int], rounds: int, per_round: int, backend: str) -> None:
    body = orjson.dumps(
        {"instances": np.random.default_rng(0).random((1, 28, 28, 1), dtype=np.float32)},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    pools = {name: Http1Pool(url, max_connections=4, connect_timeout_s=5) for name, url in urls.items()}
    procs = {name: psutil.Process(pid) for name, pid in pids.items()}
    path = f"/v1/models/cnn:predict?backend={backend}"
    lat: dict[str, list[float]] = {name: [] for name in pools}
    cpu = dict.fromkeys(pids, 0.0)
    for pool in pools.values():  # warm-up
        for _ in range(300):
            await pool.request("POST", path, body)
    for r in range(rounds):
        for name in list(pools) if r % 2 == 0 else list(reversed(pools)):
            before = procs[name].cpu_times() if name in procs else None
            for _ in range(per_round):
                t0 = time.perf_counter()
                resp = await pools[name].request("POST", path, body)
                lat[name].append(time.perf_counter() - t0)
                if resp.status != 200:
                    raise RuntimeError(f"{name}: HTTP {resp.status}: {resp.content[:200]!r}")
            if before is not None:
                after = procs[name].cpu_times()
                cpu[name] += after.user - before.user + after.system - before.system
    direct = float(np.median(lat["direct"]))
    for name, values in lat.items():
        p50 = float(np.median(values))
        line = f"{name:10s} p50 {p50 * 1e3:7.3f} ms  overhead {(p50 - direct) * 1e3:+7.3f} ms"
        if name in cpu:
            line += f"  gateway CPU {cpu[name] / len(values) * 1e3:.3f} ms/request"
        print(line, flush=True)
    for name, proc in procs.items():
        print(f"{name:10s} resident memory after the run {proc.memory_info().rss / 2**20:.0f} MiB", flush=True)
    for pool in pools.values():
        await pool.aclose()


def main() -> int:
    if sys.argv[1:2] == ["--backend"]:
        serve_backend(int(sys.argv[2]), float(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="git revision to compare this working tree with")
    ap.add_argument("--delay-ms", type=float, default=2.0, help="the stand-in backend's time per predict")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--per-round", type=int, default=200)
    ap.add_argument(
        "--upstream",
        choices=("standin", "tf-grpc"),
        default="standin",
        help="standin: the asyncio stand-in over REST (torch path); tf-grpc: the compat server over gRPC (TF path)",
    )
    ap.add_argument("--model-repository", type=Path, help="the model the compat server serves (--upstream tf-grpc)")
    for side in ("baseline", "current"):
        ap.add_argument(
            f"--{side}-env",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"an environment variable for the {side} gateway only (repeatable)",
        )
    args = ap.parse_args()
    extra_env: dict[str, dict[str, str]] = {}
    for side in ("baseline", "current"):
        pairs = getattr(args, f"{side}_env")
        bad = [pair for pair in pairs if "=" not in pair]
        if bad:
            ap.error(f"--{side}-env wants NAME=VALUE, got {bad[0]!r}")
        extra_env[side] = dict(pair.split("=", 1) for pair in pairs)
    if args.upstream == "tf-grpc" and args.model_repository is None:
        ap.error("--upstream tf-grpc needs --model-repository (a trained one: python -m trainer)")
    if args.upstream == "tf-grpc" and not any((args.model_repository / "tensorflow" / "cnn").glob("[0-9]*")):
        ap.error(f"{args.model_repository}: no SavedModel version under tensorflow/cnn (train one: python -m trainer)")
    worktree = Path(tempfile.mkdtemp(prefix="gateway-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.baseline], check=True)
    log_dir = Path(tempfile.mkdtemp(prefix="gateway-versions-"))
    backend_port = free_port()
    urls = {"direct": f"http://127.0.0.1:{backend_port}"}
    if args.upstream == "tf-grpc":
        grpc_port = free_port()
        backend = ManagedProcess.python_module(
            "backend",
            "tf_serving.compat",
            ready_url=f"{urls['direct']}/v1/models/cnn",
            log_dir=log_dir,
            env={
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONPATH": pythonpath(ROOT),
                "MODEL_REPOSITORY": str(args.model_repository.resolve()),
                "TF_SERVING_REST_PORT": str(backend_port),
                "TF_SERVING_GRPC_PORT": str(grpc_port),
            },
            cwd=ROOT,
        )
        upstream_env = {"GATEWAY_TF_PROTOCOL": "grpc", "GATEWAY_TF_GRPC_TARGETS": f"127.0.0.1:{grpc_port}"}
    else:
        backend = ManagedProcess(
            name="backend",
            argv=[
                sys.executable,
                str(Path(__file__).resolve()),
                "--backend",
                str(backend_port),
                str(args.delay_ms / 1e3),
            ],
            ready_url=None,
            log_path=log_dir / "backend.log",
        )
        upstream_env = {"GATEWAY_TF_PROTOCOL": "rest", "GATEWAY_TF_REST_URLS": urls["direct"]}
    procs = [backend]
    for name, tree in (("baseline", worktree), ("current", ROOT)):
        port = free_port()
        urls[name] = f"http://127.0.0.1:{port}"
        procs.append(
            ManagedProcess.python_module(
                name,
                "gateway",
                ready_url=f"{urls[name]}/readyz",
                log_dir=log_dir,
                env={
                    "PYTHONPATH": pythonpath(tree),
                    "GATEWAY_PORT": str(port),
                    "GATEWAY_TORCH_URLS": urls["direct"],
                    **upstream_env,
                    **extra_env[name],
                },
                cwd=tree,
            )
        )
    try:
        backend.start()
        backend.wait_ready(180)
        ready_s = {}
        for p in procs[1:]:  # one gateway at a time, so each start is timed alone
            t0 = time.perf_counter()
            p.start()
            p.wait_ready(120, interval=0.05)
            ready_s[p.name] = time.perf_counter() - t0
        for side, env in extra_env.items():
            if env:
                print(f"# {side} environment: " + " ".join(f"{k}={v}" for k, v in env.items()))
        behind = f"backend delay {args.delay_ms} ms" if args.upstream == "standin" else "compat server over gRPC"
        print(f"# baseline {args.baseline}, {behind}, concurrency 1, {os.cpu_count()} CPUs")
        for name, seconds in ready_s.items():
            print(f"{name:10s} ready {seconds:.2f} s after start")
        pids = {p.name: p.proc.pid for p in procs if p.name != "backend" and p.proc}
        uvloop.run(measure(urls, pids, args.rounds, args.per_round, "tf" if args.upstream == "tf-grpc" else "torch"))
    finally:
        for p in reversed(procs):
            p.stop(grace=5)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
