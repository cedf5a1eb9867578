"""`POST /v1/classify`: a PNG/JPEG of a digit -> label and probabilities from one backend."""

from __future__ import annotations

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import Response

from gateway.api.deps import chosen_pool, gateway, log_info
from gateway.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from gateway.imaging import preprocess
from gateway.validation import from_images
from serving_core.contract import OUTPUT_PROBABILITIES
from serving_core.openapi import errors

router = APIRouter(tags=["classify"])


async def _image_bytes(request: Request, limit: int) -> bytes:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("multipart body has no file field named 'file'")
        data = await upload.read(limit + 1)
        await form.close()
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        data = await request.body()
    else:
        raise UnsupportedMediaType(
            f"content type {ctype or '(none)'!r} is not an image: send image/png or image/jpeg as the body, "
            "or multipart/form-data with the field 'file'"
        )
    if len(data) > limit:
        raise PayloadTooLarge(f"image exceeds the limit of {limit} bytes")
    return data


@router.post(
    "/v1/classify",
    summary="Classify a picture of a digit",
    description="Body: a PNG or JPEG (raw, with an image content type) or multipart/form-data field `file`. "
    "Any size and polarity: it is converted to the 28x28 MNIST layout first. `?backend=torch|tf`.",
    responses={
        200: {"description": "The label, its probability and all ten, and which backend answered."},
        **errors(
            400,
            401,
            413,
            415,
            422,
            502,
            503,
            504,
            descriptions={
                400: "Not a decodable image, a multipart body without a `file` field, or an unknown backend.",
                413: "Image larger than GATEWAY_MAX_IMAGE_BYTES or GATEWAY_MAX_IMAGE_PIXELS.",
                422: "A well-formed image with no digit on it.",
            },
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
            },
        },
        "parameters": [
            {
                "name": "backend",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": ["torch", "tf"]},
            },
            {"name": "include_input", "in": "query", "required": False, "schema": {"type": "boolean"}},
        ],
    },
)
async def classify(request: Request) -> Response:
    info = log_info(request)
    info["endpoint"] = "classify"
    pool = chosen_pool(request)
    info["backend"] = pool.name
    gw = gateway(request)
    data = await _image_bytes(request, gw.settings.max_image_bytes)
    # Decoding is the memory-hungry step (up to ~100 MB for the largest picture allowed): a few at a time.
    async with gw.decode_slots:
        images = await run_in_threadpool(preprocess, data, gw.settings.max_image_pixels)
    result = await pool.predict(gw.settings.model_name, None, from_images(images), None)
    info["replica"] = result.replica
    gw.metrics.observe_upstream(pool.name, result.latency_ms / 1000.0)
    probs = np.asarray(result.outputs()[OUTPUT_PROBABILITIES], dtype=np.float32)[0]
    doc = {
        "label": int(np.argmax(probs)),
        "confidence": float(probs.max()),
        "probabilities": probs,
        "backend": pool.name,
        "version": result.version,
        "latency_ms": round(result.latency_ms, 3),
    }
    if request.query_params.get("include_input") in ("1", "true"):
        doc["input"] = images[0, :, :, 0]  # what the model saw, for debugging a surprising label
    return Response(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
