"""Open Inference Protocol bodies: JSON and binary tensor data, both directions, and every bad binary body.

The binary requests here are built by hand from the extension's text (little-endian row-major bytes
after the JSON, its length in Inference-Header-Content-Length), not with the module's own encoder, so
a mistake shared by encoder and parser would still fail.
"""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from serving_core import oip
from serving_core.errors import InvalidArgument

IMAGES = np.linspace(0, 1, 2 * 784, dtype=np.float32).reshape(2, 28, 28, 1)


def _binary_body(
    images: np.ndarray, *, size: int | None = None, extra: bytes = b"", **doc: object
) -> tuple[bytes, str]:
    raw = struct.pack(f"<{images.size}f", *images.ravel().tolist())  # the wire form, spelled out
    tensor = {
        "name": "images",
        "shape": list(images.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(raw) if size is None else size},
    }
    head = orjson.dumps({"inputs": [tensor], **doc})
    return head + raw + extra, str(len(head))


def test_binary_input_parses_to_the_same_batch_as_json() -> None:
    body, length = _binary_body(IMAGES, id="r1")
    req = oip.parse_infer_body(body, header_length=length)
    json_body = orjson.dumps(
        {"inputs": [{"name": "images", "shape": [2, 28, 28, 1], "datatype": "FP32", "data": IMAGES.ravel().tolist()}]}
    )
    assert req.id == "r1"
    np.testing.assert_array_equal(req.images, oip.parse_infer_body(json_body).images)
    np.testing.assert_array_equal(req.images, IMAGES)
    assert req.images.flags.writeable  # torch.from_numpy warns on (and must not write to) read-only memory
    assert req.binary_outputs == frozenset()


def test_binary_outputs_on_request_or_per_output() -> None:
    body, length = _binary_body(IMAGES, parameters={"binary_data_output": True})
    assert oip.parse_infer_body(body, header_length=length).binary_outputs == {"probabilities", "classes"}
    body, length = _binary_body(
        IMAGES, outputs=[{"name": "classes", "parameters": {"binary_data": True}}, {"name": "probabilities"}]
    )
    req = oip.parse_infer_body(body, header_length=length)
    assert req.outputs == ("classes", "probabilities") and req.binary_outputs == {"classes"}


def test_binary_answer_layout_and_round_trip() -> None:
    probs = np.arange(20, dtype=np.float32).reshape(2, 10) / 20
    classes = np.array([9, 3], dtype=np.int64)
    req = oip.InferRequest("x", IMAGES, ("probabilities", "classes"), frozenset({"probabilities"}))
    body, head_len = oip.infer_response("cnn", 4, req, {"probabilities": probs, "classes": classes})
    assert head_len is not None
    head = orjson.loads(body[:head_len])
    assert head["model_version"] == "4" and head["id"] == "x"
    p, c = head["outputs"]
    assert p == {"name": "probabilities", "datatype": "FP32", "shape": [2, 10], "parameters": {"binary_data_size": 80}}
    assert c["data"] == [9, 3] and "parameters" not in c
    assert struct.unpack("<20f", body[head_len:]) == tuple(probs.ravel().tolist())
    version, outputs = oip.read_infer_response(body, str(head_len))
    assert version == "4"
    np.testing.assert_array_equal(outputs["probabilities"], probs)
    np.testing.assert_array_equal(outputs["classes"], classes)
    # Without binary outputs the answer is plain JSON, and reads back the same.
    json_req = oip.InferRequest(None, IMAGES, ("probabilities", "classes"))
    body, head_len = oip.infer_response("cnn", 4, json_req, {"probabilities": probs, "classes": classes})
    assert head_len is None
    _, outputs = oip.read_infer_response(body, None)
    np.testing.assert_array_equal(outputs["classes"], classes)


def test_client_request_is_what_the_extension_specifies() -> None:
    body, head_len = oip.binary_infer_request(IMAGES)
    head = orjson.loads(body[:head_len])
    assert head["inputs"][0]["parameters"] == {"binary_data_size": 2 * 784 * 4}
    assert head["parameters"] == {"binary_data_output": True}
    assert body[head_len:] == struct.pack(f"<{IMAGES.size}f", *IMAGES.ravel().tolist())


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: (_binary_body(IMAGES)[0], None), "binary tensor data needs the Inference-Header-Content-Length"),
        (lambda: (_binary_body(IMAGES)[0][:-6272], None), "no Inference-Header-Content-Length header"),
        (lambda: (_binary_body(IMAGES)[0], "12x"), "must be a byte count"),
        (lambda: (_binary_body(IMAGES)[0], "999999"), "has only"),
        (lambda: _binary_body(IMAGES, size=100), "needs 6272"),
        (lambda: _binary_body(IMAGES, extra=b"\0\0\0\0"), "6276 bytes follow"),
        (lambda: _binary_body(IMAGES, size=-4), "non-negative integer"),
        (lambda: _binary_body(IMAGES, size=True), "non-negative integer"),  # type: ignore[arg-type]
        (lambda: _binary_body(IMAGES * np.float32("nan")), "NaN or infinite"),
        (lambda: _binary_body(IMAGES[:, :14]), "[N, 28, 28, 1]"),
        (lambda: _binary_body(IMAGES, parameters={"binary_data_output": "yes"}), "must be true or false"),
        (
            lambda: (
                b'{"inputs":[{"name":"images","shape":[1,28,28,1],"datatype":"FP32","data":[0]}]}' + b"\0" * 4,
                "79",
            ),
            "no input has binary_data_size",
        ),
    ],
)
def test_bad_binary_bodies(make: object, needle: str) -> None:
    body, length = make()  # type: ignore[operator]
    with pytest.raises(InvalidArgument) as err:
        oip.parse_infer_body(body, header_length=length)
    assert needle in err.value.message


