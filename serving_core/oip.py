"""Open Inference Protocol (KServe v2) `infer` bodies for this model, JSON and binary.

JSON tensors are the protocol's base form. The binary tensor data extension (KServe's and Triton's
`binary_tensor_data`) puts a tensor's raw bytes after the JSON object instead: little-endian, row
major, no padding, the JSON's length in the `Inference-Header-Content-Length` header and each
tensor's byte count in its `parameters.binary_data_size`. Outputs come back the same way when asked
(`parameters.binary_data` on an output, or `parameters.binary_data_output` on the request).

torch_service parses requests and renders answers here; the gateway builds its binary requests to
torch_service and reads the answers here too, so both ends agree by import.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from serving_core import contract
from serving_core.errors import InvalidArgument
from serving_core.tfs_rest import check_batch_shape, to_float32_array, validate_images

HEADER_LENGTH = "inference-header-content-length"
_ITEMSIZE = {"<f4": 4, "<i8": 8}
BINARY_CONTENT_TYPE = "application/octet-stream"
EXTENSIONS = ["binary_tensor_data"]

# name -> (datatype, shape as the metadata API reports it, little-endian numpy dtype of its binary form)
OUTPUT_TENSORS: dict[str, tuple[str, list[int], str]] = {
    contract.OUTPUT_PROBABILITIES: ("FP32", [-1, contract.NUM_CLASSES], "<f4"),
    contract.OUTPUT_CLASSES: ("INT64", [-1], "<i8"),
}


_BYTE_COUNT = re.compile(r"[0-9]{1,15}")  # ASCII digits (str.isdigit() also takes "²"), at most 1 PB


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    images: np.ndarray
    outputs: tuple[str, ...]  # requested output names, in the order asked for
    binary_outputs: frozenset[str] = frozenset()  # those to answer as binary data


def split_binary(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON part, binary part) of a body, from the `Inference-Header-Content-Length` header's value."""
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not _BYTE_COUNT.fullmatch(text):
        raise InvalidArgument(f"Inference-Header-Content-Length must be a byte count, got '{header_length[:32]}'")
    n = int(text)
    if n > len(body):
        raise InvalidArgument(f"Inference-Header-Content-Length is {n}, but the body has only {len(body)} bytes")
    return body[:n], body[n:]


