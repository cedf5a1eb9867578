"""The gateway app, assembled in named steps: state and lifespan, middleware, routers, error handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.access_log import AccessLog
from gateway.api import backends, classify, compare, health, predict
from gateway.errors import install_handlers
from gateway.fastpath import PredictFastPath
from gateway.loadtest.api import RUN_ID
from gateway.loadtest.api import build_router as build_loadtest_router
from gateway.metrics import Metrics
from gateway.middleware import GatewayMiddleware
from gateway.service import Gateway
from gateway.settings import Settings
from serving_core import openapi


class GatewayApp(FastAPI):
    """FastAPI, entered through the gateway's own layers (`front`) instead of directly.

    Added with `add_middleware` they would sit inside Starlette's stack, and every predict call would
    first pass FastAPI's and Starlette's `__call__`, ServerErrorMiddleware and FastAPI's telemetry and
    body-limit layers before reaching the fast path: 5-6% of the gateway's time per request in a
    py-spy profile under wrk at concurrency 1. In front of them, the fast path skips all of that; every
    other request goes on into the full stack (`fastapi_call`), and a 500 from its last-resort handler
    now also passes through the request-id, metrics and access-log layer.
    """

    front: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)

    async def fastapi_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, *, predict_fast_path: bool = True) -> GatewayApp:
    """The gateway. `predict_fast_path=False` serves predict through its FastAPI routes only (the
    tests compare the two)."""
    settings = settings or Settings()
    metrics = Metrics()
    gw = Gateway(settings, metrics)
    access_log = AccessLog() if settings.access_log else None
    loadtests = build_loadtest_router(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            try:
                loadtests.manager.shutdown()  # type: ignore[attr-defined]  # a running load test is cancelled
                await gw.stop()
            finally:
                if access_log is not None:
                    access_log.close()  # the lines still buffered

    app = GatewayApp(
        # A stray trailing slash is a 404 {"error"} like any unknown path, not a 307 without a body.
        redirect_slashes=False,
        title="cnn-serving gateway",
        version="0.1.0",
        description="One REST front door for torch_service and TensorFlow Serving: TF-Serving-shaped predict "
        "routed to either backend, side-by-side comparison, image classification, replica balancing.",
        lifespan=lifespan,
    )
    app.state.gateway = gw
    app.state.settings = settings
    app.state.access_log = access_log

    # In front of FastAPI: request id, API keys, body cap, metrics and access log in one layer, then the
    # predict fast path; everything else continues into FastAPI's own stack.
    app.front = GatewayMiddleware(
        PredictFastPath(app.fastapi_call, gateway=gw) if predict_fast_path else app.fastapi_call,
        api_keys=settings.api_keys,
        max_body_bytes=settings.max_body_bytes,
        metrics=metrics,
        access_log=access_log,
    )
    # Endpoints.
    for module in (predict, compare, classify, backends, health):
        app.include_router(module.router)
    app.include_router(loadtests)  # /v1/loadtests (gateway/loadtest/api.py)
    # Exception handlers: every error leaves as {"error": ...} with its status.
    install_handlers(app)
    # The OpenAPI document: error answers and bodies as served, limits from these settings.
    openapi.finish(
        app,
        path_params={
            "model": openapi.served_model(settings.model_name),
            "version": openapi.VERSION_PARAM,
            "run_id": {"type": "string", "pattern": RUN_ID.pattern},
        },
        schemas={
            "PredictRequest": openapi.predict_body_schema(settings.max_batch_size),
            "PredictResponse": openapi.predict_response_schema(),
        },
    )
    return app
