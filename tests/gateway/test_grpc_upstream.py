"""The gateway's TF upstream (gateway/upstreams/grpc.py) against broken answers from a real gRPC server.

A grpcio server on loopback answers Predict with scripted bytes; both of the gateway's gRPC clients (its
own h2 client and grpc.aio) must turn every broken answer into a 502 {"error"} naming what was wrong,
never a 500 or an allocation the size of whatever shape the answer claims.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest

from devstack.process import free_port
from gateway.errors import error_for
from gateway.upstreams.balancer import Replica
from gateway.upstreams.grpc import GrpcTransport
from gateway.upstreams.tfs_protos import PredictResponse
from gateway.validation import from_images


def _response(probs_shape: list[int], classes: list[int] | None = None, **probs_fields: object) -> bytes:
    resp = PredictResponse()
    p = resp.outputs["probabilities"]
    p.dtype = 1
    for size in probs_shape:
        p.tensor_shape.dim.add().size = size
    for name, value in probs_fields.items():
        if name == "float_val":
            p.float_val.extend(value)
        else:
            setattr(p, name, value)
    if classes is not None:
        c = resp.outputs["classes"]
        c.dtype = 9
        c.tensor_shape.dim.add().size = len(classes)
        c.int64_val.extend(classes)
    return bytes(resp.SerializeToString())


ANSWERS = {
    "good_compact": _response([1, 10], [3], float_val=[0.1]),  # TF's compact form: one value for the shape
    "content_of_7_bytes": _response([1], [3], tensor_content=b"\0" * 7),
    "content_short_of_shape": _response([1, 10], [3], tensor_content=np.zeros(3, np.float32).tobytes()),
    "compact_huge_shape": _response([1 << 45], [3], float_val=[0.5]),
    "negative_dimension": _response([-1, 10], [3], float_val=[0.1] * 10),
    "more_than_the_batch": _response([2, 10], [3, 4], float_val=[0.1] * 20),
    "wrong_shape": _response([10, 1], [3], float_val=[0.1] * 10),
    "undecodable": b"\x0a\xff\xff\xff\x0f",  # a field longer than the message
}


class PredictServer:
    """A grpcio server whose Predict answers ANSWERS[kind] (raw bytes), the kind set per test."""

    def __init__(self) -> None:
        self.kind = "good_compact"
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: ANSWERS[self.kind])
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {"Predict": handler}),)
        )
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()


@pytest.fixture(scope="module")
def predict_server() -> Iterator[PredictServer]:
    s = PredictServer()
    yield s
    s.server.stop(0).wait()


async def _predict(server: PredictServer, client: str) -> tuple[int, str]:
    transport = GrpcTransport(timeout_s=5, health_timeout_s=5, client=client)  # type: ignore[arg-type]
    try:
        inp = from_images(np.zeros((1, 28, 28, 1), np.float32))
        result = await transport.predict(Replica("tf", f"127.0.0.1:{server.port}"), "cnn", None, inp, None)
        return 200, result.json_body().decode()
    except Exception as exc:
        status, message, _ = error_for(exc)
        return status, message
    finally:
        await transport.close()


@pytest.mark.parametrize("client", ["h2", "grpcio"])
async def test_compact_form_answer_is_read(predict_server: PredictServer, client: str) -> None:
    predict_server.kind = "good_compact"
    status, body = await _predict(predict_server, client)
    assert status == 200, body
    assert '"classes":3' in body and body.count("0.1") == 10


@pytest.mark.parametrize("client", ["h2", "grpcio"])
@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("content_of_7_bytes", "7 bytes of content for shape [1]"),
        ("content_short_of_shape", "12 bytes of content for shape [1, 10]"),
        ("compact_huge_shape", "more than the 10 values expected"),
        ("more_than_the_batch", "shape [2, 10] has more than the 10 values expected"),
        ("negative_dimension", "unknown shape [-1, 10]"),
        ("wrong_shape", "outputs of shapes [10, 1] and [1] for 1 images"),
        ("undecodable", "undecodable message"),
    ],
)
async def test_a_broken_answer_is_a_502_naming_the_fault(
    predict_server: PredictServer, client: str, kind: str, fragment: str
) -> None:
    predict_server.kind = kind
    status, message = await _predict(predict_server, client)
    assert status == 502, message
    assert fragment in message
