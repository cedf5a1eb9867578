"""The gateway's own TF Serving messages (gateway/upstreams/tfs_protos.py) against the real ones.

Every field declared there must exist in tensorflow-serving-api's generated descriptors with the same
number, wire type and repetition, so that the bytes mean the same thing on both sides; messages then
go both ways between the two sets of classes. And the gateway, gRPC upstream included, must come up
without importing TensorFlow (the reason the module exists).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.loadtest import grpc_wire
from gateway.upstreams import grpc as grpc_upstream
from gateway.upstreams import tfs_protos

_ENUM, _INT32 = FieldDescriptor.TYPE_ENUM, FieldDescriptor.TYPE_INT32
_FILES = ("gateway/tfs_subset/tensorflow.proto", "gateway/tfs_subset/serving.proto")


def _declared() -> Iterator[Descriptor]:
    """Every message type declared in tfs_protos, nested ones included."""

    def walk(desc: Descriptor) -> Iterator[Descriptor]:
        yield desc
        for nested in desc.nested_types:
            yield from walk(nested)

    for name in _FILES:
        for desc in tfs_protos.POOL.FindFileByName(name).message_types_by_name.values():
            yield from walk(desc)


DECLARED = sorted(d.full_name for d in _declared())


@pytest.fixture(scope="module")
def real_pool() -> Any:
    """The default pool, holding tensorflow-serving-api's generated descriptors."""
    pytest.importorskip("tensorflow_serving.apis", reason="tensorflow-serving-api is not installed")
    from google.protobuf import descriptor_pool
    from tensorflow_serving.apis import get_model_status_pb2, predict_pb2  # noqa: F401  (registers them)

    return descriptor_pool.Default()


@pytest.fixture(scope="module")
def predict_pb2(real_pool: Any) -> Any:
    from tensorflow_serving.apis import predict_pb2

    return predict_pb2


@pytest.fixture(scope="module")
def get_model_status_pb2(real_pool: Any) -> Any:
    from tensorflow_serving.apis import get_model_status_pb2

    return get_model_status_pb2


def test_every_message_is_walked() -> None:
    assert len(DECLARED) == 12 and "tensorflow.serving.PredictResponse.OutputsEntry" in DECLARED


@pytest.mark.parametrize("full_name", DECLARED)
def test_every_field_matches_the_real_descriptor(full_name: str, real_pool: Any) -> None:
    ours = tfs_protos.POOL.FindMessageTypeByName(full_name)
    real = real_pool.FindMessageTypeByName(full_name)
    assert ours.fields, full_name
    assert ours.GetOptions().map_entry == real.GetOptions().map_entry
    for field in ours.fields:
        twin = real.fields_by_name.get(field.name)
        assert twin is not None, f"{full_name}.{field.name} is not in the real message"
        assert field.number == twin.number, field.name
        # An enum is declared as int32 here: the same varint on the wire.
        assert field.type == twin.type or (field.type == _INT32 and twin.type == _ENUM), field.name
        assert field.is_repeated == twin.is_repeated, field.name
        if field.message_type is not None:
            assert field.message_type.full_name == twin.message_type.full_name, field.name
        if field.is_repeated and field.message_type is None:
            assert field.is_packed == twin.is_packed, field.name  # packed numbers, as proto3 sends them
        ours_oneof, real_oneof = field.containing_oneof, twin.containing_oneof
        assert (ours_oneof and ours_oneof.name) == (real_oneof and real_oneof.name), field.name


def test_every_field_the_gateway_reads_is_declared() -> None:
    tensor = tfs_protos.TensorProto.DESCRIPTOR.fields_by_name
    read = {"dtype", "tensor_shape", "tensor_content"} | set(grpc_upstream._VALUE_FIELD.values())
    read |= {field for _, field in grpc_wire._INT_TYPES.values()}
    assert read <= set(tensor), read - set(tensor)


