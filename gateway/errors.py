"""Gateway errors: each names its condition and carries one HTTP status; answered as `{"error": ...}`.

Mapped in one place (`install_handlers`). Upstream failures keep TF Serving's status mapping so a
client sees the same codes through the gateway as it would calling a backend directly.
"""

from __future__ import annotations

from typing import ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from serving_core.errors import ServingError


class GatewayError(Exception):
    status: ClassVar[int] = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
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


def install_handlers(app: FastAPI) -> None:
    """The one place where exceptions become HTTP answers."""

    async def gateway_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return error_response(exc.status, exc.message, headers)

    async def serving_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServingError)
        return error_response(exc.http_status, exc.message)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(400, f"{where}: {first.get('msg', 'invalid request')}")

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
