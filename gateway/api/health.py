"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.responses import PlainTextResponse, Response

from gateway.api.deps import gateway

router = APIRouter(tags=["health"])


class NotReady(BaseModel):
    error: str
    backends: dict[str, bool]


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get(
    "/readyz",
    summary="Readiness: at least one backend has a replica in rotation",
    responses={503: {"model": NotReady, "description": "No backend has a replica in rotation."}},
)
async def readyz(request: Request) -> Response:
    gw = gateway(request)
    per_backend = {name: pool.ready for name, pool in gw.pools.items()}
    if gw.ready:
        return Response(orjson.dumps({"status": "ready", "backends": per_backend}), media_type="application/json")
    doc = {"error": "no backend is ready", "backends": per_backend}
    return Response(orjson.dumps(doc), status_code=503, media_type="application/json")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,  # documents text/plain; the answer carries the exposition format's version
)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(gateway(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
