"""Settings, error mapping, tensor decoding and input validation (no servers)."""

from __future__ import annotations

import re

import numpy as np
import orjson
import pytest

from gateway.errors import UpstreamError, grpc_status_to_http
from gateway.settings import Settings, load_settings
from gateway.validation import encode_predict_body, parse_predict
from serving_core.errors import InvalidArgument


def test_settings_defaults_follow_design() -> None:
    s = Settings()
    assert (s.host, s.port, s.default_backend, s.tf_protocol) == ("127.0.0.1", 8000, "torch", "grpc")
    assert s.torch_wire == "binary"
    assert s.torch_urls == ["http://127.0.0.1:8080"]
    assert s.tf_rest_urls == ["http://127.0.0.1:8501"]
    assert s.tf_grpc_targets == ["127.0.0.1:8500"]
    assert s.api_keys == []


def test_settings_comma_separated_lists_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TORCH_URLS", "http://a:1/, http://b:2")
    monkeypatch.setenv("GATEWAY_TF_GRPC_TARGETS", "x:1,y:2")
    monkeypatch.setenv("GATEWAY_API_KEYS", "k1,k2")
    monkeypatch.setenv("GATEWAY_BALANCER", "round_robin")
    s = Settings()
    assert s.torch_urls == ["http://a:1", "http://b:2"]
    assert s.tf_grpc_targets == ["x:1", "y:2"]
    assert s.api_keys == ["k1", "k2"]
    assert s.balancer == "round_robin"


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("GATEWAY_TORCH_URLS", "ftp://x", "GATEWAY_TORCH_URLS: 'ftp://x' is not an http(s) URL"),
        ("GATEWAY_TF_GRPC_TARGETS", "http://x:1", "host:port"),
        ("GATEWAY_DEFAULT_BACKEND", "onnx", "GATEWAY_DEFAULT_BACKEND"),
        ("GATEWAY_TORCH_WIRE", "protobuf", "GATEWAY_TORCH_WIRE"),
        ("GATEWAY_PORT", "0", "GATEWAY_PORT"),
        ("GATEWAY_TORCH_URLS", "", "no replica"),
        ("GATEWAY_MAX_BODY_BYTES", "1048576", "GATEWAY_MAX_IMAGE_BYTES (8388608) is larger than GATEWAY_MAX_BODY"),
    ],
)
def test_bad_settings_fail_fast_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit, match=re.escape(fragment)) as exc:
        load_settings()
    assert "Value error" not in str(exc.value) and "GATEWAY_:" not in str(exc.value)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("INVALID_ARGUMENT", 400),
        ("NOT_FOUND", 404),
        ("UNAVAILABLE", 503),
        ("RESOURCE_EXHAUSTED", 503),
        ("DEADLINE_EXCEEDED", 504),
        ("INTERNAL", 500),
        ("UNKNOWN", 500),
        ("FAILED_PRECONDITION", 400),
    ],
)
def test_grpc_codes_map_like_tf_serving_rest(code: str, status: int) -> None:
    assert grpc_status_to_http(code) == status


