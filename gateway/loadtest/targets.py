"""What can be load-tested (named targets resolved from configuration) and the clients that hit them.

A scenario names targets (`torch`, `tf`, `tf-grpc`, `gateway-torch`, `gateway-tf`), never addresses:
the addresses come from the same environment variables the gateway reads. A `gateway-*` target's
server-side sources (the backend's metrics, status, process) are not taken from those variables: the
runner asks the gateway under test which replicas it uses (gateway/loadtest/discovery.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

from gateway.loadtest.grpc_wire import decode_output_int64

TARGET_NAMES = ("torch", "tf", "tf-grpc", "gateway-torch", "gateway-tf")
PREDICT_PATH = "/v1/models/cnn:predict"
GRPC_METHOD = "/tensorflow.serving.PredictionService/Predict"


class TargetError(ValueError):
    """A scenario names a target that is not configured."""


@dataclass(frozen=True)
class Endpoints:
    """The configured addresses; defaults match DESIGN.md's local stack."""

    torch_urls: tuple[str, ...] = ("http://127.0.0.1:8080",)
    tf_rest_urls: tuple[str, ...] = ("http://127.0.0.1:8501",)
    tf_grpc_targets: tuple[str, ...] = ("127.0.0.1:8500",)
    gateway_url: str | None = None
    # Sent as a bearer token to gateway-* targets when the gateway has API keys (GATEWAY_API_KEYS).
    gateway_api_key: str | None = field(default=None, repr=False)
    # Which of the address lists were given (a variable, a flag, the gateway's own settings) rather
    # than defaulted: EXPLICIT_TORCH, EXPLICIT_TF_REST, EXPLICIT_TF_GRPC. Only given addresses may
    # stand in for a gateway's backends when the gateway cannot say which ones it uses.
    explicit: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, gateway_url: str | None = None) -> Endpoints:
        def csv(name: str, default: str) -> tuple[str, ...]:
            return tuple(p.strip().rstrip("/") for p in os.environ.get(name, default).split(",") if p.strip())

        return cls(
            torch_urls=csv("GATEWAY_TORCH_URLS", "http://127.0.0.1:8080"),
            tf_rest_urls=csv("GATEWAY_TF_REST_URLS", "http://127.0.0.1:8501"),
            tf_grpc_targets=csv("GATEWAY_TF_GRPC_TARGETS", "127.0.0.1:8500"),
            gateway_url=gateway_url.rstrip("/") if gateway_url else None,
            gateway_api_key=os.environ.get("LOADTEST_API_KEY") or None,
            explicit=frozenset(k for k, var in _ENV_VARS.items() if os.environ.get(var, "").strip()),
        )


EXPLICIT_TORCH, EXPLICIT_TF_REST, EXPLICIT_TF_GRPC = "torch", "tf_rest", "tf_grpc"
_ENV_VARS = {
    EXPLICIT_TORCH: "GATEWAY_TORCH_URLS",
    EXPLICIT_TF_REST: "GATEWAY_TF_REST_URLS",
    EXPLICIT_TF_GRPC: "GATEWAY_TF_GRPC_TARGETS",
}


@dataclass(frozen=True)
class Target:
    """One thing to measure: protocol, replica addresses, and where its server-side metrics live."""

    name: str
    protocol: str  # "rest" | "grpc"
    addresses: tuple[str, ...]  # base URLs (rest) or host:port (grpc)
    path: str = PREDICT_PATH
    backend: str = ""  # "torch" | "tf": which server does the work
    metrics_urls: tuple[str, ...] = ()
    metrics_kind: str = ""  # "torch" | "tf"
    metrics_entrypoint: str = ""  # TF Serving's `entrypoint` label: REST or GRPC
    status_urls: tuple[str, ...] = ()  # TF Serving's model status API of every replica (served version)
    ports: tuple[int, ...] = field(default_factory=tuple)  # backend listening ports, for resource use
    headers: str = field(default="", repr=False)  # extra request header lines ("Name: value\r\n"...)
    # Where the server-side sources above come from: "configuration" for direct targets; for gateway-*
    # targets "unresolved" until the runner asked the gateway, then "gateway", "given" or "none".
    server_source: str = "configuration"
    server_note: str = ""  # how the server-side sources were attributed, for the report
    # The version each replica serves to an unversioned predict, when known without asking the
    # replicas (a gateway's /v1/backends says it); None: ask status_urls.
    replica_versions: tuple[int | None, ...] | None = None
    docker_ok: bool = True  # resource use may fall back to a compose container found by service label


