"""The gateway's binary wire to torch_service (OIP infer with binary tensors) against a raw loopback
server that records what the gateway sent and answers exactly the bytes each test chooses, including
broken ones: a bad answer must be a 502 (BadGateway), never an unexpected exception."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest

from gateway.errors import BadGateway, UpstreamError
from gateway.upstreams.balancer import Replica
from gateway.upstreams.pool import ReplicaDown
from gateway.upstreams.rest import RestTransport
from gateway.validation import PredictRequest
from serving_core import oip

IMAGES = np.linspace(0, 1, 2 * 784, dtype=np.float32).reshape(2, 28, 28, 1)


class Recorder:
    """Answers each request with `reply`; keeps the request line, headers and body it got."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.requests: list[tuple[bytes, dict[bytes, bytes], bytes]] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *rest = head[:-4].split(b"\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in rest)}
                body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
                self.requests.append((line, headers, body))
                writer.write(self.reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> Replica:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return Replica("torch", f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}")

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


def http(body: bytes, status: int = 200, **headers: str) -> bytes:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items()).encode()
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n" % (status, len(body), extra) + body


def binary_answer(probs: np.ndarray, classes: np.ndarray, version: str = "3", **overrides: object) -> bytes:
    outputs = [
        {
            "name": "probabilities",
            "datatype": "FP32",
            "shape": list(probs.shape),
            "parameters": {"binary_data_size": probs.nbytes},
        },
        {
            "name": "classes",
            "datatype": "INT64",
            "shape": list(classes.shape),
            "parameters": {"binary_data_size": classes.nbytes},
        },
    ]
    head = orjson.dumps({"model_name": "cnn", "model_version": version, "outputs": outputs, **overrides})
    body = head + probs.astype("<f4").tobytes() + classes.astype("<i8").tobytes()
    return http(body, inference_header_content_length=str(len(head)), content_type="application/octet-stream")


def transport() -> RestTransport:
    return RestTransport(timeout_s=5, connect_timeout_s=1, health_timeout_s=1, max_connections=4, wire="binary")


async def predict(reply: bytes, version: str | None = None) -> tuple[object, Recorder]:
    rec = Recorder(reply)
    t = transport()
    try:
        async with rec as replica:
            req = PredictRequest("row", "serving_default", IMAGES)
            return await t.predict(replica, "cnn", version, req, b"ignored: the binary wire sends the tensor"), rec
    finally:
        await t.close()


async def test_sends_the_tensor_as_the_extension_specifies_and_renders_tf_serving_json() -> None:
    probs = np.full((2, 10), 0.1, np.float32)
    classes = np.array([7, 1], np.int64)
    result, rec = await predict(binary_answer(probs, classes), version="3")
    line, headers, body = rec.requests[0]
    assert line == b"POST /v2/models/cnn/versions/3/infer HTTP/1.1"
    assert headers[b"content-type"] == b"application/octet-stream"
    parsed = oip.parse_infer_body(body, header_length=headers[b"inference-header-content-length"].decode())
    np.testing.assert_array_equal(parsed.images, IMAGES)
    assert parsed.binary_outputs == {"probabilities", "classes"}
    assert result.version == "3"  # type: ignore[attr-defined]
    doc = orjson.loads(result.json_body())  # type: ignore[attr-defined]
    assert [p["classes"] for p in doc["predictions"]] == [7, 1]
    assert doc["predictions"][0]["probabilities"] == pytest.approx([0.1] * 10)


@pytest.mark.parametrize(
    ("reply", "needle"),
    [
        # One class for two images: answers must not be silently dropped or zipped short.
        (binary_answer(np.zeros((2, 10), np.float32), np.zeros(1, np.int64)), "for 2 images"),
        (binary_answer(np.zeros((1, 10), np.float32), np.zeros(2, np.int64)), "for 2 images"),
        (http(b'{"outputs": [{"name": "classes", "shape": [2], "data": [%d, 1]}]}' % 2**70), "out of range"),
        (http(orjson.dumps({"outputs": [{"name": "classes", "shape": [2], "parameters": 5}]})), "not an object"),
        (http(b"not json at all"), "unexpected body"),
        (http(orjson.dumps({"outputs": [{"name": "logits", "shape": [2], "data": [1, 2]}]})), "unexpected body"),
    ],
)
async def test_malformed_answers_are_bad_gateway(reply: bytes, needle: str) -> None:
    with pytest.raises(BadGateway) as err:
        await predict(reply)
    assert needle in err.value.message


async def test_upstream_errors_map_as_on_the_json_wire() -> None:
    with pytest.raises(UpstreamError) as err:
        await predict(http(orjson.dumps({"error": "Servable not found for request: Specific(cnn, 9)"}), 404))
    assert err.value.status == 404 and "Specific(cnn, 9)" in err.value.message
    with pytest.raises(ReplicaDown, match="HTTP 503"):
        await predict(http(orjson.dumps({"error": "not ready"}), 503))
