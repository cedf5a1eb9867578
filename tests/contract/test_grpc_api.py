"""TF Serving's gRPC API, used the documented way: PredictionServiceStub + tf.make_tensor_proto."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving_core import contract
from tests.contract.conftest import Backend

pytestmark = pytest.mark.integration


@pytest.fixture
def channel(grpc_backend: Backend):
    ch = grpc.insecure_channel(grpc_backend.grpc_target)
    yield ch
    ch.close()


def _request(images: np.ndarray, version: int | None = None, name: str = "cnn") -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.model_spec.signature_name = "serving_default"
    if version is not None:
        req.model_spec.version.value = version
    req.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.float32))
    return req


def _latest(channel: grpc.Channel) -> int:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "cnn"
    resp = stub.GetModelStatus(req, timeout=30)
    available = [
        s.version for s in resp.model_version_status if s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    ]
    assert available
    return max(available)


def test_predict(channel: grpc.Channel, golden_of: dict[str, np.ndarray]) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    resp = stub.Predict(_request(golden_of["images"][:6]), timeout=30)
    assert resp.model_spec.name == "cnn"
    assert resp.model_spec.version.value == _latest(channel)
    probs = tf.make_ndarray(resp.outputs["probabilities"])
    classes = tf.make_ndarray(resp.outputs["classes"])
    assert probs.dtype == np.float32 and classes.dtype == np.int64
    np.testing.assert_allclose(probs, golden_of["probabilities"][:6], atol=1e-5)
    assert classes.tolist() == golden_of["classes"][:6].tolist()


def test_outputs_come_in_the_typed_fields_as_tf_serving_writes_them(
    channel: grpc.Channel, golden_of: dict[str, np.ndarray]
) -> None:
    """TF Serving's RunPredict serializes outputs with Tensor::AsProtoField (predict_util.cc): the values
    are in float_val / int64_val, which is what client code reading `outputs[...].float_val` relies on."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    resp = stub.Predict(_request(golden_of["images"][:3]), timeout=30)
    probs, classes = resp.outputs["probabilities"], resp.outputs["classes"]
    assert probs.tensor_content == b"" and classes.tensor_content == b""
    assert [d.size for d in probs.tensor_shape.dim] == [3, 10]
    assert [d.size for d in classes.tensor_shape.dim] == [3]
    np.testing.assert_allclose(
        np.asarray(probs.float_val, dtype=np.float32).reshape(3, 10), golden_of["probabilities"][:3], atol=1e-5
    )
    assert list(classes.int64_val) == golden_of["classes"][:3].tolist()


def test_predict_explicit_version_and_output_filter(channel: grpc.Channel, golden_of: dict[str, np.ndarray]) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    v = _latest(channel)
    req = _request(golden_of["images"][:2], version=v)
    req.output_filter.append("classes")
    resp = stub.Predict(req, timeout=30)
    assert list(resp.outputs) == ["classes"]
    assert resp.model_spec.version.value == v
    assert tf.make_ndarray(resp.outputs["classes"]).tolist() == golden_of["classes"][:2].tolist()