def _check_http(urls: tuple[str, ...], what: str) -> None:
    for url in urls:
        if urlsplit(url).scheme != "http":
            raise TargetError(f"{what} must be http:// URLs (REST targets), got {url!r}")


def resolve(name: str, ep: Endpoints) -> Target:
    """A target by name; `gateway-*` targets need a gateway URL."""
    if name in ("torch", "gateway-torch"):
        _check_http(ep.torch_urls, "torch URLs (GATEWAY_TORCH_URLS / --torch-url)")
    if name in ("tf", "gateway-tf"):
        _check_http(ep.tf_rest_urls, "TF REST URLs (GATEWAY_TF_REST_URLS / --tf-rest-url)")
    if name.startswith("gateway-") and ep.gateway_url:
        _check_http((ep.gateway_url,), "the gateway URL (--via-gateway)")
    torch_metrics = metrics_urls_for("torch", ep.torch_urls)
    tf_metrics = metrics_urls_for("tf", ep.tf_rest_urls)
    torch_ports = tuple(_port(u) for u in ep.torch_urls)
    tf_ports = tuple(_port(u) for u in ep.tf_rest_urls)
    if name == "torch":
        return Target(
            name,
            "rest",
            ep.torch_urls,
            backend="torch",
            metrics_urls=torch_metrics,
            metrics_kind="torch",
            status_urls=status_urls(ep.torch_urls),
            ports=torch_ports,
        )
    if name == "tf":
        return Target(
            name,
            "rest",
            ep.tf_rest_urls,
            backend="tf",
            metrics_urls=tf_metrics,
            metrics_kind="tf",
            metrics_entrypoint="REST",
            status_urls=status_urls(ep.tf_rest_urls),
            ports=tf_ports,
        )
    if name == "tf-grpc":
        return Target(
            name,
            "grpc",
            ep.tf_grpc_targets,
            path=GRPC_METHOD,
            backend="tf",
            metrics_urls=tf_metrics,
            metrics_kind="tf",
            metrics_entrypoint="GRPC",
            status_urls=status_urls(ep.tf_rest_urls),
            ports=tf_ports,
        )
    if name in ("gateway-torch", "gateway-tf"):
        if not ep.gateway_url:
            raise TargetError(f"target {name!r} needs a gateway URL (--via-gateway)")
        backend = name.split("-", 1)[1]
        # No server-side sources yet: which backend replicas this gateway uses is asked of the gateway
        # itself when the run starts (discovery.attribute_gateway_targets), never assumed from the
        # variables above, whose defaults may well name another stack's servers.
        return Target(
            name,
            "rest",
            (ep.gateway_url,),
            path=f"{PREDICT_PATH}?backend={backend}",
            backend=backend,
            metrics_kind=backend,
            headers=f"Authorization: Bearer {ep.gateway_api_key}\r\n" if ep.gateway_api_key else "",
            server_source="unresolved",
            docker_ok=False,
        )
    raise TargetError(f"unknown target {name!r}; known: {', '.join(TARGET_NAMES)}")


def metrics_urls_for(backend: str, rest_urls: tuple[str, ...]) -> tuple[str, ...]:
    """Where each REST replica of a backend exports its request-latency histogram."""
    path = "/metrics" if backend == "torch" else "/monitoring/prometheus/metrics"
    return tuple(f"{u}{path}" for u in rest_urls)


