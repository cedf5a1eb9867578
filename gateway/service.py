"""The gateway's runtime state: one BackendPool per backend, built from settings, with its lifecycle
(transports opened at start-up, the active health loop, everything closed at shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.errors import InvalidInput
from gateway.metrics import Metrics
from gateway.settings import BACKENDS, Backend, Settings
from gateway.upstreams.balancer import Balancer, Replica
from gateway.upstreams.grpc import GrpcTransport
from gateway.upstreams.pool import BackendPool
from gateway.upstreams.rest import RestTransport, Wire

log = logging.getLogger("gateway")


class Gateway:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.pools: dict[str, BackendPool] = {
            "torch": self._pool("torch", settings.torch_urls, self._rest(settings.torch_wire)),
            "tf": (
                self._pool(
                    "tf",
                    settings.tf_grpc_targets,
                    GrpcTransport(
                        timeout_s=settings.timeout_s,
                        health_timeout_s=settings.health_timeout_s,
                        connect_timeout_s=settings.connect_timeout_s,
                        client=settings.tf_grpc_client,
                    ),
                )
                if settings.tf_protocol == "grpc"
                else self._pool("tf", settings.tf_rest_urls, self._rest("json"))  # all TF Serving's REST speaks
            ),
        }
        self._health_task: asyncio.Task[None] | None = None
        # /v1/classify's image decodes at once; the rest wait their turn.
        self.decode_slots = asyncio.Semaphore(settings.max_concurrent_decodes)

    def _rest(self, wire: Wire) -> RestTransport:
        s = self.settings
        return RestTransport(
            timeout_s=s.timeout_s,
            connect_timeout_s=s.connect_timeout_s,
            health_timeout_s=s.health_timeout_s,
            max_connections=s.max_connections,
            wire=wire,
        )

    def _pool(self, name: str, addresses: list[str], transport: RestTransport | GrpcTransport) -> BackendPool:
        replicas = [Replica(name, a) for a in addresses]
        return BackendPool(
            name,
            transport,
            replicas,
            Balancer(replicas, self.settings.balancer),
            eject_cooldown_s=self.settings.eject_cooldown_s,
            retry=self.settings.retry_on_connection_error,
            on_upstream_error=self.metrics.upstream_error,
        )

    def pool(self, backend: str | None) -> BackendPool:
        name = backend or self.settings.default_backend
        pool = self.pools.get(name)
        if pool is None:
            raise InvalidInput(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
        return pool

    @property
    def ready(self) -> bool:
        return any(p.ready for p in self.pools.values())

    async def start(self) -> None:
        for pool in self.pools.values():
            await pool.transport.start()
        # One probe round before serving so /readyz and /v1/backends are right from the first call.
        await self.probe_all()
        self._health_task = asyncio.create_task(self._health_loop(), name="gateway-health")

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        for pool in self.pools.values():
            await pool.transport.close()

    async def probe_all(self) -> None:
        await asyncio.gather(*(p.probe_all(self.settings.model_name) for p in self.pools.values()))
        for pool in self.pools.values():
            for r in pool.replicas:
                self.metrics.replica_up.labels(pool.name, r.address).set(1 if r.available else 0)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            try:
                await self.probe_all()
            except Exception:  # a probe bug must not end the loop (that would freeze health forever)
                log.exception("health probe round failed")


def backend_choice(query: str | None, header: str | None) -> Backend | None:
    """`?backend=` over `X-Backend`, else None (the default). Both are checked when both are sent: a
    wrong header is the client's mistake even where the query overrides it."""
    # An empty value (`?backend=`, `X-Backend:`) is a mistake too, not a request for the default.
    if query is not None and query not in BACKENDS:
        raise InvalidInput(f"unknown backend {query!r} in ?backend=: choose one of {', '.join(BACKENDS)}")
    if header is not None and header not in BACKENDS:
        header = header.strip(" \t")  # whitespace around a header value is not part of it (RFC 9110 5.5)
        if header not in BACKENDS:
            raise InvalidInput(f"unknown backend {header!r} in X-Backend: choose one of {', '.join(BACKENDS)}")
    return query or header or None  # narrowed by the checks above: one of BACKENDS, or None
