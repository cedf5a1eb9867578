"""Small helpers shared by the routers: the runtime state, the log dict, off-loop parsing."""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from gateway.errors import LOG_KEY
from gateway.service import Gateway, backend_choice
from gateway.upstreams.pool import BackendPool
from gateway.validation import PredictRequest, parse_predict
from serving_core.errors import NotFound
from serving_core.tfs_rest import parse_version

# Above this, parsing (JSON -> numpy, ~40 us per image) moves to a worker thread so one big batch
# cannot stall every other request on the event loop; below it the thread hop would cost more.
INLINE_PARSE_BYTES = 64 * 1024


# Names and versions end up in the upstream request line: only what a model name can be gets through.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def check_model(model: str, version: str | None) -> None:
    if not _MODEL_NAME.match(model):
        raise NotFound(f"Servable not found for request: Latest({model[:128]})")
    if version is not None:
        parse_version(version)


def gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def log_info(request: Request) -> dict[str, Any]:
    info: dict[str, Any] | None = request.scope.get(LOG_KEY)
    if info is None:  # app used without the middleware (never in create_app; keeps routers reusable)
        info = request.scope[LOG_KEY] = {}
    return info


def chosen_pool(request: Request) -> BackendPool:
    choice = backend_choice(request.query_params.get("backend"), request.headers.get("x-backend"))
    return gateway(request).pool(choice)


async def parse_body(body: bytes, max_batch_size: int) -> PredictRequest:
    if len(body) <= INLINE_PARSE_BYTES:
        return parse_predict(body, max_batch_size)
    return await run_in_threadpool(parse_predict, body, max_batch_size)
