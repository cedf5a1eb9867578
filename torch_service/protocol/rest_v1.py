"""TensorFlow Serving's REST API (g3doc/api_rest.md): model status, metadata, and `:predict`.

Parsing and rendering live in `serving_core.tfs_rest`, so this server and the TF-Serving-compatible
one accept, reject and answer byte for byte alike.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serving_core import contract, openapi
from serving_core.errors import InvalidArgument, NotFound
from serving_core.tfs_rest import (
    model_metadata_json,
    model_status_json,
    parse_model_path,
    parse_predict_body,
    predict_response,
    unsupported_method,
)
from torch_service.protocol.common import errors, json_response, parse, runtime

router = APIRouter(tags=["TensorFlow Serving REST API (v1)"])

_NAME = r"[A-Za-z0-9_.-]{1,128}(/versions/[1-9][0-9]{0,17})?"


def _model_path_param(pattern: str, description: str) -> dict[str, Any]:
    # Declared here: the handlers read the path themselves (TF Serving's URL grammar, parse_model_path).
    schema = {"type": "string", "pattern": pattern}
    return {
        "parameters": [
            {"name": "model_path", "in": "path", "required": True, "description": description, "schema": schema}
        ]
    }


_PREDICT_DOC = {
    **openapi.json_body(
        openapi.ref("PredictRequest"),
        'Row format `{"instances": [...]}` or columnar `{"inputs": ...}`; each instance is a [28, 28, 1] image.',
        openapi.predict_example(),
    ),
    **_model_path_param(f"^{_NAME}:predict$", "`cnn:predict` or `cnn/versions/N:predict`"),
}
_PREDICT_RESPONSES = {
    200: {
        "description": "TF Serving's predict answer",
        "content": {"application/json": {"schema": openapi.ref("PredictResponse")}},
    },
    **errors(400, 404, 413, 503, 504),
}


@router.get(
    "/v1/models/{model_path:path}",
    summary="Model status (`/v1/models/cnn[/versions/N]`) or metadata (`.../metadata`)",
    responses=errors(400, 404),
    openapi_extra=_model_path_param(f"^{_NAME}(/metadata)?$", "`cnn`, `cnn/versions/N`, or either with `/metadata`"),
)
async def v1_get(request: Request) -> Response:
    rt = runtime(request)
    mp = parse_model_path(request.url.path)
    if mp.verb is not None:
        raise NotFound(f"Malformed request: GET {request.url.path} (use POST for :{mp.verb})")
    if mp.label is not None:
        raise InvalidArgument(f"Unrecognized servable version label: {mp.label}")
    if mp.name != rt.settings.model_name:
        raise NotFound(f"Could not find any versions of model {mp.name}")
    if mp.metadata:
        version = rt.manager.resolve(mp.version)
        sigs = {contract.SIGNATURE_NAME: contract.signature_def_json()}
        return json_response(model_metadata_json(mp.name, version, sigs))
    return json_response(model_status_json(rt.manager.status(mp.version)))


@router.post(
    "/v1/models/{model_path:path}",
    summary="Predict: `/v1/models/cnn[/versions/N]:predict`",
    openapi_extra=_PREDICT_DOC,
    responses=_PREDICT_RESPONSES,
)
async def v1_post(request: Request) -> Response:
    rt = runtime(request)
    path = request.scope["path"]
    mp = parse_model_path(path)
    if mp.verb is None:
        raise NotFound(f"Malformed request: POST {path}")
    if mp.label is not None:
        raise InvalidArgument(f"Unrecognized servable version label: {mp.label}")
    rt.check_name(mp.name, mp.version)
    rt.manager.resolve(mp.version)  # unknown version: 404 before the body is even parsed, as TF Serving does
    if mp.verb != "predict":
        raise InvalidArgument(unsupported_method(mp.verb))  # as TF Serving answers it for this signature
    body = await request.body()
    req = await parse(body, parse_predict_body, max_batch_size=rt.sched.request_limit, value_range=contract.INPUT_RANGE)
    _, outputs = await rt.predict(mp.version, req.images)
    return Response(predict_response(req.format, outputs), media_type="application/json")


# Served by a plain Starlette route placed before the documented one (see app._add_hot_paths).
HOT_ROUTES = [Route("/v1/models/{model_path:path}", v1_post, methods=["POST"])]
