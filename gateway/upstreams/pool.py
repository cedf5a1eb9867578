"""A backend as the gateway sees it: replicas, a balancer, and the retry/ejection rules around a call.

Transports (rest.py, grpc.py) only say how to send one call to one replica and classify failures:
`ReplicaDown` (connection-level: eject, retry elsewhere), `UpstreamTimeout`, or an answered error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson

from gateway.errors import BadGateway, GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.upstreams.balancer import Balancer, Replica
from gateway.validation import PredictRequest, RequestFormat
from serving_core.errors import ServingError
from serving_core.tfs_rest import parse_predict_response, predict_response


class ReplicaDown(Exception):
    """The replica could not be reached or dropped the connection (safe to retry: predict is idempotent)."""


@dataclass(slots=True)
class PredictResult:
    """One upstream answer. REST keeps the answer's bytes (passed through untouched); gRPC keeps
    decoded arrays. Each side is derived from the other only when a caller needs it."""

    body: bytes | None  # TF-Serving REST JSON
    version: str | None
    latency_ms: float
    replica: str
    fmt: RequestFormat
    tensors: dict[str, np.ndarray] | None = None

    def outputs(self) -> dict[str, np.ndarray]:
        if self.tensors is None:
            try:
                self.tensors = parse_predict_response(orjson.loads(self.body or b"{}"))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, ServingError) as exc:
                raise BadGateway(f"upstream {self.replica} answered an unexpected body: {exc}") from None
        return self.tensors

    def json_body(self) -> bytes:
        if self.body is None:
            try:
                self.body = predict_response(self.fmt, self.outputs())
            except KeyError as exc:
                raise BadGateway(f"upstream {self.replica} answered without output {exc}") from None
        return self.body


class Transport(Protocol):
    protocol: str  # "rest" or "grpc"
    wire: str  # what a predict body is: "json", "binary" (OIP binary tensors) or "tensor_proto"

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def predict(
        self, replica: Replica, model: str, version: str | None, inp: PredictRequest, raw_body: bytes | None
    ) -> PredictResult: ...
    async def probe(self, replica: Replica, model: str) -> int | None: ...


class BackendPool:
    """One backend (torch or tf): picks a replica, sends, ejects on transport failure, retries once."""

    def __init__(
        self,
        name: str,
        transport: Transport,
        replicas: list[Replica],
        balancer: Balancer,
        *,
        eject_cooldown_s: float,
        retry: bool,
        on_upstream_error: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.transport = transport
        self.replicas = replicas
        self.balancer = balancer
        self.eject_cooldown_s = eject_cooldown_s
        self.retry = retry
        self._on_error = on_upstream_error or (lambda backend, replica, kind: None)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def protocol(self) -> str:
        return self.transport.protocol

    @property
    def ready(self) -> bool:
        return any(r.healthy and not r.ejected for r in self.replicas)

    async def predict(
        self, model: str, version: str | None, inp: PredictRequest, raw_body: bytes | None
    ) -> PredictResult:
        return await self._call(lambda r: self.transport.predict(r, model, version, inp, raw_body))

    async def _call(self, send: Callable[[Replica], Awaitable[PredictResult]]) -> PredictResult:
        tried: list[Replica] = []
        attempts = 2 if self.retry else 1
        last_error = "no replica configured"
        if self._loop is None:
            self._loop = asyncio.get_running_loop()  # once: on Python 3.11 each lookup costs a getpid()
        task = asyncio.current_task(self._loop)
        for attempt in range(attempts):
            replica = self.balancer.pick(tried)
            if replica is None:
                break
            tried.append(replica)
            replica.outstanding += 1
            ejection = replica.ejection
            start = time.perf_counter()
            if task is not None:  # always, from a request (a call outside any task is just never moved)
                replica.inflight[task] = attempts - attempt - 1  # tries left after this one
            try:
                result = await send(replica)
            except asyncio.CancelledError:
                if task is None or task not in replica.moved:
                    raise
                # Moved by _move_off (the replica stopped answering probes) and not cancelled otherwise:
                # sent again on another replica, as a connection failure would be.
                replica.moved.discard(task)
                if task.uncancel() > 0:
                    raise
                last_error = f"{replica.address}: stopped answering (health probe failed)"
                self._on_error(self.name, replica.address, "unavailable")
                continue
            except ReplicaDown as exc:
                last_error = f"{replica.address}: {exc}"
                replica.record_failure(str(exc), self.eject_cooldown_s)
                self._on_error(self.name, replica.address, "unavailable")
                continue
            except UpstreamTimeout as exc:
                # A stuck replica is ejected too, but the call is not repeated: it already used its budget.
                replica.record_failure("timeout", self.eject_cooldown_s)
                self._on_error(self.name, replica.address, "timeout")
                exc.replica = replica.address
                raise
            except Exception as exc:
                if isinstance(exc, GatewayError):
                    exc.replica = replica.address
                # A 4xx passed through is the client's mistake (an unknown version, a bad signature), not the
                # backend's: counted as an answered call, not in gateway_upstream_errors_total.
                if isinstance(exc, UpstreamError) and exc.status < 500:
                    replica.record_success((time.perf_counter() - start) * 1000.0, ejection)
                else:
                    self._on_error(self.name, replica.address, "error")
                raise
            finally:
                replica.outstanding -= 1
                if task is not None:
                    replica.inflight.pop(task, None)
                    replica.moved.discard(task)
            latency_ms = (time.perf_counter() - start) * 1000.0
            replica.record_success(latency_ms, ejection)
            result.latency_ms = latency_ms
            if result.version is None and replica.loaded_version is not None:
                result.version = str(replica.loaded_version)
            return result
        raise UpstreamUnavailable(f"{self.name} backend unavailable ({last_error})")

    async def probe_all(self, model: str) -> None:
        await asyncio.gather(*(self._probe(r, model) for r in self.replicas))

    async def _probe(self, replica: Replica, model: str) -> None:
        try:
            version = await self.transport.probe(replica, model)
        except Exception as exc:  # any failure means "not ready"; the message is shown in /v1/backends
            replica.record_probe(False, None, f"probe: {exc}" if str(exc) else f"probe: {type(exc).__name__}")
            self._move_off(replica)
        else:
            replica.record_probe(version is not None, version, None if version else "probe: no AVAILABLE version")

    def _move_off(self, replica: Replica) -> None:
        """A replica that stopped answering its probe (frozen, overloaded, its host gone quiet) holds calls
        that would each wait out the whole time limit and end as 504s, while another replica could answer
        them: they are cancelled there and sent again elsewhere (predict is idempotent; the new try has its
        own time limit), if another replica is in rotation, retries are on and the call has a try left.
        Otherwise they keep waiting: it may yet answer them."""
        if not replica.inflight or not self.retry:
            return
        if not any(r.available for r in self.replicas if r is not replica):
            return
        for task, tries_left in list(replica.inflight.items()):
            # A call on its last try stays: moved, it would end as a 503 at once, where waiting may yet
            # get it an answer within its time limit.
            if tries_left > 0 and task not in replica.moved:
                replica.moved.add(task)
                task.cancel()

    def snapshot(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "wire": self.transport.wire,
            "balancer": self.balancer.policy,
            "ready": self.ready,
            "replicas": [r.snapshot() for r in self.replicas],
        }
