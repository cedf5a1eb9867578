"""The `Allow` header of a 405, listing every method the path serves.

Starlette answers 405 from the first route whose path matched, with that route's methods only, and
through FastAPI's included routers with none: `/v1/loadtests` (GET lists, POST creates) said `Allow: `
on the gateway, `/v1/models/cnn` (GET status, POST predict) `Allow: POST` on torch_service. RFC 9110
(15.5.6) asks for the target resource's full set.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import BaseRoute, Match

# Every method a route here can serve. Each is tried against the routes' own matching, which also sees
# into FastAPI's included routers (whose wrappers carry no `methods` of their own).
_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(routes: list[BaseRoute], request: Request) -> str:
    """Every method some route serves at this request's path, as an `Allow` value."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in routes):
            allowed.append(method)
    return ", ".join(allowed)


def error_headers(request: Request, status: int, headers: dict[str, str] | None) -> dict[str, str] | None:
    """The headers of an HTTPException's answer, with a 405's `Allow` made complete."""
    if status != 405:
        return headers
    return {**(headers or {}), "Allow": allowed_methods(request.app.router.routes, request)}
