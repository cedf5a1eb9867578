"""`create_app(settings)`: the FastAPI application, assembled in named steps (state, middleware, routes, errors)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from serving_core import openapi
from torch_service import __version__
from torch_service.errors import install_exception_handlers
from torch_service.middleware import ServingMiddleware
from torch_service.protocol import rest_v1, rest_v2
from torch_service.runtime import ModelRuntime
from torch_service.settings import Settings

log = logging.getLogger(__name__)


def _lifespan(runtime: ModelRuntime) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Load and warm up before the server takes traffic; blocking work stays off the event loop.
        await asyncio.to_thread(runtime.start)
        try:
            yield
        finally:
            # uvicorn has already finished in-flight requests; this drains the batch queues and unloads.
            await asyncio.to_thread(runtime.stop)

    return lifespan


def _add_operational_routes(app: FastAPI) -> None:
    @app.get("/metrics", tags=["Operations"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        rt: ModelRuntime = request.app.state.runtime
        return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _add_hot_paths(app: FastAPI) -> None:
    # The documented predict/infer routes stay for /docs; requests are matched first by plain
    # Starlette routes to the same handlers, which skip FastAPI's per-request dependency solving.
    app.router.routes[0:0] = [*rest_v1.HOT_ROUTES, *rest_v2.HOT_ROUTES]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    runtime = ModelRuntime.build(settings)  # fails fast on a bad device or batching file
    app = FastAPI(
        # A stray trailing slash is a 404 {"error"} like any unknown path, not a 307 without a body.
        redirect_slashes=False,
        title="torch_service",
        version=__version__,
        description="TorchScript CNN behind TensorFlow Serving's REST API and the Open Inference Protocol (v2).",
        lifespan=_lifespan(runtime),
        # Our own Prometheus metrics cover this; FastAPI's OpenTelemetry hooks would cost every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.runtime = runtime
    app.add_middleware(ServingMiddleware, metrics=runtime.metrics, max_body_bytes=settings.max_body_bytes)
    app.include_router(rest_v1.router)
    app.include_router(rest_v2.router)
    _add_operational_routes(app)
    _add_hot_paths(app)
    install_exception_handlers(app)
    # The OpenAPI document: error answers and bodies as served, the batch cap from this runtime.
    openapi.finish(
        app,
        path_params={"name": openapi.served_model(settings.model_name), "version": openapi.VERSION_PARAM},
        schemas={
            "PredictRequest": openapi.predict_body_schema(runtime.sched.request_limit),
            "PredictResponse": openapi.predict_response_schema(),
        },
    )
    return app
