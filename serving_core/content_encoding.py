"""Request bodies sent compressed (`Content-Encoding: gzip`), read as TensorFlow Serving reads them.

TF Serving's HTTP server uncompresses a request body whose Content-Encoding contains "gzip" before any
handler sees it (net_http's `auto_uncompress_input`, on by default), and clients use that: tritonclient's
`request_compression_algorithm="gzip"`, for one. Here the same holds on all three servers: a gzip body is
uncompressed, with the server's body limit applying to the result as well (a few KB of gzip can inflate
to gigabytes); a body that is not valid gzip is 400; any other encoding (deflate, br) is 415, where TF
Serving would pass the compressed bytes to its JSON parser and answer a puzzling 400.
"""

from __future__ import annotations

import asyncio
import zlib

from starlette.types import Message, Receive, Scope

from serving_core.errors import InvalidArgument, PayloadTooLarge, UnsupportedMediaType

_IDENTITY = frozenset({"", "identity"})
# Compressed bodies up to this size are inflated on the event loop (gzip inflates at most ~1000-fold, so
# to ~256 KB: well under a millisecond); larger ones in a worker thread.
INLINE_BYTES = 256
_GZIP = frozenset({"gzip", "x-gzip"})


def decode_body(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """`body` uncompressed as its Content-Encoding says; raises InvalidArgument, PayloadTooLarge or
    UnsupportedMediaType."""
    if encoding is None:
        return body
    codings = [c.strip().lower() for c in encoding.split(",")]
    codings = [c for c in codings if c not in _IDENTITY]
    if not codings:
        return body
    if len(codings) != 1 or codings[0] not in _GZIP:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding.strip()!r} is not supported: send the body uncompressed or gzip-compressed"
        )
    # A gzip stream may hold several members one after another (RFC 1952); each is read in turn, and at
    # most one byte past the limit is ever made.
    parts: list[bytes] = []
    total = 0
    data = body
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing only
        try:
            part = inflater.decompress(data, max_bytes + 1 - total)
        except zlib.error as exc:
            raise InvalidArgument(f"Request body is not valid gzip (Content-Encoding: gzip): {exc}") from None
        parts.append(part)
        total += len(part)
        if total > max_bytes:
            raise PayloadTooLarge(f"Request body exceeds the limit of {max_bytes} bytes once uncompressed")
        if not inflater.eof:
            raise InvalidArgument("Request body is not valid gzip (Content-Encoding: gzip): it ends before its data")
        data = inflater.unused_data
        if not data:
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def decode_body_async(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """decode_body, in a worker thread unless the body is tiny: 17 KB of gzip took 55 ms to inflate to the
    gateway's limit, which on the event loop stalled every other request (zlib releases the GIL)."""
    if encoding is None or len(body) <= INLINE_BYTES:
        return decode_body(body, encoding, max_bytes)
    return await asyncio.to_thread(decode_body, body, encoding, max_bytes)


def decoding(scope: Scope, receive: Receive, encoding: str, max_bytes: int) -> tuple[Scope, Receive]:
    """The scope and receive an app should see for a body sent with `encoding`: the body arrives in one
    message, uncompressed, and the scope no longer claims an encoding or the compressed length."""
    headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]
    decoded_scope = {**scope, "headers": headers}
    done = False

    async def decoded() -> Message:
        nonlocal done
        if done:
            return await receive()  # after the body: only a disconnect is left to hear
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message  # the client left before its body was complete
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        done = True
        body = await decode_body_async(b"".join(chunks), encoding, max_bytes)
        return {"type": "http.request", "body": body, "more_body": False}

    return decoded_scope, decoded
