"""Helpers both protocol routers share: the runtime from app state, JSON responses, off-loop parsing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

from serving_core import openapi
from torch_service.runtime import ModelRuntime

T = TypeVar("T")

# Bodies above this are parsed on a worker thread: a 1000-image JSON body takes tens of ms to parse,
# which would stall every other connection if done on the event loop. Small ones are cheaper inline.
OFFLOOP_PARSE_BYTES = 256 * 1024


def runtime(request: Request) -> ModelRuntime:
    rt: ModelRuntime = request.app.state.runtime
    return rt


def json_response(doc: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type="application/json"
    )


async def parse(body: bytes, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    if len(body) > OFFLOOP_PARSE_BYTES:
        return await asyncio.to_thread(fn, body, *args, **kwargs)
    return fn(body, *args, **kwargs)


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """A route's documented error answers, in this server's words (serving_core.openapi)."""
    return openapi.errors(
        *codes,
        descriptions={
            400: "Invalid request: the message says which part (body, shape, values, version); TF Serving's wording.",
            503: "No version of the model is loaded yet, or the batch queue is full (with Retry-After).",
            504: "Inference took longer than TORCH_SERVICE_REQUEST_TIMEOUT_S.",
        },
    )