def status_urls(rest_urls: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{u}/v1/models/cnn" for u in rest_urls)


def _port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


# ---------------------------------------------------------------------------------------------------
# Outcomes. A request ends as ok (classes parsed) or as one error class; the engine counts both.

ERR_CONNECT = "connect"
ERR_TIMEOUT = "timeout"
ERR_PROTOCOL = "protocol"
# Answered 200 with well-formed predictions, but wrong: not one class per image sent, or (where the
# golden predictions of the served version are known) classes that disagree with them.
ERR_WRONG_BATCH = "wrong_batch"
ERR_WRONG_ANSWER = "wrong_answer"
ANSWERED_ERRORS = (ERR_WRONG_BATCH, ERR_WRONG_ANSWER)  # errors the backend itself answered


class RequestFailed(Exception):
    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


def parse_rest_classes(body: bytes) -> list[int]:
    doc = orjson.loads(body)
    preds = doc["predictions"]
    return [int(p["classes"]) if isinstance(p, dict) else int(p) for p in preds]


class HttpConnection:
    """One keep-alive HTTP/1.1 connection over asyncio streams, sending pre-encoded request heads.

    The open loop's REST client (its schedule runs on asyncio timers); the closed loop uses the
    cheaper raw-socket core in rawhttp.py. Either costs a fraction of httpx's per-request CPU, which
    is what decides how much load one generator core can offer (benchmarks/loadgen_vs_wrk.py).
    """

    def __init__(self, base_url: str, path: str, timeout_s: float, headers: str = ""):
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise TargetError(f"only http:// targets are supported by the raw client: {base_url}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.timeout_s = timeout_s
        base_path = parts.path.rstrip("/")
        self.head = (
            f"POST {base_path}{path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nAccept: application/json\r\n{headers}"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout_s
            )
        except TimeoutError as exc:
            raise RequestFailed(ERR_CONNECT, "connect timed out") from exc
        except OSError as exc:
            raise RequestFailed(ERR_CONNECT, str(exc)) from exc

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, body: bytes) -> tuple[float, list[int]]:
        """Send one POST; returns (send time, predicted classes). Raises RequestFailed."""
        reused = self.writer is not None
        if not reused:
            await self._connect()
        sent = time.perf_counter()
        try:
            # asyncio.timeout, not wait_for: no extra task per request on the hot path.
            async with asyncio.timeout(self.timeout_s):
                status, resp = await self._roundtrip(body)
        except TimeoutError as exc:
            self.close()
            raise RequestFailed(ERR_TIMEOUT, f"no answer within {self.timeout_s}s") from exc
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            self.close()
            if reused:
                # The server closed an idle keep-alive connection: retry once on a fresh one.
                return await self.request(body)
            raise RequestFailed(ERR_CONNECT, str(exc) or type(exc).__name__) from exc
        if status != 200:
            raise RequestFailed(f"http_{status}", resp[:200].decode(errors="replace"))
        try:
            return sent, parse_rest_classes(resp)
        except (ValueError, KeyError, TypeError) as exc:
            raise RequestFailed(ERR_PROTOCOL, f"unexpected body: {resp[:120]!r}") from exc

    async def _roundtrip(self, body: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(self.head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])  # "HTTP/1.1 200 ..."
        lower = head.lower()
        pos = lower.find(b"\r\ncontent-length:")
        length = int(lower[pos + 17 : lower.index(b"\r\n", pos + 17)]) if pos >= 0 else -1
        chunked = length < 0 and b"chunked" in lower
        close = b"\r\nconnection: close" in lower
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size + 2))
            resp = b"".join(p[:-2] for p in parts)
        elif length >= 0:
            resp = await self.reader.readexactly(length)
        else:
            resp = await self.reader.read()
            close = True
        if close:
            self.close()
        return status, resp


class GrpcClient:
    """grpc.aio channel(s) sending pre-serialized PredictRequests (HTTP/2 multiplexes concurrent calls)."""

    def __init__(self, addresses: tuple[str, ...], timeout_s: float):
        import grpc

        self._grpc = grpc
        self.timeout_s = timeout_s
        self.channels = [
            grpc.aio.insecure_channel(
                a,
                options=[
                    ("grpc.max_receive_message_length", 64 << 20),
                    ("grpc.max_send_message_length", 64 << 20),
                ],
            )
            for a in addresses
        ]
        # No serializer: the request bytes were encoded before the run; the reply stays bytes too.
        self.calls = [ch.unary_unary(GRPC_METHOD) for ch in self.channels]
        self._next = 0

    async def request(self, body: bytes) -> tuple[float, list[int]]:
        call = self.calls[self._next % len(self.calls)]
        self._next += 1
        sent = time.perf_counter()
        try:
            resp = await call(body, timeout=self.timeout_s)
        except self._grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == self._grpc.StatusCode.DEADLINE_EXCEEDED:
                raise RequestFailed(ERR_TIMEOUT, exc.details() or "") from exc
            if code == self._grpc.StatusCode.UNAVAILABLE:
                raise RequestFailed(ERR_CONNECT, exc.details() or "") from exc
            raise RequestFailed(f"grpc_{code.name}", exc.details() or "") from exc
        try:
            classes = decode_output_int64(resp, "classes")
        except ValueError as exc:
            raise RequestFailed(ERR_PROTOCOL, str(exc)) from exc
        if classes is None:
            raise RequestFailed(ERR_PROTOCOL, "PredictResponse has no `classes` output")
        return sent, classes

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()
