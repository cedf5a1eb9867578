"""Drive an ASGI app directly, for what no HTTP client library can do on purpose (hang up mid-body)."""

from __future__ import annotations

from typing import Any


async def post_then_hang_up(app: Any, path: str, first_chunk: bytes = b'{"instances": [') -> list[dict[str, Any]]:
    """POST announcing 5,000 bytes, send `first_chunk`, then disconnect; returns what the app sent."""
    messages = iter([{"type": "http.request", "body": first_chunk, "more_body": True}, {"type": "http.disconnect"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"5000")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    return sent
