"""The two protobuf messages the load generator needs: PredictRequests built once before a run, and
the `classes` output read back from each PredictResponse.

The messages are the gateway's own declarations of TF Serving's (gateway/upstreams/tfs_protos.py):
`tensorflow_serving.apis` would import all of TensorFlow (seconds and hundreds of MB per worker
process). tests/loadtest/test_grpc_wire.py checks both against the real predict_pb2.
"""

from __future__ import annotations

import math

import numpy as np
from google.protobuf.message import DecodeError

from gateway.upstreams.tfs_protos import PredictRequest, PredictResponse

DT_FLOAT = 1
# The integer types a `classes` tensor may come in, and the field holding their values when the
# server did not use tensor_content (tensorflow/core/framework/types.proto, tensor.proto).
_INT_TYPES = {3: (np.int32, "int_val"), 9: (np.int64, "int64_val")}  # DT_INT32, DT_INT64
_MAX_VALUES = 1 << 20  # far above any batch the load generator sends


def encode_predict_request(
    batch: np.ndarray, model_name: str = "cnn", signature: str = "serving_default", input_name: str = "images"
) -> bytes:
    """Serialized tensorflow.serving.PredictRequest with one float32 tensor in tensor_content."""
    arr = np.ascontiguousarray(batch, dtype=np.float32)
    req = PredictRequest()
    req.model_spec.name = model_name
    req.model_spec.signature_name = signature
    tensor = req.inputs[input_name]
    tensor.dtype = DT_FLOAT
    for size in arr.shape:
        tensor.tensor_shape.dim.add().size = size
    tensor.tensor_content = arr.tobytes()
    return req.SerializeToString()


def decode_output_int64(response: bytes, output: str = "classes") -> list[int] | None:
    """The integer values of one output of a serialized PredictResponse (None when it is absent).
    ValueError when the bytes are no PredictResponse or the output is no integer tensor."""
    try:
        resp = PredictResponse.FromString(response)
    except DecodeError as exc:
        raise ValueError(f"undecodable PredictResponse: {exc}") from None
    if output not in resp.outputs:
        return None
    tensor = resp.outputs[output]
    kind = _INT_TYPES.get(tensor.dtype)
    if kind is None:
        raise ValueError(f"output {output!r} has dtype {tensor.dtype}, not int32 or int64")
    dtype, field = kind
    values: list[int]
    if tensor.tensor_content:
        values = np.frombuffer(tensor.tensor_content, dtype=dtype).tolist()
    else:
        values = list(getattr(tensor, field))
    size = math.prod(d.size for d in tensor.tensor_shape.dim)
    if len(values) == 1 and size > 1:  # TF's compact form: one value for the whole shape
        if size > _MAX_VALUES:  # a broken answer's shape must not size our allocation
            raise ValueError(f"output {output!r} claims {size} values")
        values *= size
    return values
