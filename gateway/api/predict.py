"""`POST /v1/models/{name}[/versions/{n}]:predict`: TF Serving's predict, routed to one backend.

`serve_predict` is the whole endpoint. Requests normally reach it through the pure-ASGI fast path
(gateway/fastpath.py), which skips FastAPI's routing, dependency solving and Response objects; the
FastAPI routes below call the same function, so the OpenAPI docs describe exactly what is served.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.deps import check_model, gateway, log_info, parse_body
from gateway.errors import BadGateway, GatewayError
from gateway.service import Gateway, backend_choice
from serving_core.openapi import errors, json_body, predict_example, ref

router = APIRouter(tags=["predict"])

# What uvicorn refuses in a header value: controls, CR and LF (a backend's version becomes X-Model-Version).
_BAD_HEADER_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

_DOC = (
    "TF Serving REST predict body (`instances` rows or `inputs` columns, images [N, 28, 28, 1]). "
    "Backend from `?backend=torch|tf` or header `X-Backend`, else GATEWAY_DEFAULT_BACKEND. "
    "Answer headers: X-Backend, X-Model-Version, X-Upstream-Latency-Ms, X-Request-ID."
)


async def serve_predict(
    gw: Gateway,
    info: dict[str, Any],
    model: str,
    version: str | None,
    query_backend: str | None,
    header_backend: str | None,
    body: bytes,
) -> tuple[bytes, dict[str, str]]:
    """Validate, forward to the chosen backend, answer (JSON body, headers). Raises domain errors."""
    info["endpoint"] = "predict"
    pool = gw.pool(backend_choice(query_backend, header_backend))
    info["backend"] = pool.name
    check_model(model, version)
    req = await parse_body(body, gw.settings.max_batch_size)
    # A JSON-wire REST upstream gets the client's own bytes (already validated); the binary wire and
    # gRPC get the parsed tensor.
    try:
        result = await pool.predict(model, version, req, body if pool.transport.wire == "json" else None)
    except GatewayError as exc:
        info["replica"] = exc.replica  # which replica timed out or failed, for the access log
        raise
    info["replica"] = result.replica
    gw.metrics.observe_upstream(pool.name, result.latency_ms / 1000.0)
    headers = {
        "x-backend": pool.name,
        "x-upstream-latency-ms": f"{result.latency_ms:.3f}",
        "x-replica": result.replica,
    }
    if result.version is not None:
        if _BAD_HEADER_VALUE.search(result.version):
            # It would split the answer's head; uvicorn refuses it with a bare text 500, not our JSON error.
            raise BadGateway(f"upstream {result.replica} answered a model version that is no header value")
        headers["x-model-version"] = result.version
    return result.json_body(), headers


async def _predict(request: Request, model: str, version: str | None) -> Response:
    content, headers = await serve_predict(
        gateway(request),
        log_info(request),
        model,
        version,
        request.query_params.get("backend"),
        request.headers.get("x-backend"),
        await request.body(),
    )
    return Response(content, media_type="application/json", headers=headers)


# What the docs say about both routes (serving_core.openapi; the body schemas are built from settings).
_ANSWER_HEADERS = {
    "X-Backend": {"description": "The backend that answered: torch or tf.", "schema": {"type": "string"}},
    "X-Model-Version": {"description": "The model version that answered.", "schema": {"type": "string"}},
    "X-Upstream-Latency-Ms": {"description": "The backend call's own latency.", "schema": {"type": "string"}},
    "X-Replica": {"description": "The replica that answered.", "schema": {"type": "string"}},
    "X-Request-ID": {"description": "The client's X-Request-ID, or one made here.", "schema": {"type": "string"}},
}
_PARAMETERS = [
    {"name": "backend", "in": "query", "required": False, "schema": {"type": "string", "enum": ["torch", "tf"]}},
    {"name": "X-Backend", "in": "header", "required": False, "schema": {"type": "string", "enum": ["torch", "tf"]}},
]
_OPENAPI: dict[str, Any] = {
    "description": _DOC,
    "responses": {
        200: {
            "description": "TF Serving's predict answer, whichever backend served it.",
            "content": {"application/json": {"schema": ref("PredictResponse")}},
            "headers": _ANSWER_HEADERS,
        },
        **errors(
            400,
            401,
            404,
            413,
            502,
            503,
            504,
            descriptions={
                400: "Invalid body (JSON, keys, shape, numbers, batch size), version or backend name; a backend's "
                "own 4xx is passed through with its message.",
            },
        ),
    },
    "openapi_extra": {
        **json_body(ref("PredictRequest"), "TF Serving REST predict body.", predict_example()),
        "parameters": _PARAMETERS,
    },
}


@router.post("/v1/models/{model}:predict", summary="Predict (latest version)", **_OPENAPI)
async def predict(request: Request, model: str) -> Response:
    return await _predict(request, model, None)


@router.post("/v1/models/{model}/versions/{version}:predict", summary="Predict (one version)", **_OPENAPI)
async def predict_version(request: Request, model: str, version: str) -> Response:
    return await _predict(request, model, version)
