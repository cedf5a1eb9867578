"""The two protobuf messages the load generator needs, in protobuf wire format by hand.

`tensorflow_serving.apis` imports all of TensorFlow (seconds and hundreds of MB per worker process);
the generator only builds PredictRequests and reads `classes` from PredictResponses, which takes a
few lines. tests/loadtest/test_grpc_wire.py checks both against the real predict_pb2.
"""

from __future__ import annotations

import struct

import numpy as np

DT_FLOAT = 1
DT_INT64 = 9


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def encode_predict_request(
    batch: np.ndarray, model_name: str = "cnn", signature: str = "serving_default", input_name: str = "images"
) -> bytes:
    """Serialized tensorflow.serving.PredictRequest with one float32 tensor in tensor_content."""
    arr = np.ascontiguousarray(batch, dtype=np.float32)
    shape = b"".join(_field(2, _field_varint(1, int(d))) for d in arr.shape)
    tensor = _field_varint(1, DT_FLOAT) + _field(2, shape) + _field(4, arr.tobytes())
    spec = _field(1, model_name.encode()) + _field(3, signature.encode())
    entry = _field(1, input_name.encode()) + _field(2, tensor)
    return _field(1, spec) + _field(2, entry)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, wire type, value) for one message level."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire == 1:
            yield number, wire, buf[pos : pos + 8]
            pos += 8
        elif wire == 5:
            yield number, wire, buf[pos : pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _tensor_int64(tensor: bytes) -> list[int]:
    content = b""
    values: list[int] = []
    for number, wire, value in _fields(tensor):
        if number == 4 and wire == 2:
            content = value
        elif number == 10 and wire == 2:  # packed int64_val
            pos = 0
            while pos < len(value):
                v, pos = _read_varint(value, pos)
                values.append(v - (1 << 64) if v >= 1 << 63 else v)
        elif number == 10 and wire == 0:
            values.append(value)
    if content:
        return list(struct.unpack(f"<{len(content) // 8}q", content))
    return values


def decode_output_int64(response: bytes, output: str = "classes") -> list[int] | None:
    """The int64 values of one output of a serialized PredictResponse (None when it is absent)."""
    for number, wire, value in _fields(response):
        if number == 1 and wire == 2:  # outputs map entry
            key, tensor = b"", b""
            for n, _w, v in _fields(value):
                if n == 1:
                    key = v
                elif n == 2:
                    tensor = v
            if key.decode() == output:
                return _tensor_int64(tensor)
    return None
