"""A tiny real HTTP server speaking the TF Serving predict API with a known latency (for engine tests).

`classes` is read back from the image itself (round(pixel[0,0,0] * 10)), so the tests' synthetic
images carry their labels and accuracy checks are real. Options: fixed delay (asyncio.sleep, so
requests overlap), one whole-server stall (time.sleep on the loop: nothing is served meanwhile),
wrong answers, an error status, chunked answers, closing keep-alive connections after a number of
answers (silently, or announced with `Connection: close`), a Prometheus histogram like
torch_service's (optionally counting only every Nth predict, as a server that is not the one under
load would), and the model version its status API reports.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson

HIST = "torch_service_request_latency_seconds"


class State:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.count = 0  # predicts answered
        self.metric_count = 0  # predicts the Prometheus histogram has seen
        self.lat_sum = 0.0
        self.stalled = False


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, st: State) -> None:
    answered = 0
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, path, _ = lines[0].split(b" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            t0 = time.perf_counter()
            if path.startswith(b"/metrics"):
                text = (
                    f'# TYPE {HIST} histogram\n{HIST}_bucket{{le="+Inf"}} {st.metric_count}\n'
                    f"{HIST}_count {st.metric_count}\n{HIST}_sum {st.lat_sum}\n"
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                    + str(len(text)).encode()
                    + b"\r\n\r\n"
                    + text
                )
                await writer.drain()
                continue
            if method == b"GET":
                out = b'{"model_version_status":[{"version":"%d","state":"AVAILABLE"}]}' % st.args.version
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(out)).encode()
                    + b"\r\n\r\n"
                    + out
                )
                await writer.drain()
                continue
            st.count += 1
            if st.args.stall_after and st.count == st.args.stall_after and not st.stalled:
                st.stalled = True
                time.sleep(st.args.stall_s)  # blocks the whole server, as a GC pause or a hiccup would
            if st.args.delay_ms:
                await asyncio.sleep(st.args.delay_ms / 1000.0)
            if st.args.status != 200:
                out = b'{"error": "injected"}'
                status = f"{st.args.status} Error".encode()
            else:
                doc = orjson.loads(body)
                preds = []
                for inst in doc["instances"]:
                    cls = round(inst[0][0][0] * 10) + st.args.shift
                    preds.append({"probabilities": [0.1] * 10, "classes": cls % 10})
                out = orjson.dumps({"predictions": preds})
                status = b"200 OK"
            if st.count % st.args.count_every == 0:
                st.metric_count += 1
                st.lat_sum += time.perf_counter() - t0
            answered += 1
            closing = bool(st.args.close_after) and answered >= st.args.close_after
            head = b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
            if closing and st.args.close_header:
                head += b"Connection: close\r\n"
            if st.args.chunked:
                # Two chunks (the second with an extension) and an empty trailer section.
                half = len(out) // 2
                a, b = out[:half], out[half:]
                writer.write(
                    head
                    + b"Transfer-Encoding: chunked\r\n\r\n"
                    + b"%x\r\n%s\r\n%x;ext=1\r\n%s\r\n0\r\n\r\n" % (len(a), a, len(b), b)
                )
            else:
                writer.write(head + b"Content-Length: " + str(len(out)).encode() + b"\r\n\r\n" + out)
            await writer.drain()
            if closing:
                return  # a keep-alive connection closed by the server (finally: closes it)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main_async(args: argparse.Namespace) -> None:
    st = State(args)
    server = await asyncio.start_server(lambda r, w: handle(r, w, st), "127.0.0.1", args.port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--stall-after", type=int, default=0, help="stall on this request number (1-based)")
    parser.add_argument("--stall-s", type=float, default=1.0)
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--shift", type=int, default=0, help="add this to every class (wrong answers)")
    parser.add_argument("--chunked", action="store_true", help="answer predicts with chunked transfer coding")
    parser.add_argument("--close-after", type=int, default=0, help="close each connection after N predict answers")
    parser.add_argument("--close-header", action="store_true", help="announce that close with Connection: close")
    parser.add_argument("--version", type=int, default=1, help="the version the status API says is AVAILABLE")
    parser.add_argument("--count-every", type=int, default=1, help="the metric counts only every Nth predict")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