def _binary_size(tensor: dict[str, Any], name: str) -> int | None:
    params = tensor.get("parameters")
    if params is None:
        return None
    if not isinstance(params, dict):
        raise InvalidArgument(f"Input '{name}' 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"Input '{name}' binary_data_size must be a non-negative integer, got {size!r}")
    return size


def _wants_binary(params: object, key: str, where: str) -> bool:
    if params is None:
        return False
    if not isinstance(params, dict):
        raise InvalidArgument(f"{where} 'parameters' must be an object")
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgument(f"{where} parameter '{key}' must be true or false, got {value!r}")
    return value


def parse_infer_body(
    body: bytes,
    *,
    header_length: str | None = None,
    max_batch_size: int | None = None,
    value_range: tuple[float, float] | None = None,
) -> InferRequest:
    """Validate an OIP inference request for this model; InvalidArgument names what to fix."""
    if not body:
        raise InvalidArgument("Empty request body: expected a JSON object with 'inputs'")
    head, binary = split_binary(body, header_length)
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        if b"NaN" in head or b"Infinity" in head:  # as the v1 API names them (its parser reads the tokens)
            raise InvalidArgument(f"Input '{contract.INPUT_NAME}' contains NaN or infinite values") from None
        # The header hint only where binary data is likely what broke the JSON: bytes no JSON text has.
        binary_like = header_length is None and (b"\x00" in head or not _is_utf8(head))
        hint = " (binary tensor data needs the Inference-Header-Content-Length header)" if binary_like else ""
        raise InvalidArgument(f"Malformed JSON in request body: {exc}{hint}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("Request body must be a JSON object with 'inputs'")
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise InvalidArgument("'id' must be a string")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgument(f"'inputs' must be a non-empty list with one tensor named '{contract.INPUT_NAME}'")
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidArgument(f"Expected exactly one input tensor object ('{contract.INPUT_NAME}'), got {len(inputs)}")
    tensor = inputs[0]
    name = tensor.get("name")
    if name != contract.INPUT_NAME:
        raise InvalidArgument(f"Unknown input {name!r}; this model has one input named '{contract.INPUT_NAME}'")
    if tensor.get("datatype") != "FP32":
        raise InvalidArgument(f"Input '{name}' must have datatype FP32, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidArgument(f"Input '{name}' needs 'shape' as a list of non-negative integers, got {shape!r}"[:300])
    check_batch_shape(shape)  # before any array is built: numpy refuses some shapes with its own errors
    size = _binary_size(tensor, name)
    if size is not None:
        if "data" in tensor:
            raise InvalidArgument(f"Input '{name}' has both 'data' and binary_data_size: send one of them")
        if header_length is None:
            raise InvalidArgument(
                f"Input '{name}' has binary_data_size but the request has no Inference-Header-Content-Length header"
            )
        needed = math.prod(shape) * 4
        if size != needed:
            raise InvalidArgument(
                f"Input '{name}' binary_data_size is {size}, but shape {shape} of FP32 needs {needed}"
            )
        if size != len(binary):
            raise InvalidArgument(
                f"Input '{name}' binary_data_size is {size}, but {len(binary)} bytes follow the JSON header"
            )
        arr = np.frombuffer(binary, dtype="<f4").astype(np.float32).reshape(shape)  # a writable copy for torch
    else:
        if binary:
            raise InvalidArgument(f"{len(binary)} bytes follow the JSON header, but no input has binary_data_size")
        if "data" not in tensor:
            raise InvalidArgument(f"Input '{name}' has no 'data' (or binary_data_size with binary tensor data)")
        # The TF-REST parser's conversion: strings, booleans and nulls are refused, not turned into floats.
        arr = to_float32_array(
            tensor["data"], f"Input '{name}' data", "numbers (flat, or nested to match 'shape')", raw=head
        )
        if arr.size != math.prod(shape):
            raise InvalidArgument(f"Input '{name}' has {arr.size} values but shape {shape} needs {math.prod(shape)}")
        if arr.ndim > 1 and list(arr.shape) != shape:
            raise InvalidArgument(f"Input '{name}' nested data has shape {list(arr.shape)}, but 'shape' says {shape}")
        arr = arr.reshape(shape)
    images = validate_images(arr, max_batch_size, value_range)
    all_binary = _wants_binary(doc.get("parameters"), "binary_data_output", "Request")
    wanted = doc.get("outputs")
    names: tuple[str, ...] = contract.OUTPUT_NAMES
    binary_outputs = set(names) if all_binary else set()
    if wanted is not None:
        if not isinstance(wanted, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted
        ):
            raise InvalidArgument("'outputs' must be a list of objects with a string 'name'")
        names = tuple(o["name"] for o in wanted)
        unknown = [n for n in names if n not in OUTPUT_TENSORS]
        if unknown:
            raise InvalidArgument(f"Unknown output(s) {unknown}; this model has {list(contract.OUTPUT_NAMES)}"[:300])
        if len(set(names)) != len(names):
            raise InvalidArgument(f"Output(s) requested more than once: {list(names)}")
        binary_outputs = set()
        for o in wanted:
            params = o.get("parameters")
            # An output's own `binary_data` overrides the request's `binary_data_output` (the extension's rule).
            if isinstance(params, dict) and "binary_data" in params:
                if _wants_binary(params, "binary_data", f"Output '{o['name']}'"):
                    binary_outputs.add(o["name"])
            else:
                _wants_binary(params, "binary_data", f"Output '{o['name']}'")  # a non-object is still refused
                if all_binary:
                    binary_outputs.add(o["name"])
    return InferRequest(req_id, images, names, frozenset(binary_outputs))


def infer_response(
    model: str, version: int, req: InferRequest, outputs: dict[str, np.ndarray]
) -> tuple[bytes, int | None]:
    """(body, JSON header length when binary outputs follow it, else None)."""
    tensors = []
    blobs: list[bytes] = []
    for name in req.outputs:
        arr = outputs[name]
        datatype, _, wire = OUTPUT_TENSORS[name]
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if name in req.binary_outputs:
            blob = np.ascontiguousarray(arr, dtype=wire).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = arr.ravel()
        tensors.append(tensor)
    doc: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": tensors}
    if req.id is not None:
        doc["id"] = req.id
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


# ------------------------------------------------------------------------------ the client side
# The gateway's request head for a batch of n images, with the n and the byte count filled in per call:
# formatting two integers costs less than building and serializing the nested dicts every time.
_REQUEST_HEAD = (
    orjson.dumps(
        {
            "inputs": [
                {
                    "name": contract.INPUT_NAME,
                    "shape": ["N", *contract.INSTANCE_SHAPE],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": "SIZE"},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    .replace(b'"N"', b"%d")
    .replace(b'"SIZE"', b"%d")
)
_FP32_LE = np.dtype("<f4")


def binary_infer_request(images: np.ndarray) -> tuple[bytes, int]:
    """(body, JSON header length) of a request sending `images` ([N, 28, 28, 1]) as binary and asking
    for binary outputs."""
    if images.shape[1:] != contract.INSTANCE_SHAPE:
        raise ValueError(f"images of shape {list(images.shape)}, expected [N, 28, 28, 1]")
    raw = (images if images.dtype == _FP32_LE else images.astype(_FP32_LE)).tobytes()  # C order, copied once
    head = _REQUEST_HEAD % (len(images), len(raw))
    return head + raw, len(head)


def read_infer_response(body: bytes, header_length: str | None) -> tuple[str | None, dict[str, np.ndarray]]:
    """(model_version, output name -> array) of an answer with JSON or binary outputs. A malformed
    answer raises ValueError (InvalidArgument for a bad header length, KeyError or TypeError for
    missing or mistyped fields); callers treat all of them as a bad upstream answer."""
    head, binary = split_binary(body, header_length) if header_length is not None else (body, b"")
    doc = orjson.loads(head)
    outputs: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in doc["outputs"]:
        name = tensor["name"]
        _, _, wire = OUTPUT_TENSORS[name]
        shape = tuple(int(d) for d in tensor["shape"])
        params = tensor.get("parameters") or {}
        if not isinstance(params, dict):
            raise ValueError(f"output {name!r} has parameters that are not an object")
        size = params.get("binary_data_size")
        if size is None:
            try:
                outputs[name] = np.asarray(tensor["data"], dtype=wire).reshape(shape)
            except OverflowError:
                raise ValueError(f"output {name!r} has a value out of range for {wire}") from None
            continue
        count = math.prod(shape)
        if not isinstance(size, int) or size != count * _ITEMSIZE[wire]:
            raise ValueError(f"output {name!r} of shape {list(shape)} says binary_data_size {size!r}")
        if offset + size > len(binary):
            raise ValueError(f"output {name!r} says {size} bytes, but only {len(binary) - offset} are left")
        arr = np.frombuffer(binary, dtype=wire, count=count, offset=offset)
        outputs[name] = arr if len(shape) == 1 else arr.reshape(shape)
        offset += size
    if offset != len(binary):
        raise ValueError(f"{len(binary) - offset} bytes after the last binary output")
    version = doc.get("model_version")
    return (str(version) if version is not None else None), outputs


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
