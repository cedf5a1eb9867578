"""Open Inference Protocol (KServe v2) over REST: health, model metadata/readiness, and `infer` with
JSON tensors or the binary tensor data extension (bodies parsed and rendered in serving_core.oip).

Errors answer `{"error": "..."}` as the protocol specifies, with the same status mapping as v1.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serving_core import contract, openapi
from serving_core.errors import NotFound, Unavailable
from serving_core.oip import (
    BINARY_CONTENT_TYPE,
    EXTENSIONS,
    HEADER_LENGTH,
    OUTPUT_TENSORS,
    infer_response,
    parse_infer_body,
)
from serving_core.tfs_rest import parse_version
from torch_service.protocol.common import errors, json_response, parse, runtime

router = APIRouter(tags=["Open Inference Protocol (KServe v2)"])

PLATFORM = "pytorch_torchscript"

_TENSOR = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "enum": [contract.INPUT_NAME]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": ["FP32"]},
        "data": {"type": "array"},
        "parameters": {"type": "object"},
    },
    "required": ["name", "shape", "datatype"],
}
_INFER_DOC = openapi.json_body(
    {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": _TENSOR},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string", "enum": list(contract.OUTPUT_NAMES)}},
                    "required": ["name"],
                },
            },
        },
        "required": ["inputs"],
    },
    "One input tensor `images` (FP32, shape [N, 28, 28, 1]); `data` flat in row-major order or nested. "
    "Binary tensor data extension: the JSON object, then the tensor's little-endian bytes, with the JSON's "
    "length in the `Inference-Header-Content-Length` header and the byte count in the input's "
    "`parameters.binary_data_size`; `parameters.binary_data` on an output (or `binary_data_output` on the "
    "request) answers it in binary the same way.",
    {
        "id": "42",
        "inputs": [{"name": "images", "shape": [1, 28, 28, 1], "datatype": "FP32", "data": [0.0] * 784}],
        "outputs": [{"name": "probabilities"}, {"name": "classes"}],
    },
)


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    return parse_version(text)


# ---------------------------------------------------------------------------------------- routes
@router.get("/v2", summary="Server metadata")
async def server_metadata() -> Response:
    from torch_service import __version__

    return json_response({"name": "torch_service", "version": __version__, "extensions": EXTENSIONS})


@router.get("/v2/health/live", summary="Liveness: the process answers")
async def live() -> Response:
    return json_response({"live": True})


@router.get(
    "/v2/health/ready",
    summary="Readiness: at least one model version is loaded (503 until then)",
    responses=errors(503),
)
async def ready(request: Request) -> Response:
    runtime(request).manager.require_ready()
    return json_response({"ready": True})


def _model_ready(request: Request, name: str, version: str | None) -> Response:
    rt = runtime(request)
    v = _version(version)
    rt.check_name(name, v)
    if v is not None:
        rt.manager.status(v)  # a version the repository does not have is not "not ready" but absent: 404
    try:
        rt.manager.resolve(v)
    except NotFound as exc:
        raise Unavailable(exc.message) from None
    return json_response({"name": name, "ready": True})


@router.get("/v2/models/{name}/ready", summary="Model readiness", responses=errors(404, 503))
async def model_ready(request: Request, name: str) -> Response:
    return _model_ready(request, name, None)


@router.get(
    "/v2/models/{name}/versions/{version}/ready", summary="Model version readiness", responses=errors(400, 404, 503)
)
async def model_version_ready(request: Request, name: str, version: str) -> Response:
    return _model_ready(request, name, version)


def _metadata(request: Request, name: str, version: str | None) -> Response:
    rt = runtime(request)
    v = _version(version)
    rt.check_name(name, v)
    versions = [rt.manager.resolve(v)] if v is not None else rt.manager.available_versions()
    if not versions:
        raise NotFound(f"Servable not found for request: Latest({name})")
    return json_response(
        {
            "name": name,
            "versions": [str(x) for x in versions],
            "platform": PLATFORM,
            "inputs": [{"name": contract.INPUT_NAME, "datatype": "FP32", "shape": [-1, *contract.INSTANCE_SHAPE]}],
            "outputs": [{"name": n, "datatype": dt, "shape": shape} for n, (dt, shape, _) in OUTPUT_TENSORS.items()],
        }
    )


@router.get("/v2/models/{name}", summary="Model metadata", responses=errors(404))
async def model_metadata(request: Request, name: str) -> Response:
    return _metadata(request, name, None)


@router.get("/v2/models/{name}/versions/{version}", summary="Model version metadata", responses=errors(400, 404))
async def model_version_metadata(request: Request, name: str, version: str) -> Response:
    return _metadata(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    rt = runtime(request)
    v = _version(version)
    rt.check_name(name, v)
    rt.manager.resolve(v)  # unknown version: 404 before the body is parsed
    body = await request.body()
    req = await parse(
        body,
        parse_infer_body,
        header_length=request.headers.get(HEADER_LENGTH),
        max_batch_size=rt.sched.request_limit,
        value_range=contract.INPUT_RANGE,
    )
    served, outputs = await rt.predict(v, req.images)
    content, header_length = infer_response(name, served, req, outputs)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type=BINARY_CONTENT_TYPE, headers={HEADER_LENGTH: str(header_length)})


@router.post(
    "/v2/models/{name}/infer", summary="Inference", openapi_extra=_INFER_DOC, responses=errors(400, 404, 413, 503, 504)
)
async def infer(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


@router.post(
    "/v2/models/{name}/versions/{version}/infer",
    summary="Inference on one version",
    openapi_extra=_INFER_DOC,
    responses=errors(400, 404, 413, 503, 504),
)
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await _infer(request, name, version)


async def _infer_hot(request: Request) -> Response:
    params = request.path_params
    return await _infer(request, params["name"], params.get("version"))


# Served by plain Starlette routes placed before the documented ones (see app._add_hot_paths).
HOT_ROUTES = [
    Route("/v2/models/{name}/infer", _infer_hot, methods=["POST"]),
    Route("/v2/models/{name}/versions/{version}/infer", _infer_hot, methods=["POST"]),
]