def test_data_and_binary_together_are_refused() -> None:
    body, length = _binary_body(IMAGES)
    head = orjson.loads(body[: int(length)])
    head["inputs"][0]["data"] = [0.0]
    new_head = orjson.dumps(head)
    with pytest.raises(InvalidArgument, match="both 'data' and binary_data_size"):
        oip.parse_infer_body(new_head + body[int(length) :], header_length=str(len(new_head)))


def test_truncated_binary_answer_is_an_error() -> None:
    req = oip.InferRequest(None, IMAGES, ("probabilities", "classes"), frozenset({"probabilities", "classes"}))
    outputs = {"probabilities": np.zeros((2, 10), np.float32), "classes": np.zeros(2, np.int64)}
    body, head_len = oip.infer_response("cnn", 1, req, outputs)
    with pytest.raises(ValueError, match="only"):
        oip.read_infer_response(body[:-1], str(head_len))
    with pytest.raises(ValueError, match="after the last"):
        oip.read_infer_response(body + b"\0", str(head_len))


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ([0, 2**62, 4], 0),  # no values at all, but numpy cannot even describe the array
        ([1] * 70, 4),  # beyond numpy's 64 dimensions
        ([1, 28, 28], 784 * 4),
    ],
)
def test_impossible_shapes_are_invalid_argument_before_any_array_is_built(shape: list[int], size: int) -> None:
    tensor = {"name": "images", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": size}}
    head = orjson.dumps({"inputs": [tensor]})
    with pytest.raises(InvalidArgument, match=r"\[N, 28, 28, 1\]"):
        oip.parse_infer_body(head + b"\0" * size, header_length=str(len(head)))
    json_tensor = {"name": "images", "shape": shape, "datatype": "FP32", "data": []}
    with pytest.raises(InvalidArgument, match=r"\[N, 28, 28, 1\]"):
        oip.parse_infer_body(orjson.dumps({"inputs": [json_tensor]}))


@pytest.mark.parametrize("value", ["1²", "1" * 5000, "٣"])
def test_header_length_takes_ascii_digits_only(value: str) -> None:
    body, _ = _binary_body(IMAGES)
    with pytest.raises(InvalidArgument, match="must be a byte count"):
        oip.parse_infer_body(body, header_length=value)


@pytest.mark.parametrize(
    ("outputs", "needle"),
    [
        ([{"name": ["x"]}], "string 'name'"),
        ([{"name": {}}], "string 'name'"),
        ([{"name": "classes"}, {"name": "classes"}], "more than once"),
        ([{"name": "classes", "parameters": {"binary_data": 1}}], "must be true or false"),
        ([{"name": "classes", "parameters": []}], "must be an object"),
    ],
)
def test_bad_output_requests(outputs: list, needle: str) -> None:
    body, length = _binary_body(IMAGES, outputs=outputs, parameters={"binary_data_output": True})
    with pytest.raises(InvalidArgument) as err:
        oip.parse_infer_body(body, header_length=length)
    assert needle in err.value.message


def test_an_outputs_own_binary_data_overrides_the_requests() -> None:
    outputs = [{"name": "probabilities", "parameters": {"binary_data": False}}, {"name": "classes"}]
    body, length = _binary_body(IMAGES, outputs=outputs, parameters={"binary_data_output": True})
    assert oip.parse_infer_body(body, header_length=length).binary_outputs == {"classes"}


@pytest.mark.parametrize(
    "tensor",
    [
        {"name": "classes", "shape": [2], "parameters": 5},
        {"name": "classes", "shape": [2], "parameters": {"binary_data_size": 15}},  # 2 int64 are 16 bytes
        {"name": "classes", "shape": [2], "parameters": {"binary_data_size": "16"}},
    ],
)
def test_malformed_answers_raise_value_error(tensor: dict) -> None:
    head = orjson.dumps({"outputs": [tensor]})
    with pytest.raises(ValueError):
        oip.read_infer_response(head + b"\0" * 16, str(len(head)))


@pytest.mark.parametrize(
    ("body", "needle", "not_there"),
    [
        # Plain JSON that is broken: no hint about binary data the client never sent.
        (b'{"inputs": [', "Malformed JSON in request body", "Inference-Header-Content-Length"),
        # NaN literals are named as the v1 API names them, not as a syntax error.
        (
            b'{"inputs":[{"name":"images","shape":[1,28,28,1],"datatype":"FP32","data":[NaN]}]}',
            "contains NaN or infinite values",
            "Malformed",
        ),
    ],
)
def test_json_errors_say_what_is_wrong(body: bytes, needle: str, not_there: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        oip.parse_infer_body(body)
    assert needle in err.value.message and not_there not in err.value.message
