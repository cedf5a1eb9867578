"""The gateway app, assembled in named steps: state and lifespan, middleware, routers, error handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway.access_log import AccessLog
from gateway.api import backends, classify, compare, health, predict
from gateway.errors import install_handlers
from gateway.fastpath import PredictFastPath
from gateway.loadtest.api import build_router as build_loadtest_router
from gateway.metrics import Metrics
from gateway.middleware import GatewayMiddleware
from gateway.service import Gateway
from gateway.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
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
            loadtests.manager.shutdown()  # type: ignore[attr-defined]  # a running load test is cancelled
            await gw.stop()
            if access_log is not None:
                access_log.close()  # the lines still buffered

    app = FastAPI(
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

    # Middleware, innermost first (Starlette wraps each added layer around the previous ones): the
    # predict fast path, then request id, API keys, body cap, metrics and access log in one layer.
    app.add_middleware(PredictFastPath, gateway=gw)
    app.add_middleware(
        GatewayMiddleware,
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
    return app
