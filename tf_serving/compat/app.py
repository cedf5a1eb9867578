"""TF Serving's REST API (port 8501) and its Prometheus endpoint, as a FastAPI app.

Assembled in named steps: lifespan (load models), routes (status, metadata, predict, metrics),
exception handlers (every ServingError -> its HTTP status with `{"error": ...}`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from serving_core import tfs_rest
from serving_core.content_encoding import decode_body_async
from serving_core.errors import DeadlineExceeded, Internal, InvalidArgument, NotFound, PayloadTooLarge, ServingError
from serving_core.routes import error_headers
from tf_serving.compat.model import ModelRegistry
from tf_serving.compat.settings import Settings, load_server_config

log = logging.getLogger(__name__)


async def get_registry(request: Request) -> ModelRegistry:  # async: no thread-pool hop per request
    return request.app.state.registry


Registry = Annotated[ModelRegistry, Depends(get_registry)]


def _lifespan(settings: Settings, registry: ModelRegistry | None):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = registry is None
        reg = registry if registry is not None else ModelRegistry(settings, load_server_config(settings))
        app.state.registry = reg
        if owned:
            # Loading runs TF: keep it off the event loop.
            await asyncio.to_thread(reg.start)
        try:
            yield
        finally:
            if owned:
                await asyncio.to_thread(reg.stop)

    return lifespan


async def _read_capped(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit`: a chunked body has no Content-Length
    to check first, and reading it whole before checking would let one request fill the memory."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_label(path: tfs_rest.ModelPath) -> None:
    if path.label is not None:
        # No version_labels are configured (models.config), so every label is unknown, as in TF Serving.
        raise InvalidArgument(f"Unrecognized servable version label: {path.label}")


def _add_model_routes(app: FastAPI, settings: Settings) -> None:
    timeout_s = settings.rest_api_timeout_in_ms / 1000

    @app.get("/v1/models/{rest:path}")
    async def get_model(request: Request, registry: Registry) -> Response:
        path = tfs_rest.parse_model_path(request.url.path)
        _check_label(path)
        if path.verb is not None:
            raise NotFound(f"Malformed request: GET {request.url.path}")
        if path.metadata:
            manager = registry.manager(path.name, version=path.version)
            with manager.acquire(path.version) as (v, loaded):
                doc = tfs_rest.model_metadata_json(path.name, v, loaded.servable.signature_json)
            return JSONResponse(doc)
        manager = registry.manager(path.name, for_status=True)
        return JSONResponse(tfs_rest.model_status_json(manager.status(path.version)))

    @app.post("/v1/models/{rest:path}")
    async def post_model(request: Request, registry: Registry) -> Response:
        start = time.perf_counter()
        path = tfs_rest.parse_model_path(request.url.path)
        status = "OK"
        try:
            _check_label(path)
            if path.verb is None:
                raise NotFound(f"Malformed request: POST {request.url.path}")
            if path.verb != "predict":
                # The only signature is a predict signature; TF Serving refuses classify/regress on it so,
                # once the model and version are found.
                with registry.acquire(path.name, path.version):  # NOT_FOUND for an unknown model or version
                    pass
                raise InvalidArgument(tfs_rest.unsupported_method(path.verb))
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
                raise PayloadTooLarge(
                    f"Request body of {length} bytes exceeds the limit of {settings.max_body_bytes} bytes"
                )
            body = await _read_capped(request, settings.max_body_bytes)
            # A gzip body is uncompressed first, as TF Serving's HTTP server does (serving_core.content_encoding).
            body = await decode_body_async(body, request.headers.get("content-encoding"), settings.max_body_bytes)
            req = tfs_rest.parse_predict_body(body)
            try:
                _, outputs = await asyncio.wait_for(registry.predict(path.name, path.version, req.images), timeout_s)
            except TimeoutError:
                raise DeadlineExceeded(f"Request timed out after {settings.rest_api_timeout_in_ms} ms") from None
            return Response(tfs_rest.predict_response(req.format, outputs), media_type="application/json")
        except ClientDisconnect:
            # The client left mid-body: nobody to answer and nothing went wrong here (499, as nginx logs it).
            status = "CANCELLED"
            return Response(status_code=499)
        except ServingError as exc:
            status = exc.tf_code
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            m = registry.metrics
            m.request_count.inc(path.name, status)
            if path.verb == "predict":
                m.request_latency.observe((time.perf_counter() - start) * 1e6, path.name, "predict", "REST")


def _add_monitoring_route(app: FastAPI, settings: Settings, metrics_path: str | None) -> None:
    if metrics_path is None:
        return

    @app.get(metrics_path, include_in_schema=False)
    async def prometheus(registry: Registry) -> Response:
        return PlainTextResponse(registry.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _add_exception_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> Response:
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))} if hasattr(exc, "retry_after_s") else None
        return JSONResponse(exc.to_json(), status_code=exc.http_status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Unknown paths and wrong methods answer in TF Serving's error shape too.
        return JSONResponse(
            {"error": f"{exc.detail}: {request.method} {request.url.path}"},
            status_code=exc.status_code,
            headers=error_headers(request, exc.status_code, dict(exc.headers) if exc.headers else None),
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        err = Internal(f"{type(exc).__name__}: {exc}")
        return JSONResponse(err.to_json(), status_code=err.http_status)


def create_app(settings: Settings, registry: ModelRegistry | None = None, metrics_path: str | None = None) -> FastAPI:
    """The REST app. With `registry` given, the caller owns its lifecycle (e.g. shared with gRPC)."""
    if metrics_path is None and registry is not None and registry.config.monitoring.prometheus_enabled:
        metrics_path = registry.config.monitoring.prometheus_path
    elif metrics_path is None and registry is None:
        monitoring = load_server_config(settings).monitoring
        metrics_path = monitoring.prometheus_path if monitoring.prometheus_enabled else None
    app = FastAPI(
        title="TF-Serving-compatible server (compat, not TensorFlow Serving)",
        # `/v1/models/` and the like are a 404 {"error"}, not Starlette's 307 with an empty body.
        redirect_slashes=False,
        lifespan=_lifespan(settings, registry),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    if registry is not None:
        app.state.registry = registry  # usable without running the lifespan (tests, shared with gRPC)
    _add_monitoring_route(app, settings, metrics_path)
    _add_model_routes(app, settings)
    _add_exception_handlers(app)
    return app
