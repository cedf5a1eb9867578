"""Open Inference Protocol (KServe v2) over REST: health, model metadata/readiness, JSON-tensor `infer`.

Errors answer `{"error": "..."}` as the protocol specifies, with the same status mapping as v1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serving_core import contract
from serving_core.errors import InvalidArgument, NotFound, Unavailable
from serving_core.tfs_rest import to_float32_array, validate_images
from torch_service.protocol.common import json_body_doc, json_response, parse, runtime

router = APIRouter(tags=["Open Inference Protocol (KServe v2)"])

PLATFORM = "pytorch_torchscript"
_OUTPUT_TENSORS = {
    contract.OUTPUT_PROBABILITIES: ("FP32", [-1, contract.NUM_CLASSES]),
    contract.OUTPUT_CLASSES: ("INT64", [-1]),
}

_INFER_DOC = json_body_doc(
    {
        "id": "42",
        "inputs": [{"name": "images", "shape": [1, 28, 28, 1], "datatype": "FP32", "data": [0.0] * 784}],
        "outputs": [{"name": "probabilities"}, {"name": "classes"}],
    },
    "One input tensor `images` (FP32, shape [N, 28, 28, 1]); `data` flat in row-major order or nested.",
)


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    images: np.ndarray
    outputs: tuple[str, ...]  # requested output names, in the order asked for


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or int(text) <= 0:
        raise InvalidArgument(f"Model version must be a positive integer, got '{text}'")
    return int(text)


def parse_infer_body(body: bytes, *, max_batch_size: int | None = None) -> InferRequest:
    """Validate an OIP inference request for this model; InvalidArgument names what to fix."""
    if not body:
        raise InvalidArgument("Empty request body: expected a JSON object with 'inputs'")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"Malformed JSON in request body: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("Request body must be a JSON object with 'inputs'")
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise InvalidArgument("'id' must be a string")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgument(f"'inputs' must be a non-empty list with one tensor named '{contract.INPUT_NAME}'")
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidArgument(f"Expected exactly one input tensor object ('{contract.INPUT_NAME}'), got {len(inputs)}")
    tensor = inputs[0]
    name = tensor.get("name")
    if name != contract.INPUT_NAME:
        raise InvalidArgument(f"Unknown input {name!r}; this model has one input named '{contract.INPUT_NAME}'")
    if tensor.get("datatype") != "FP32":
        raise InvalidArgument(f"Input '{name}' must have datatype FP32, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidArgument(f"Input '{name}' needs 'shape' as a list of non-negative integers, got {shape!r}")
    if "data" not in tensor:
        raise InvalidArgument(f"Input '{name}' has no 'data' (binary tensor data is not supported)")
    # The TF-REST parser's conversion: strings, booleans and nulls are refused, not turned into floats.
    arr = to_float32_array(
        tensor["data"], f"Input '{name}' data", "numbers (flat, or nested to match 'shape')", raw=body
    )
    if arr.size != math.prod(shape):
        raise InvalidArgument(f"Input '{name}' has {arr.size} values but shape {shape} needs {math.prod(shape)}")
    if arr.ndim > 1 and list(arr.shape) != shape:
        raise InvalidArgument(f"Input '{name}' nested data has shape {list(arr.shape)}, but 'shape' says {shape}")
    images = validate_images(arr.reshape(shape), max_batch_size)
    wanted = doc.get("outputs")
    names: tuple[str, ...] = contract.OUTPUT_NAMES
    if wanted is not None:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and "name" in o for o in wanted):
            raise InvalidArgument("'outputs' must be a list of objects with a 'name'")
        names = tuple(o["name"] for o in wanted)
        unknown = [n for n in names if n not in _OUTPUT_TENSORS]
        if unknown:
            raise InvalidArgument(f"Unknown output(s) {unknown}; this model has {list(contract.OUTPUT_NAMES)}")
    return InferRequest(req_id, images, names)


def infer_response(model: str, version: int, req: InferRequest, outputs: dict[str, np.ndarray]) -> bytes:
    tensors = []
    for name in req.outputs:
        arr = outputs[name]
        tensors.append(
            {"name": name, "datatype": _OUTPUT_TENSORS[name][0], "shape": list(arr.shape), "data": arr.ravel()}
        )
    doc: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": tensors}
    if req.id is not None:
        doc["id"] = req.id
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


# ---------------------------------------------------------------------------------------- routes
@router.get("/v2", summary="Server metadata")
async def server_metadata() -> Response:
    from torch_service import __version__

    return json_response({"name": "torch_service", "version": __version__, "extensions": []})


@router.get("/v2/health/live", summary="Liveness: the process answers")
async def live() -> Response:
    return json_response({"live": True})


@router.get("/v2/health/ready", summary="Readiness: at least one model version is loaded (503 until then)")
async def ready(request: Request) -> Response:
    runtime(request).manager.require_ready()
    return json_response({"ready": True})


def _model_ready(request: Request, name: str, version: str | None) -> Response:
    rt = runtime(request)
    v = _version(version)
    rt.check_name(name, v)
    try:
        rt.manager.resolve(v)
    except NotFound as exc:
        raise Unavailable(exc.message) from None
    return json_response({"name": name, "ready": True})


@router.get("/v2/models/{name}/ready", summary="Model readiness")
async def model_ready(request: Request, name: str) -> Response:
    return _model_ready(request, name, None)


@router.get("/v2/models/{name}/versions/{version}/ready", summary="Model version readiness")
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
            "outputs": [{"name": n, "datatype": dt, "shape": shape} for n, (dt, shape) in _OUTPUT_TENSORS.items()],
        }
    )


@router.get("/v2/models/{name}", summary="Model metadata")
async def model_metadata(request: Request, name: str) -> Response:
    return _metadata(request, name, None)


@router.get("/v2/models/{name}/versions/{version}", summary="Model version metadata")
async def model_version_metadata(request: Request, name: str, version: str) -> Response:
    return _metadata(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    rt = runtime(request)
    v = _version(version)
    rt.check_name(name, v)
    rt.manager.resolve(v)  # unknown version: 404 before the body is parsed
    body = await request.body()
    req = await parse(body, parse_infer_body, max_batch_size=rt.sched.request_limit)
    served, outputs = await rt.predict(v, req.images)
    return Response(infer_response(name, served, req, outputs), media_type="application/json")


@router.post("/v2/models/{name}/infer", summary="Inference", openapi_extra=_INFER_DOC)
async def infer(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


@router.post("/v2/models/{name}/versions/{version}/infer", summary="Inference on one version", openapi_extra=_INFER_DOC)
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
