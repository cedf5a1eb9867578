"""Helpers both protocol routers share: the runtime from app state, JSON responses, off-loop parsing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

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


# Schema for the OpenAPI docs only; the handlers read raw bytes (no pydantic on the hot path).
def json_body_doc(example: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": {"type": "object"}, "example": example}},
        }
    }
