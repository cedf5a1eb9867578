"""The gateway's memory under concurrent large /v1/classify uploads.

An RGBA PNG of 4000x4000 pixels with a digit-like stroke compresses to a few hundred KB, well under
GATEWAY_MAX_IMAGE_BYTES and GATEWAY_MAX_IMAGE_PIXELS, yet decodes to 64 MB. This starts a gateway
(its backends unreachable: the picture is decoded and preprocessed before any backend is called, so
the answers are 503s and the memory is the decode's), sends `--concurrency` such uploads at once, and
prints the gateway's resident memory before and at its peak (sampled every 20 ms).

    python benchmarks/classify_memory.py [--concurrency 8] [--side 4000] [--decodes 4]

`--decodes` sets GATEWAY_MAX_CONCURRENT_DECODES for the gateway it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.process import ManagedProcess, free_port  # noqa: E402


def picture(side: int) -> bytes:
    """A dark stroke (a "1") on light paper, RGBA with a transparent top margin: compresses to a few
    hundred KB, decodes to 4 bytes a pixel."""
    arr = np.full((side, side, 4), 235, dtype=np.uint8)
    s = side // 10
    arr[2 * s : 8 * s, 4 * s : 5 * s, :3] = 10
    arr[:, :, 3] = 255
    arr[: s // 2, :, 3] = 0
    buf = io.BytesIO()
    Image.fromarray(arr, "RGBA").save(buf, "PNG")
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--side", type=int, default=4000)
    ap.add_argument("--decodes", type=int, default=4, help="GATEWAY_MAX_CONCURRENT_DECODES")
    args = ap.parse_args()

    data = picture(args.side)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        gw = ManagedProcess.python_module(
            "gateway",
            "gateway",
            ready_url=f"http://127.0.0.1:{port}/healthz",
            log_dir=Path(tmp),
            env={
                "GATEWAY_PORT": str(port),
                "GATEWAY_TORCH_URLS": f"http://127.0.0.1:{free_port()}",
                "GATEWAY_TF_PROTOCOL": "rest",
                "GATEWAY_TF_REST_URLS": f"http://127.0.0.1:{free_port()}",
                "GATEWAY_MAX_CONCURRENT_DECODES": str(args.decodes),
                "GATEWAY_ACCESS_LOG": "false",
            },
            cwd=ROOT,
        ).start()
        try:
            gw.wait_ready(120)
            assert gw.proc is not None
            proc = psutil.Process(gw.proc.pid)
            base = proc.memory_info().rss
            peak = [base]
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], proc.memory_info().rss)
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()

            async def upload() -> list[int]:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
                    answers = await asyncio.gather(
                        *(
                            client.post("/v1/classify", content=data, headers={"content-type": "image/png"})
                            for _ in range(args.concurrency)
                        )
                    )
                return [r.status_code for r in answers]

            start = time.perf_counter()
            statuses = asyncio.run(upload())
            elapsed = time.perf_counter() - start
            done.set()
            sampler.join()
        finally:
            gw.stop()
    mib = 2**20
    print(
        f"{args.concurrency} uploads of a {args.side}x{args.side} RGBA PNG ({len(data) / 1024:.0f} KB), "
        f"{args.decodes} decodes at once: answers {sorted(set(statuses))} in {elapsed:.1f} s; gateway RSS "
        f"{base / mib:.0f} MiB before, {peak[0] / mib:.0f} MiB at peak (+{(peak[0] - base) / mib:.0f} MiB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
