"""TF Serving's gRPC API (port 8500): `tensorflow.serving.PredictionService` and `ModelService`.

Uses tensorflow-serving-api's generated servicers on a grpc.aio server, in the same event loop as
the REST app and over the same ModelRegistry. Status codes and messages follow TF Serving's.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import numpy as np
from google.protobuf import message_factory
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

from serving_core import contract, tfs_rest
from serving_core.errors import FailedPrecondition, Internal, InvalidArgument, ServingError
from tf_serving.compat.model import ModelRegistry

_NP_TO_DT = {np.dtype(np.float32): 1, np.dtype(np.int64): 9}  # DT_FLOAT, DT_INT64 (types.proto)
_VALUE_FIELD = {1: "float_val", 9: "int64_val"}  # their typed repeated fields (tensor.proto)


# types.proto names, for the message TensorFlow gives when a feed has the wrong dtype.
_DT_NAMES = {
    1: "float",
    2: "double",
    3: "int32",
    4: "uint8",
    6: "int8",
    7: "string",
    9: "int64",
    10: "bool",
    19: "half",
}


def check_input_tensor(tensor: Any, *, max_batch_size: int | None, max_elements: int) -> None:
    """Refuse a wrong dtype or shape from the proto's header alone, before any value is decoded.

    A TensorProto may carry a shape and no values (TensorFlow fills such a tensor in), so a 20-byte
    request can name a tensor of gigabytes: it is refused here, cheaply, not after allocating it."""
    if tensor.dtype != 1:
        name = _DT_NAMES.get(tensor.dtype, f"dtype enum {tensor.dtype}")
        raise InvalidArgument(f"Expects arg[0] to be float but {name} is provided")
    shape = [d.size for d in tensor.tensor_shape.dim]
    if len(shape) != 4 or tuple(shape[1:]) != contract.INSTANCE_SHAPE or shape[0] < 0:
        raise InvalidArgument(
            f"Input '{contract.INPUT_NAME}' must have shape [N, 28, 28, 1] (NHWC, float32 in [0, 1]); got {shape}"
        )
    if max_batch_size is not None and shape[0] > max_batch_size:
        raise InvalidArgument(f"Task size {shape[0]} is larger than maximum input batch size {max_batch_size}")
    if shape[0] * int(np.prod(contract.INSTANCE_SHAPE)) > max_elements:
        raise InvalidArgument(f"Input '{contract.INPUT_NAME}' of shape {shape} is larger than any request may carry")


def tensor_to_numpy(tensor: Any) -> np.ndarray:
    """A DT_FLOAT TensorProto (check_input_tensor has seen its dtype and shape) as float32 numpy, read as
    TensorFlow's Tensor::FromProto reads it (tensor.cc): packed `tensor_content`, which must hold exactly
    the shape's values (else TF Serving's INVALID_ARGUMENT "tensor parsing error"), else `float_val`,
    where fewer values than the shape holds are padded with the last one (one value fills the tensor;
    none, zeros) and values beyond the shape are ignored."""
    shape = [d.size for d in tensor.tensor_shape.dim]
    size = int(np.prod(shape))
    what = f"tensor parsing error: {contract.INPUT_NAME}"
    if tensor.tensor_content:  # packed little-endian bytes (what make_tensor_proto writes)
        content = tensor.tensor_content
        if len(content) != 4 * size:
            raise InvalidArgument(
                f"{what} (tensor_content has {len(content)} bytes; shape {shape} needs {4 * size}, "
                f"{size} float32 values)"
            )
        return np.frombuffer(content, dtype="<f4").reshape(shape)
    values = np.asarray(tensor.float_val, dtype=np.float32)[:size]
    if values.size == size:
        return values.reshape(shape)
    out = np.full(size, values[-1] if values.size else 0.0, dtype=np.float32)
    out[: values.size] = values
    return out.reshape(shape)


def numpy_to_tensor(arr: np.ndarray) -> Any:
    """An output tensor as TF Serving writes it: its values in the typed repeated field (`float_val`,
    `int64_val`), not `tensor_content`. RunPredict serializes outputs with Tensor::AsProtoField
    (predict_util.cc, kAsProtoField), so clients written against TF Serving that read
    `outputs[...].float_val` get the values here too."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    dtype = _NP_TO_DT[arr.dtype]
    tensor = tensor_pb2.TensorProto(
        dtype=dtype,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in arr.shape]
        ),
    )
    getattr(tensor, _VALUE_FIELD[dtype]).extend(arr.ravel().tolist())
    return tensor