def test_metadata(channel: grpc.Channel) -> None:
    from google.protobuf.json_format import MessageToDict

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "cnn"
    req.metadata_field.append("signature_def")
    resp = stub.GetModelMetadata(req, timeout=30)
    assert resp.model_spec.version.value == _latest(channel)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sig_map)
    sig = MessageToDict(
        sig_map.signature_def[contract.SIGNATURE_NAME],
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    assert sig == contract.signature_def_json()


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda r: r.model_spec.__setattr__("name", "no_such_model"), grpc.StatusCode.NOT_FOUND),
        (lambda r: r.model_spec.version.__setattr__("value", 987654), grpc.StatusCode.NOT_FOUND),
        (
            lambda r: r.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 28, 28, 3), np.float32))),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (lambda r: r.inputs["pixels"].CopyFrom(r.inputs["images"]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: r.model_spec.__setattr__("signature_name", "nope"), grpc.StatusCode.FAILED_PRECONDITION),
        (lambda r: r.output_filter.append("nope"), grpc.StatusCode.INVALID_ARGUMENT),
        # predict_util.cc: "duplicate output tensor alias".
        (lambda r: r.output_filter.extend(["classes", "classes"]), grpc.StatusCode.INVALID_ARGUMENT),
        # Tensor::FromProto fails ("tensor parsing error"): packed bytes that are not 784 floats.
        (lambda r: r.inputs["images"].__setattr__("tensor_content", b"\0" * 3137), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: r.inputs["images"].__setattr__("tensor_content", b"\0" * 3132), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_errors_have_tf_serving_status_codes(channel: grpc.Channel, mutate, code: grpc.StatusCode) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    req = _request(np.zeros((1, 28, 28, 1), np.float32))
    mutate(req)
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(req, timeout=30)
    assert err.value.code() == code, err.value.details()
    assert stub.Predict(_request(np.zeros((1, 28, 28, 1), np.float32)), timeout=30).outputs


def test_unknown_model_status_is_not_found(channel: grpc.Channel) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "no_such_model"
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelStatus(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_model_spec_without_a_name_is_invalid(channel: grpc.Channel) -> None:
    """ServerCore::ServableRequestFromModelSpec: "ModelSpec has no name specified." (not NOT_FOUND)."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(_request(np.zeros((1, 28, 28, 1), np.float32), name=""), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no name" in (err.value.details() or "")


def test_model_status_needs_a_spec_and_ignores_a_version_label(channel: grpc.Channel) -> None:
    """get_model_status_impl.cc: no model_spec is INVALID_ARGUMENT "Missing ModelSpec"; only `version`
    narrows the answer, so a version_label lists every version, as no version does."""
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    plain = get_model_status_pb2.GetModelStatusRequest()
    plain.model_spec.name = "cnn"
    labelled = get_model_status_pb2.GetModelStatusRequest()
    labelled.model_spec.name = "cnn"
    labelled.model_spec.version_label = "stable"
    assert stub.GetModelStatus(labelled, timeout=30) == stub.GetModelStatus(plain, timeout=30)


@pytest.mark.parametrize("method", ["Classify", "Regress"])
def test_classify_and_regress_refuse_the_predict_signature(channel: grpc.Channel, method: str) -> None:
    """The model's one signature is a predict signature: TF Serving finds the model, then refuses the
    signature's shape (classifier.cc / regressor.cc) with INVALID_ARGUMENT; an unknown model is NOT_FOUND."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    make = classification_pb2.ClassificationRequest if method == "Classify" else regression_pb2.RegressionRequest
    req = make()
    req.model_spec.name = "cnn"
    req.input.example_list.examples.add().features.feature["x"].float_list.value.append(0.5)
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, method)(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    req.model_spec.name = "no_such_model"
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, method)(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
    req.model_spec.name = "cnn"
    req.model_spec.version.value = 987654
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, method)(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()


def test_float_vals_are_read_as_tensorflow_reads_them(channel: grpc.Channel, golden_of: dict[str, np.ndarray]) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    image = golden_of["images"][:1]
    flat = image.reshape(-1)
    cut = int(np.flatnonzero(flat)[-1]) + 1  # the digit's last lit pixel; zeros after it
    req = _request(image)
    req.inputs["images"].ClearField("tensor_content")
    # Fewer values than the shape holds: padded with the last (the trailing zeros, implied).
    req.inputs["images"].float_val.extend([*flat[:cut].tolist(), 0.0])
    got = tf.make_ndarray(stub.Predict(req, timeout=30).outputs["probabilities"])
    np.testing.assert_allclose(got, golden_of["probabilities"][:1], atol=1e-5)
    # More values than the shape holds: the extra ones are ignored (tensor.cc copies the first n).
    req.inputs["images"].ClearField("float_val")
    req.inputs["images"].float_val.extend([*flat.tolist(), 0.5, 0.5])
    got = tf.make_ndarray(stub.Predict(req, timeout=30).outputs["probabilities"])
    np.testing.assert_allclose(got, golden_of["probabilities"][:1], atol=1e-5)