def test_tensor_decoding_both_encodings_and_request_building() -> None:
    from tensorflow.core.framework import tensor_pb2

    from gateway.upstreams import tfs_protos
    from gateway.upstreams.grpc import GrpcTransport

    def tensor_to_numpy(real: tensor_pb2.TensorProto) -> np.ndarray:
        # Encoded by TensorFlow's own class, read as the gateway reads an answer (its own class, no TF).
        from gateway.upstreams.grpc import tensor_to_numpy as decode

        return decode(tfs_protos.TensorProto.FromString(real.SerializeToString()))

    t = tensor_pb2.TensorProto(dtype=1)
    t.tensor_shape.dim.add().size = 2
    t.tensor_shape.dim.add().size = 3
    t.float_val.extend([1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(tensor_to_numpy(t), np.arange(1, 7, dtype=np.float32).reshape(2, 3))
    t2 = tensor_pb2.TensorProto(dtype=9, tensor_content=np.array([3, 4], np.int64).tobytes())
    t2.tensor_shape.dim.add().size = 2
    assert tensor_to_numpy(t2).tolist() == [3, 4]
    t3 = tensor_pb2.TensorProto(dtype=1, float_val=[0.5])  # compact: one value for the whole shape
    t3.tensor_shape.dim.add().size = 4
    assert tensor_to_numpy(t3).tolist() == [0.5] * 4
    # Every typed field the gateway reads, at its dtype's extremes.
    for dtype, field, values, np_dtype in (
        (2, "double_val", [1e-310, -1.5, 2.0**60], np.float64),
        (3, "int_val", [-(2**31), 0, 2**31 - 1], np.int32),
        (9, "int64_val", [-(2**63), 2**53 + 1, 2**63 - 1], np.int64),
    ):
        typed = tensor_pb2.TensorProto(dtype=dtype)
        typed.tensor_shape.dim.add().size = 3
        getattr(typed, field).extend(values)
        got = tensor_to_numpy(typed)
        assert got.dtype == np_dtype and got.tolist() == values
    # Values that do not fill the shape (nor are one value for all of it) are the upstream's fault: 502.
    short = tensor_pb2.TensorProto(dtype=1, float_val=[1.0, 2.0])
    short.tensor_shape.dim.add().size = 3
    with pytest.raises(UpstreamError, match="2 values for shape \\[3\\]") as info:
        tensor_to_numpy(short)
    assert info.value.status == 502

    batch = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    req = GrpcTransport(timeout_s=1, health_timeout_s=1).build_request("cnn", "2", batch)
    assert req.model_spec.version.value == 2 and req.model_spec.signature_name == "serving_default"
    # The hand-built proto, read back by TensorFlow's own TensorProto, is the batch.
    import tensorflow as tf

    sent = tensor_pb2.TensorProto.FromString(req.inputs["images"].SerializeToString())
    np.testing.assert_array_equal(tf.make_ndarray(sent), batch)


@pytest.mark.parametrize("version", [None, "2", "9223372036854775807"])
@pytest.mark.parametrize("n", [1, 3, 1024])
def test_request_bytes_are_the_built_message(version: str | None, n: int) -> None:
    """The h2 client sends a cached head plus the tensor's bytes: the same bytes protobuf writes for the
    built message, which TF Serving's own PredictRequest reads back as the batch."""
    from tensorflow_serving.apis import predict_pb2

    from gateway.upstreams.grpc import GrpcTransport

    t = GrpcTransport(timeout_s=1, health_timeout_s=1)
    rng = np.random.default_rng(n)
    for _ in range(2):  # the second call of a shape reuses the cached head with other values
        batch = rng.random((n, 28, 28, 1), dtype=np.float32)
        wire = t.request_bytes("cnn", version, batch)
        assert wire == t.build_request("cnn", version, batch).SerializeToString()
        real = predict_pb2.PredictRequest.FromString(wire)
        assert real.model_spec.name == "cnn" and real.model_spec.signature_name == "serving_default"
        assert real.model_spec.HasField("version") == (version is not None)
        if version is not None:
            assert real.model_spec.version.value == int(version)
        tensor = real.inputs["images"]
        assert [d.size for d in tensor.tensor_shape.dim] == [n, 28, 28, 1]
        np.testing.assert_array_equal(np.frombuffer(tensor.tensor_content, np.float32).reshape(batch.shape), batch)
    # Another model name gets its own head, not the cached one.
    other = t.request_bytes("other_model", version, batch)
    assert predict_pb2.PredictRequest.FromString(other).model_spec.name == "other_model"
    # Any array the parser may hand over (float64, strided, Fortran order) is sent as float32 values.
    for odd in (batch.astype(np.float64), np.asfortranarray(batch), np.repeat(batch, 2, axis=0)[::2]):
        assert t.request_bytes("cnn", version, odd) == t.build_request("cnn", version, odd).SerializeToString()
    # A blank image (all zeros) is encoded right too, cached head or not.
    blank = np.zeros((n, 28, 28, 1), np.float32)
    assert t.request_bytes("cnn", version, blank) == t.build_request("cnn", version, blank).SerializeToString()


def test_request_heads_are_one_per_version_number() -> None:
    """ "01" and "1" name one version (the URL accepts both): they share a head rather than let a client
    fill the cache with spellings of one number."""
    from gateway.upstreams.grpc import GrpcTransport

    t = GrpcTransport(timeout_s=1, health_timeout_s=1)
    batch = np.random.default_rng(1).random((2, 28, 28, 1), dtype=np.float32)
    for spelling in ("1", "01", "001", "1"):
        assert t.request_bytes("cnn", spelling, batch) == t.build_request("cnn", spelling, batch).SerializeToString()
    assert t.request_bytes("cnn", None, batch) == t.build_request("cnn", None, batch).SerializeToString()
    assert len(t._heads) == 2  # version 1, and no version


IMG = np.zeros((28, 28, 1)).tolist()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "Empty request body"),
        (b"{not json", "Malformed JSON"),
        (b"[1, 2]", "JSON object"),
        (orjson.dumps({"instances": []}), "empty"),
        (orjson.dumps({"instances": [IMG], "inputs": [IMG]}), "either"),
        (orjson.dumps({"instances": [np.zeros((28, 28)).tolist()]}), "[N, 28, 28, 1]"),
        (orjson.dumps({"instances": [[[["a"]] * 28] * 28]}), "nested list of numbers"),
        (b'{"instances": [' + b"[[[NaN]]" + b",[[0]]" * 27 + b"]" * 2, "Malformed JSON"),
        (orjson.dumps({"instances": [IMG] * 5}), "Task size 5 is larger than maximum input batch size 4"),
        (orjson.dumps({"instances": [IMG], "signature_name": "other"}), "not found in signature def"),
        (orjson.dumps({"instances": [{"pixels": IMG}]}), "Unknown input name"),
    ],
)
def test_invalid_bodies_are_rejected_with_a_message(body: bytes, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_predict(body, max_batch_size=4)
    assert fragment in exc.value.message


def test_nan_is_rejected() -> None:
    arr = np.zeros((1, 28, 28, 1))
    body = orjson.dumps({"inputs": arr.tolist()}).replace(b"0.0", b"NaN", 1)
    with pytest.raises(InvalidArgument, match="NaN or infinite"):
        parse_predict(body, max_batch_size=4)


@pytest.mark.parametrize("fmt", ["row", "columnar"])
def test_valid_bodies_round_trip(fmt: str) -> None:
    batch = np.random.default_rng(1).random((2, 28, 28, 1), dtype=np.float32)
    key = "instances" if fmt == "row" else "inputs"
    req = parse_predict(orjson.dumps({key: batch}, option=orjson.OPT_SERIALIZE_NUMPY), max_batch_size=4)
    assert req.format == fmt
    np.testing.assert_array_equal(req.images, batch)
    again = parse_predict(encode_predict_body(req), max_batch_size=4)
    np.testing.assert_array_equal(again.images, batch)
