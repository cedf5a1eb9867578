"""Domain errors shared by both model servers, each carrying its HTTP status and gRPC code.

The mapping follows TensorFlow Serving's own (`model_servers/http_server.cc`, ToHTTPStatusCode),
so a client cannot tell the backends apart by their errors.
"""

from __future__ import annotations

from typing import ClassVar


class ServingError(Exception):
    """Base class: `http_status` and `grpc_code` (grpc.StatusCode name) say how to answer it."""

    http_status: ClassVar[int] = 500
    grpc_code: ClassVar[str] = "INTERNAL"
    tf_code: ClassVar[str] = "INTERNAL"  # error_code as TF Serving's status JSON spells it

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"error": self.message}


class InvalidArgument(ServingError):
    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    tf_code = "INVALID_ARGUMENT"


class FailedPrecondition(ServingError):
    http_status = 400
    grpc_code = "FAILED_PRECONDITION"
    tf_code = "FAILED_PRECONDITION"


class NotFound(ServingError):
    http_status = 404
    grpc_code = "NOT_FOUND"
    tf_code = "NOT_FOUND"


class PayloadTooLarge(ServingError):
    # No gRPC twin: gRPC enforces its own max message size with RESOURCE_EXHAUSTED.
    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"
    tf_code = "RESOURCE_EXHAUSTED"


class UnsupportedMediaType(ServingError):
    # A request encoding the server cannot read (Content-Encoding other than gzip). TF Serving has no
    # such answer (it would fail to parse the bytes: 400); 415 says what to change.
    http_status = 415
    grpc_code = "INVALID_ARGUMENT"
    tf_code = "INVALID_ARGUMENT"


class Unavailable(ServingError):
    """Overload (batch queue full), model not ready, or shutting down: retry later."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    tf_code = "UNAVAILABLE"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(ServingError):
    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"
    tf_code = "DEADLINE_EXCEEDED"


class Internal(ServingError):
    http_status = 500
    grpc_code = "INTERNAL"
    tf_code = "INTERNAL"