def _model_version(spec: Any) -> int | None:
    if not spec.name:  # ServerCore::ServableRequestFromModelSpec's check and wording
        raise InvalidArgument("ModelSpec has no name specified.")
    which = spec.WhichOneof("version_choice")
    if which == "version_label":
        raise InvalidArgument(f"Unrecognized servable version label: {spec.version_label}")
    if which == "version":
        if spec.version.value <= 0:
            raise InvalidArgument(f"Model version must be a positive integer, got {spec.version.value}")
        return int(spec.version.value)
    return None


async def _abort(context: grpc.aio.ServicerContext, exc: ServingError) -> None:
    await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: ModelRegistry, *, max_message_bytes: int = 64 * 1024 * 1024) -> None:
        self.registry = registry
        batching = registry.config.batching
        self.max_batch_size = batching.max_batch_size if batching is not None else None
        self.max_elements = max_message_bytes // 4  # as many floats as the largest message could pack

    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        name = request.model_spec.name
        status = "OK"
        try:
            return await self._predict(request)
        except ServingError as exc:
            status = exc.tf_code
            await _abort(context, exc)
        except Exception as exc:
            status = "INTERNAL"
            await _abort(context, Internal(f"{type(exc).__name__}: {exc}"))
        finally:
            m = self.registry.metrics
            m.request_count.inc(name, status)
            m.request_latency.observe((time.perf_counter() - start) * 1e6, name, "predict", "GRPC")

    async def _predict(self, request: Any) -> Any:
        spec = request.model_spec
        version = _model_version(spec)
        sig = spec.signature_name or contract.SIGNATURE_NAME
        if sig != contract.SIGNATURE_NAME:
            # predict_util.cc's status and wording for an unknown signature key.
            raise FailedPrecondition(f'Serving signature key "{sig}" not found.')
        names = set(request.inputs)
        # predict_util.cc's checks and wording: the count first, then the alias.
        if len(names) != 1:
            raise InvalidArgument(
                f"input size does not match signature: {len(names)}!=1 for inputs {sorted(names)}; "
                f"the signature has one input named '{contract.INPUT_NAME}'"
            )
        if names != {contract.INPUT_NAME}:
            raise InvalidArgument(
                f"input tensor alias not found in signature: {next(iter(names))}. "
                f"Inputs expected to be in the set {{{contract.INPUT_NAME}}}."
            )
        seen: set[str] = set()
        for out_name in request.output_filter:  # predict_util.cc's checks and wording
            if out_name not in contract.OUTPUT_NAMES:
                raise InvalidArgument(f"output tensor alias not found in signature: {out_name}")
            if out_name in seen:
                raise InvalidArgument(f"duplicate output tensor alias: {out_name}")
            seen.add(out_name)
        tensor = request.inputs[contract.INPUT_NAME]
        check_input_tensor(tensor, max_batch_size=self.max_batch_size, max_elements=self.max_elements)
        images = tfs_rest.validate_images(tensor_to_numpy(tensor))
        self.registry.manager(spec.name, version=version)  # NOT_FOUND for an unknown model before any work
        served, outputs = await self.registry.predict(spec.name, version, images)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.signature_name = sig
        response.model_spec.version.value = served
        wanted = list(request.output_filter) or list(contract.OUTPUT_NAMES)
        for out_name in wanted:
            response.outputs[out_name].CopyFrom(numpy_to_tensor(outputs[out_name]))
        return response

    async def GetModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            fields = list(request.metadata_field)
            if not fields:
                raise InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
            for f in fields:
                if f != "signature_def":
                    raise InvalidArgument(f"Metadata field {f} is not supported")
            spec = request.model_spec
            version = _model_version(spec)
            with self.registry.acquire(spec.name, version) as (served, loaded):
                sig_map = get_model_metadata_pb2.SignatureDefMap()
                for key, sig in loaded.servable.signature_defs.items():
                    sig_map.signature_def[key].CopyFrom(sig)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = served
            response.metadata["signature_def"].Pack(sig_map)
            return response
        except ServingError as exc:
            await _abort(context, exc)

    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._unsupported(request, context, "classify")

    async def Regress(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._unsupported(request, context, "regress")

    async def _unsupported(self, request: Any, context: grpc.aio.ServicerContext, method: str) -> None:
        """As TF Serving answers Classify/Regress on a model whose only signature is a predict one: the model
        and version are looked up first (NOT_FOUND), then the signature (FAILED_PRECONDITION), then its shape
        is refused (INVALID_ARGUMENT)."""
        try:
            spec = request.model_spec
            version = _model_version(spec)
            with self.registry.acquire(spec.name, version):  # NOT_FOUND for an unknown model or version
                pass
            sig = spec.signature_name or contract.SIGNATURE_NAME
            if sig != contract.SIGNATURE_NAME:
                raise InvalidArgument(f"No signature was found with the name: {sig}")
            raise InvalidArgument(tfs_rest.unsupported_method(method))
        except ServingError as exc:
            await _abort(context, exc)

    async def MultiInference(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not supported by the compat server")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def GetModelStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            # get_model_status_impl.cc: a spec is required, and only a version narrows the answer (a
            # version_label is ignored there: all versions are listed).
            if not request.HasField("model_spec"):
                raise InvalidArgument("Missing ModelSpec")
            spec = request.model_spec
            version = _model_version(spec) if spec.WhichOneof("version_choice") == "version" else None
            if not spec.name:
                raise InvalidArgument("ModelSpec has no name specified.")
            entries = self.registry.manager(spec.name, for_status=True).status(version)
        except ServingError as exc:
            await _abort(context, exc)
            return None
        response = get_model_status_pb2.GetModelStatusResponse()
        for e in entries:
            mvs = response.model_version_status.add()
            mvs.version = int(e["version"])
            mvs.state = get_model_status_pb2.ModelVersionStatus.State.Value(e["state"])
            mvs.status.error_code = _error_code(e["status"]["error_code"])
            mvs.status.error_message = e["status"]["error_message"]
        return response

    async def HandleReloadConfigRequest(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "HandleReloadConfigRequest is not supported: edit models.config and restart"
        )


def _error_code(name: str) -> int:
    from tensorflow_serving.apis import status_pb2

    codes = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type.values_by_name
    return codes[name].number if name in codes else codes["UNKNOWN"].number


class _Undecodable:
    """What a request that is no valid message of its type deserializes to, so it can be refused as the
    client's mistake: grpcio answers a deserializer's exception with UNKNOWN."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.message = f"The request is not a valid {type_name} protocol buffer: {error}"


def _lenient(message_class: Any) -> Any:
    type_name = message_class.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except Exception as exc:  # protobuf's DecodeError, and whatever else a broken message raises
            return _Undecodable(type_name, exc)

    return deserialize


def _refusing_undecodable(method: Any) -> Any:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await method(request, context)

    return handle


def _add_service(server: grpc.aio.Server, service: Any, servicer: Any) -> None:
    """Register `servicer`'s methods for the service's descriptor, as the generated add_*_to_server does,
    but with undecodable requests answered INVALID_ARGUMENT."""
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            _refusing_undecodable(getattr(servicer, method.name)),
            request_deserializer=_lenient(message_factory.GetMessageClass(method.input_type)),
            response_serializer=message_factory.GetMessageClass(method.output_type).SerializeToString,
        )
        for method in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def create_grpc_server(registry: ModelRegistry, *, host: str, port: int, max_message_bytes: int) -> grpc.aio.Server:
    """A grpc.aio server bound to host:port (not started); runs in the caller's event loop."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    _add_service(
        server,
        prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"],
        PredictionService(registry, max_message_bytes=max_message_bytes),
    )
    _add_service(server, model_service_pb2.DESCRIPTOR.services_by_name["ModelService"], ModelService(registry))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:  # grpcio raises where older versions returned 0
        raise OSError(f"cannot bind gRPC port {host}:{port}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {host}:{port}")
    return server