def _real_request(predict_pb2: Any) -> Any:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "cnn"
    req.model_spec.version.value = 3
    req.model_spec.signature_name = "serving_default"
    t = req.inputs["images"]
    t.dtype = 1
    for size in (2, 28, 28, 1):
        t.tensor_shape.dim.add().size = size
    t.tensor_content = np.arange(2 * 784, dtype=np.float32).tobytes()
    req.output_filter.append("classes")
    return req


def test_a_request_reads_the_same_both_ways(predict_pb2: Any) -> None:
    real = _real_request(predict_pb2)
    ours = tfs_protos.PredictRequest.FromString(real.SerializeToString())
    assert ours.model_spec.version.value == 3 and ours.model_spec.HasField("version")
    assert [d.size for d in ours.inputs["images"].tensor_shape.dim] == [2, 28, 28, 1]
    assert list(ours.output_filter) == ["classes"]
    # Back again: TensorFlow's class reads ours as the message it sent.
    assert predict_pb2.PredictRequest.FromString(ours.SerializeToString()) == real
    # ModelSpec's version and version_label are one oneof: a label arriving after a version replaces it.
    labelled = predict_pb2.PredictRequest()
    labelled.model_spec.version_label = "stable"
    both = real.SerializeToString() + labelled.SerializeToString()  # concatenated messages merge
    ours, theirs = tfs_protos.PredictRequest.FromString(both), predict_pb2.PredictRequest.FromString(both)
    assert not theirs.model_spec.HasField("version")
    assert not ours.model_spec.HasField("version") and ours.model_spec.version_label == "stable"


def test_an_answer_in_every_encoding_tf_serving_uses_is_read(predict_pb2: Any) -> None:
    real = predict_pb2.PredictResponse()
    real.model_spec.name = "cnn"
    real.model_spec.version.value = 7
    probs = real.outputs["probabilities"]
    probs.dtype = 1
    probs.tensor_shape.dim.add().size = 1
    probs.tensor_shape.dim.add().size = 3
    probs.float_val.extend([0.25, 0.5, 0.25])  # typed values (packed), not tensor_content
    classes = real.outputs["classes"]
    classes.dtype = 9
    classes.tensor_shape.dim.add().size = 1
    classes.int64_val.append(-1)  # a negative int64: ten-byte varint
    real.outputs["strings"].string_val.append(b"left out here: kept as an unknown field")
    ours = tfs_protos.PredictResponse.FromString(real.SerializeToString())
    assert list(ours.outputs["probabilities"].float_val) == [0.25, 0.5, 0.25]
    assert list(ours.outputs["classes"].int64_val) == [-1]
    assert ours.model_spec.version.value == 7
    # The fields not declared here survive a round trip untouched.
    assert predict_pb2.PredictResponse.FromString(ours.SerializeToString()) == real


def test_model_status_reads_the_same(get_model_status_pb2: Any) -> None:
    real = get_model_status_pb2.GetModelStatusResponse()
    for version, state in ((1, 30), (2, 40)):
        s = real.model_version_status.add()
        s.version, s.state = version, state
        s.status.error_code = 0 if state == 30 else 5
        s.status.error_message = "" if state == 30 else "gone"
    ours = tfs_protos.GetModelStatusResponse.FromString(real.SerializeToString())
    assert [(s.version, s.state, s.status.error_message) for s in ours.model_version_status] == [
        (1, 30, ""),
        (2, 40, "gone"),
    ]
    request = tfs_protos.GetModelStatusRequest()
    request.model_spec.name = "cnn"
    assert get_model_status_pb2.GetModelStatusRequest.FromString(request.SerializeToString()).model_spec.name == "cnn"


def test_the_gateway_with_a_grpc_upstream_does_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "from gateway.app import create_app\n"
        "from gateway.settings import Settings\n"
        "from gateway.upstreams.grpc import GrpcTransport\n"
        "import numpy as np\n"
        "create_app(Settings(tf_protocol='grpc'))\n"
        "t = GrpcTransport(timeout_s=1, health_timeout_s=1)\n"
        "t.build_request('cnn', '1', np.zeros((1, 28, 28, 1), np.float32)).SerializeToString()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_serving')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
