"""`GET /v1/backends`: every backend and replica with health, loaded version and recent latency."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.deps import gateway, log_info
from serving_core.openapi import errors

router = APIRouter(tags=["backends"])


@router.get("/v1/backends", summary="Backends, replicas, health and recent latency", responses=errors(401))
async def backends(request: Request) -> Response:
    log_info(request)["endpoint"] = "backends"
    gw = gateway(request)
    doc = {
        "default_backend": gw.settings.default_backend,
        "model": gw.settings.model_name,
        "backends": {name: pool.snapshot() for name, pool in gw.pools.items()},
    }
    return Response(orjson.dumps(doc), media_type="application/json")
