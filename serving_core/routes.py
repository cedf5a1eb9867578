"""The `Allow` header of a 405, listing every method the path serves.

Starlette answers 405 from the first route whose path matched, with that route's methods only, and
through FastAPI's included routers with none: `/v1/loadtests` (GET lists, POST creates) said `Allow: `
on the gateway, `/v1/models/cnn` (GET status, POST predict) `Allow: POST` on torch_service. RFC 9110
(15.5.6) asks for the target resource's full set.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

# Every method a route here can serve. Each is tried against the routes' own matching, which also sees
# into FastAPI's included routers (whose wrappers carry no `methods` of their own).
_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(routes: list[BaseRoute], request: Request, *, head_as_get: bool = False) -> str:
    """Every method some route serves at this request's path, as an `Allow` value (with HEAD wherever
    GET is, for an app served through `head_as_get`)."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": "GET" if head_as_get and method == "HEAD" else method}
        if any(route.matches(scope)[0] is Match.FULL for route in routes):
            allowed.append(method)
    return ", ".join(allowed)


def head_as_get(scope: Scope) -> Scope:
    """HEAD is GET without the body (RFC 9110 9.3.2), and FastAPI's GET routes refuse it with a 405 whose
    Allow says GET. The app is handed a copy that says GET; uvicorn, reading its own scope, still knows
    it is answering a HEAD and sends the head alone, Content-Length included."""
    return {**scope, "method": "GET"} if scope["method"] == "HEAD" else scope


def error_headers(
    request: Request, status: int, headers: dict[str, str] | None, *, head_as_get: bool = False
) -> dict[str, str] | None:
    """The headers of an HTTPException's answer, with a 405's `Allow` made complete."""
    if status != 405:
        return headers
    return {**(headers or {}), "Allow": allowed_methods(request.app.router.routes, request, head_as_get=head_as_get)}
