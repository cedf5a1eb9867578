"""Compressed request bodies (serving_core.content_encoding): gzip is read, within the body limit."""

from __future__ import annotations

import gzip
import zlib

import pytest

from serving_core.content_encoding import decode_body
from serving_core.errors import InvalidArgument, PayloadTooLarge, UnsupportedMediaType

BODY = b'{"instances": [[1, 2, 3]]}' * 40


@pytest.mark.parametrize("encoding", ["gzip", "GZIP", "x-gzip", " gzip ", "identity, gzip", "gzip, identity"])
def test_gzip_is_uncompressed(encoding: str) -> None:
    assert decode_body(gzip.compress(BODY), encoding, 1 << 20) == BODY


@pytest.mark.parametrize("encoding", [None, "identity", "", " "])
def test_no_encoding_leaves_the_body_alone(encoding: str | None) -> None:
    assert decode_body(BODY, encoding, 1 << 20) is BODY


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not gzip at all", "not valid gzip"),
        (gzip.compress(BODY)[:-12], "ends before its data"),  # truncated in transit
        (zlib.compress(BODY), "not valid gzip"),  # zlib framing sent as gzip
    ],
)
def test_a_broken_gzip_body_is_invalid(body: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        decode_body(body, "gzip", 1 << 20)


def test_the_limit_applies_after_uncompressing_and_nothing_past_it_is_made() -> None:
    bomb = gzip.compress(b"0" * (64 << 20))  # 64 MiB of zeros: ~64 KiB on the wire
    assert len(bomb) < 100_000
    with pytest.raises(PayloadTooLarge, match="limit of 1048576 bytes once uncompressed"):
        decode_body(bomb, "gzip", 1 << 20)
    assert decode_body(gzip.compress(b"0" * 1000), "gzip", 1000) == b"0" * 1000  # exactly the limit is fine


@pytest.mark.parametrize("encoding", ["deflate", "br", "compress", "gzip, gzip", "zstd"])
def test_other_encodings_are_415(encoding: str) -> None:
    with pytest.raises(UnsupportedMediaType, match="send the body uncompressed or gzip-compressed"):
        decode_body(BODY, encoding, 1 << 20)


def test_concatenated_gzip_members_are_all_read() -> None:
    # RFC 1952 allows several members in a row (what `cat a.gz b.gz` makes); gzip.decompress reads them all.
    assert decode_body(gzip.compress(BODY) + gzip.compress(b"tail"), "gzip", 1 << 20) == BODY + b"tail"
    with pytest.raises(PayloadTooLarge):  # the limit counts every member
        decode_body(gzip.compress(b"0" * 600) + gzip.compress(b"0" * 600), "gzip", 1000)
    with pytest.raises(InvalidArgument, match="not valid gzip"):  # trailing bytes that are no member
        decode_body(gzip.compress(BODY) + b"junk after it", "gzip", 1 << 20)


async def test_large_bodies_are_inflated_off_the_event_loop() -> None:
    import asyncio
    import threading

    from serving_core import content_encoding

    seen: list[str] = []
    real = content_encoding.decode_body

    def spy(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
        seen.append(threading.current_thread().name)
        return real(body, encoding, max_bytes)

    content_encoding.decode_body = spy  # type: ignore[assignment]
    try:
        big = gzip.compress(bytes(range(256)) * 64)  # incompressible enough to stay over INLINE_BYTES
        assert len(big) > content_encoding.INLINE_BYTES
        assert await content_encoding.decode_body_async(big, "gzip", 1 << 20) == bytes(range(256)) * 64
        assert await content_encoding.decode_body_async(gzip.compress(b"x"), "gzip", 1 << 20) == b"x"
    finally:
        content_encoding.decode_body = real  # type: ignore[assignment]
    assert seen[0] != threading.main_thread().name and seen[1] == threading.main_thread().name
    assert asyncio.get_running_loop()
