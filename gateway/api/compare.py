"""`POST /v1/compare`: one input to both backends at once; both answers, latencies and agreement.

A backend that fails does not fail the call: the answer is partial (200) and says which and why.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.deps import check_model, gateway, log_info, parse_body
from gateway.errors import GatewayError
from gateway.upstreams.pool import PredictResult
from serving_core.contract import OUTPUT_CLASSES, OUTPUT_PROBABILITIES
from serving_core.errors import ServingError
from serving_core.openapi import MODEL_NAME_PARAM, VERSION_PARAM, errors, json_body, predict_example, ref

router = APIRouter(tags=["compare"])

_OPTIONAL_MODEL = {"type": "string", "pattern": f"^({MODEL_NAME_PARAM['pattern'][1:-1]})?$"}
_OPTIONAL_VERSION = {"type": "string", "pattern": f"^({VERSION_PARAM['pattern'][1:-1]})?$"}


def _failure(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, GatewayError):
        return {"ok": False, "status": exc.status, "error": exc.message}
    if isinstance(exc, ServingError):
        return {"ok": False, "status": exc.http_status, "error": exc.message}
    return {"ok": False, "status": 500, "error": f"{type(exc).__name__}: {exc}"}


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, Any]:
    """Argmax match per instance and the largest absolute difference of the probabilities."""
    pa = np.asarray(a[OUTPUT_PROBABILITIES], dtype=np.float64)
    pb = np.asarray(b[OUTPUT_PROBABILITIES], dtype=np.float64)
    if pa.shape != pb.shape:
        return {"comparable": False, "reason": f"output shapes differ: {list(pa.shape)} vs {list(pb.shape)}"}
    match = np.argmax(pa, axis=-1) == np.argmax(pb, axis=-1)
    diff = np.abs(pa - pb).max(axis=-1)
    return {
        "comparable": True,
        "instances": int(pa.shape[0]),
        "argmax_match": match.tolist(),
        "argmax_agreement": float(match.mean()),
        "classes_match": bool(np.array_equal(np.asarray(a[OUTPUT_CLASSES]), np.asarray(b[OUTPUT_CLASSES]))),
        "max_abs_diff": float(diff.max()),
        "max_abs_diff_per_instance": diff.tolist(),
    }


@router.post(
    "/v1/compare",
    summary="Same input to both backends, side by side",
    description="Body: a TF Serving predict body. Optional `?version=N` and `?model=`. Answers each backend's "
    "output (TF Serving REST shape), latency and replica, plus argmax agreement and max |p_torch - p_tf|. "
    "One backend failing is still a 200, with `partial: true` and that backend's error; both failing is the "
    "worse of their two statuses, with the same document and an `error`.",
    responses={
        200: {"description": "Both answers side by side (or one, and why the other failed)."},
        **errors(400, 401, 404, 413, 502, 503, 504),
    },
    openapi_extra={
        **json_body(ref("PredictRequest"), "TF Serving REST predict body, sent to both backends.", predict_example()),
        "parameters": [
            # Empty means the default, as if absent: the served model and its latest version.
            {"name": "model", "in": "query", "required": False, "schema": _OPTIONAL_MODEL},
            {"name": "version", "in": "query", "required": False, "schema": _OPTIONAL_VERSION},
        ],
    },
)
async def compare(request: Request) -> Response:
    info = log_info(request)
    info["endpoint"] = "compare"
    info["backend"] = "both"
    gw = gateway(request)
    model = request.query_params.get("model") or gw.settings.model_name
    version = request.query_params.get("version") or None
    check_model(model, version)
    body = await request.body()
    req = await parse_body(body, gw.settings.max_batch_size)
    names = list(gw.pools)
    results = await asyncio.gather(
        *(
            gw.pools[n].predict(model, version, req, body if gw.pools[n].transport.wire == "json" else None)
            for n in names
        ),
        return_exceptions=True,
    )
    backends: dict[str, Any] = {}
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for name, result in zip(names, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result  # cancellation and the like are not a backend's answer
            backends[name] = _failure(result)
            continue
        assert isinstance(result, PredictResult)
        try:
            outputs[name] = result.outputs()
            payload = orjson.Fragment(result.json_body())
        except GatewayError as exc:
            backends[name] = _failure(exc)
            continue
        gw.metrics.observe_upstream(name, result.latency_ms / 1000.0)
        backends[name] = {
            "ok": True,
            "version": result.version,
            "latency_ms": round(result.latency_ms, 3),
            "replica": result.replica,
            "response": payload,
        }
    failed = [n for n in names if not backends[n]["ok"]]
    doc: dict[str, Any] = {
        "model": model,
        "format": req.format,
        "partial": 0 < len(failed) < len(names),  # some answers, not all; none is an error, below
        "failed": failed,
        "backends": backends,
        "agreement": agreement(outputs["torch"], outputs["tf"]) if not failed else None,
    }
    if len(failed) == len(names):
        # Nothing to compare: still one answer that says why for each backend, but as an error status.
        status = max(backends[n]["status"] for n in names)
        doc["error"] = "; ".join(f"{n}: {backends[n]['error']}" for n in names)
        return Response(orjson.dumps(doc), status_code=status, media_type="application/json")
    return Response(orjson.dumps(doc), media_type="application/json")
