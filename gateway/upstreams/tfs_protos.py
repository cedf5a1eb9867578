"""The TF Serving gRPC messages the gateway sends and reads, without importing TensorFlow.

`tensorflow_serving.apis.predict_pb2` imports `tensorflow.core.framework.tensor_pb2`, and importing
any `tensorflow.*` module runs `tensorflow/__init__.py`: all of TensorFlow. Measured on the 2-vCPU
VM (docs/benchmarks.md), a gateway that imported them was ready 4-5 s after start and held 648 MiB
resident; without them, 0.7 s and 84 MiB. All that for a proxy that only copies a float32 tensor
into a message and reads two tensors back.

So the messages are declared here: the subset of fields the gateway uses, with the same full names,
field numbers and types as tensorflow_serving/apis/*.proto and tensorflow/core/framework/*.proto
(checked against tensorflow-serving-api 2.21; these fields are the same in the TF Serving releases
the compose files deploy). They live in a private descriptor pool, so they never clash with the real ones
when both are loaded in one process (the tests do that). The classes are protobuf's own (the upb
C backend), so parsing is as strict and as fast as with the generated modules. Fields left out
(string_val, half_val, predict_streamed_options, ...) are kept as unknown fields by the parser and
ignored. Enums (DataType, ModelVersionStatus.State, error.Code) are declared as int32: the wire
format is the same varint, and the gateway compares their numbers anyway.

tests/gateway/test_tfs_protos.py checks every field against the real descriptors and sends messages
both ways between these classes and the generated ones.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

_F = descriptor_pb2.FieldDescriptorProto
_INT32, _INT64, _FLOAT, _DOUBLE, _BOOL = _F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_FLOAT, _F.TYPE_DOUBLE, _F.TYPE_BOOL
_STRING, _BYTES, _MESSAGE = _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_MESSAGE
_REPEATED = _F.LABEL_REPEATED

# (name, number, type[, message type][, repeated])
Field = tuple[Any, ...]


def _message(
    container: Any,
    name: str,
    fields: list[Field],
    *,
    nested: tuple[Any, ...] = (),
    map_entry: bool = False,
    oneof: tuple[str, set[str]] | None = None,
) -> Any:
    msg = container.add(name=name)
    if oneof is not None:
        msg.oneof_decl.add(name=oneof[0])
    for spec in fields:
        name_, number, ftype = spec[0], spec[1], spec[2]
        field = msg.field.add(name=name_, number=number, type=ftype, label=_F.LABEL_OPTIONAL)
        for extra in spec[3:]:
            if extra is _REPEATED:
                field.label = _REPEATED
            else:
                field.type_name = extra
        if oneof is not None and name_ in oneof[1]:
            field.oneof_index = 0
    for build in nested:
        build(msg)
    if map_entry:
        msg.options.map_entry = True
    return msg


def _map_of_tensors(entry: str) -> Any:
    # A proto3 map<string, TensorProto> is a repeated nested "...Entry" message with map_entry set.
    def build(parent: Any) -> None:
        _message(
            parent.nested_type,
            entry,
            [("key", 1, _STRING), ("value", 2, _MESSAGE, ".tensorflow.TensorProto")],
            map_entry=True,
        )

    return build


def _tensorflow_file() -> descriptor_pb2.FileDescriptorProto:
    """tensorflow/core/framework/tensor.proto and tensor_shape.proto, the fields the gateway uses."""
    fd = descriptor_pb2.FileDescriptorProto(name="gateway/tfs_subset/tensorflow.proto", package="tensorflow")
    fd.syntax = "proto3"

    def dim(parent: Any) -> None:
        _message(parent.nested_type, "Dim", [("size", 1, _INT64), ("name", 2, _STRING)])

    _message(
        fd.message_type,
        "TensorShapeProto",
        [("dim", 2, _MESSAGE, ".tensorflow.TensorShapeProto.Dim", _REPEATED), ("unknown_rank", 3, _BOOL)],
        nested=(dim,),
    )
    _message(
        fd.message_type,
        "TensorProto",
        [
            ("dtype", 1, _INT32),  # tensorflow.DataType
            ("tensor_shape", 2, _MESSAGE, ".tensorflow.TensorShapeProto"),
            ("version_number", 3, _INT32),
            ("tensor_content", 4, _BYTES),
            ("float_val", 5, _FLOAT, _REPEATED),
            ("double_val", 6, _DOUBLE, _REPEATED),
            ("int_val", 7, _INT32, _REPEATED),
            ("int64_val", 10, _INT64, _REPEATED),
        ],
    )
    return fd


def _serving_file() -> descriptor_pb2.FileDescriptorProto:
    """tensorflow_serving/apis/{model,predict,get_model_status,status}.proto, the fields the gateway uses."""
    fd = descriptor_pb2.FileDescriptorProto(
        name="gateway/tfs_subset/serving.proto",
        package="tensorflow.serving",
        dependency=["google/protobuf/wrappers.proto", "gateway/tfs_subset/tensorflow.proto"],
    )
    fd.syntax = "proto3"
    spec = ".tensorflow.serving.ModelSpec"
    _message(
        fd.message_type,
        "ModelSpec",
        [
            ("name", 1, _STRING),
            ("version", 2, _MESSAGE, ".google.protobuf.Int64Value"),
            ("signature_name", 3, _STRING),
            ("version_label", 4, _STRING),
        ],
        # A version_label after a version clears it, as in TF Serving's own class.
        oneof=("version_choice", {"version", "version_label"}),
    )
    _message(
        fd.message_type,
        "PredictRequest",
        [
            ("model_spec", 1, _MESSAGE, spec),
            ("inputs", 2, _MESSAGE, ".tensorflow.serving.PredictRequest.InputsEntry", _REPEATED),
            ("output_filter", 3, _STRING, _REPEATED),
        ],
        nested=(_map_of_tensors("InputsEntry"),),
    )
    _message(
        fd.message_type,
        "PredictResponse",
        [
            ("outputs", 1, _MESSAGE, ".tensorflow.serving.PredictResponse.OutputsEntry", _REPEATED),
            ("model_spec", 2, _MESSAGE, spec),
        ],
        nested=(_map_of_tensors("OutputsEntry"),),
    )
    _message(fd.message_type, "StatusProto", [("error_code", 1, _INT32), ("error_message", 2, _STRING)])
    _message(
        fd.message_type,
        "ModelVersionStatus",
        [
            ("version", 1, _INT64),
            ("state", 2, _INT32),  # ModelVersionStatus.State: AVAILABLE is 30
            ("status", 3, _MESSAGE, ".tensorflow.serving.StatusProto"),
        ],
    )
    _message(fd.message_type, "GetModelStatusRequest", [("model_spec", 1, _MESSAGE, spec)])
    _message(
        fd.message_type,
        "GetModelStatusResponse",
        [("model_version_status", 1, _MESSAGE, ".tensorflow.serving.ModelVersionStatus", _REPEATED)],
    )
    return fd


POOL = descriptor_pool.DescriptorPool()
POOL.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
POOL.Add(_tensorflow_file())
POOL.Add(_serving_file())


def _class(full_name: str) -> Any:
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


TensorProto = _class("tensorflow.TensorProto")
PredictRequest = _class("tensorflow.serving.PredictRequest")
PredictResponse = _class("tensorflow.serving.PredictResponse")
GetModelStatusRequest = _class("tensorflow.serving.GetModelStatusRequest")
GetModelStatusResponse = _class("tensorflow.serving.GetModelStatusResponse")
