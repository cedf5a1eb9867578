"""`POST /v1/models/{name}[/versions/{n}]:predict`: TF Serving's predict, routed to one backend."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.deps import check_model, chosen_pool, gateway, log_info, parse_body

router = APIRouter(tags=["predict"])

_DOC = (
    "TF Serving REST predict body (`instances` rows or `inputs` columns, images [N, 28, 28, 1]). "
    "Backend from `?backend=torch|tf` or header `X-Backend`, else GATEWAY_DEFAULT_BACKEND. "
    "Answer headers: X-Backend, X-Model-Version, X-Upstream-Latency-Ms, X-Request-ID."
)


async def _predict(request: Request, model: str, version: str | None) -> Response:
    info = log_info(request)
    info["endpoint"] = "predict"
    pool = chosen_pool(request)
    info["backend"] = pool.name
    check_model(model, version)
    gw = gateway(request)
    body = await request.body()
    req = await parse_body(body, gw.settings.max_batch_size)
    # REST upstreams get the client's own bytes (already validated); gRPC gets the parsed tensor.
    result = await pool.predict(model, version, req, body if pool.protocol == "rest" else None)
    info["replica"] = result.replica
    gw.metrics.upstream_latency.labels(pool.name).observe(result.latency_ms / 1000.0)
    headers = {
        "x-backend": pool.name,
        "x-upstream-latency-ms": f"{result.latency_ms:.3f}",
        "x-replica": result.replica,
    }
    if result.version is not None:
        headers["x-model-version"] = result.version
    return Response(result.json_body(), media_type="application/json", headers=headers)


@router.post("/v1/models/{model}:predict", summary="Predict (latest version)", description=_DOC)
async def predict(request: Request, model: str) -> Response:
    return await _predict(request, model, None)


@router.post("/v1/models/{model}/versions/{version}:predict", summary="Predict (one version)", description=_DOC)
async def predict_version(request: Request, model: str, version: str) -> Response:
    return await _predict(request, model, version)
