"""Gateway errors: each names its condition and carries one HTTP status; answered as `{"error": ...}`.

Mapped in one place (`install_handlers`). Upstream failures keep TF Serving's status mapping so a
client sees the same codes through the gateway as it would calling a backend directly.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from serving_core.errors import ServingError
from serving_core.routes import error_headers

log = logging.getLogger("gateway")

# Scope key of the dict the handlers fill (backend, replica, endpoint, client_gone) for the access log
# and metrics (gateway/middleware.py). Defined here because the handlers below write to it too.
LOG_KEY = "gateway.log"


class GatewayError(Exception):
    status: ClassVar[int] = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.replica: str | None = None  # the upstream replica that failed, where one did (for the access log)
        if status is not None:
            self.status = status  # type: ignore[misc]


class InvalidInput(GatewayError):
    status = 400


class Unauthorized(GatewayError):
    status = 401


class PayloadTooLarge(GatewayError):
    status = 413


class UnsupportedMediaType(GatewayError):
    status = 415


class NoDigitFound(GatewayError):
    """A well-formed image with nothing on it: any label would be a guess."""

    status = 422


class UpstreamError(GatewayError):
    """The backend answered with an error; its status and message are passed through."""


class BadGateway(GatewayError):
    """The backend broke the connection or answered something that is not TF Serving's protocol."""

    status = 502


class UpstreamUnavailable(GatewayError):
    """No replica could be reached (refused, or every replica ejected and failing)."""

    status = 503


class UpstreamTimeout(GatewayError):
    status = 504


# gRPC status -> HTTP, as TF Serving's REST layer maps its own status codes (http_server.cc).
GRPC_TO_HTTP: dict[str, int] = {
    "OK": 200,
    "CANCELLED": 499,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 503,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "UNIMPLEMENTED": 501,
}


def grpc_status_to_http(code_name: str) -> int:
    return GRPC_TO_HTTP.get(code_name, 500)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": message}), status_code=status, media_type="application/json", headers=headers
    )


def domain_error(exc: Exception) -> tuple[int, str, dict[str, str] | None] | None:
    """(status, message, extra headers) for the gateway's and the model servers' own errors, else None.

    Used by the exception handlers below and by the predict fast path (gateway/fastpath.py), which runs
    outside FastAPI's exception middleware, so both answer every error alike.
    """
    if isinstance(exc, GatewayError):
        return exc.status, exc.message, ({"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None)
    if isinstance(exc, ServingError):
        return exc.http_status, exc.message, None
    return None


def error_for(exc: Exception) -> tuple[int, str, dict[str, str] | None]:
    """Like domain_error, with anything else (a bug) answered as a 500 in the same JSON shape and logged."""
    mapped = domain_error(exc)
    if mapped is not None:
        return mapped
    log.error("unhandled error", exc_info=exc)
    return 500, f"Internal error in the gateway ({type(exc).__name__}); see its log", None


def install_handlers(app: FastAPI) -> None:
    """The one place where exceptions become HTTP answers."""

    async def domain(_: Request, exc: Exception) -> Response:
        mapped = domain_error(exc)
        assert mapped is not None
        return error_response(*mapped)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = error_headers(request, exc.status_code, getattr(exc, "headers", None), head_as_get=True)
        return error_response(exc.status_code, str(exc.detail), headers)

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(400, f"{where}: {first.get('msg', 'invalid request')}")

    async def internal(_: Request, exc: Exception) -> Response:
        return error_response(*error_for(exc))

    async def client_gone(request: Request, _: Exception) -> None:
        # The client hung up before its body arrived: nobody is left to answer, and it is not a server
        # error. Logged and counted as 499, as nginx does.
        request.scope.setdefault(LOG_KEY, {})["client_gone"] = True

    app.add_exception_handler(GatewayError, domain)
    app.add_exception_handler(ServingError, domain)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ClientDisconnect, client_gone)  # type: ignore[arg-type]  # answers nothing
    # Starlette's last-resort handler (ServerErrorMiddleware): a bug still answers {"error": ...}.
    app.add_exception_handler(Exception, internal)
