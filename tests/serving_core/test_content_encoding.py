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
