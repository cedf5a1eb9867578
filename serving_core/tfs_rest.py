"""TensorFlow Serving's REST API (g3doc/api_rest.md) for this model: parse requests, render responses.

Both model servers and the gateway use these functions, so every component accepts and rejects
exactly the same bodies with exactly the same messages.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from serving_core import contract
from serving_core.errors import InvalidArgument, NotFound

RequestFormat = Literal["row", "columnar"]

# TF Serving's own URL grammar (HttpRestApiHandler::kPathRegex) plus the metadata suffix.
_MODEL_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>[^/:]+)|/(?P<resource>metadata))?/?$"
)


# ASCII digits only: str.isdigit() also takes "²", which int() then refuses. At most int64's 19 digits
# (TF Serving's version type); longer strings would also run into int()'s 4300-digit limit.
_VERSION = re.compile(r"[0-9]{1,19}")


_INT64_MAX = 2**63 - 1


def parse_version(text: str) -> int:
    """A model version from a URL or query: a positive integer, else InvalidArgument (400)."""
    # Versions are int64 in TF Serving's protos: a 19-digit number above that is no version either
    # (the gateway's gRPC request could not even carry it).
    if _VERSION.fullmatch(text) and 0 < int(text) <= _INT64_MAX:
        return int(text)
    raise InvalidArgument(f"Model version must be a positive integer, got '{text[:32]}'")


@dataclass(frozen=True)
class ModelPath:
    name: str
    version: int | None
    label: str | None
    verb: str | None  # "predict", "classify", "regress", or None
    metadata: bool


def unsupported_method(method: str) -> str:
    """The message TF Serving (2.x, default flags) gives for Classify or Regress on this model's only
    signature, a predict signature: classifier.cc and regressor.cc check the signature's shape, not its
    method name (--enable_signature_method_name_check is off), and stop at their first mismatch."""
    if method == "classify":  # PreProcessClassification: one input named "inputs"
        return (
            f"No classification inputs found in SignatureDef: '{contract.SIGNATURE_NAME}' has the input "
            f"'{contract.INPUT_NAME}' (a predict signature: use :predict)"
        )
    return "Expected one output Tensor."  # PreProcessRegression: the signature has two outputs


def parse_model_path(path: str) -> ModelPath:
    """Split `/v1/models/NAME[/versions/N][:verb|/metadata]`; NotFound/InvalidArgument otherwise."""
    m = _MODEL_PATH.match(path)
    if m is None:
        raise NotFound(f"Malformed request: {path}")
    version = parse_version(m["version"]) if m["version"] is not None else None
    verb = m["verb"]
    if verb is not None and verb not in ("predict", "classify", "regress"):
        raise NotFound(f"Unsupported verb '{verb}' in {path}")
    return ModelPath(m["name"], version, m["label"], verb, m["resource"] == "metadata")


@dataclass(frozen=True)
class PredictRequest:
    format: RequestFormat
    signature_name: str
    images: np.ndarray  # float32 [N, 28, 28, 1], finite


# Above this, a body strict JSON refuses is not handed to the lenient parser (below).
LENIENT_PARSE_MAX_BYTES = 1 << 20


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        strict_error = exc
    if len(body) > LENIENT_PARSE_MAX_BYTES:
        # The stdlib parser reads numbers at ~10 MB/s and holds the GIL throughout: a 48 MB body with
        # one NaN kept every other request of the gateway waiting for 3.6 s. Any valid predict body is far
        # smaller (32 images are ~0.6 MB), so a large one is refused on the strict parser's word.
        if b"NaN" in body or b"Infinity" in body:
            raise InvalidArgument(_NOT_FINITE)
        raise InvalidArgument(f"Malformed JSON in request body: {strict_error}")
    # api_rest.md allows NaN/Infinity tokens that strict JSON (orjson) rejects; parse them with the
    # lenient stdlib parser so the error the client sees is about the values, not the syntax.
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        if "integer string conversion" in str(exc):  # Python's own limit, and its advice to raise it
            raise InvalidArgument(
                f"Input '{contract.INPUT_NAME}' contains a number too large for float32 (thousands of digits)"
            ) from None
        raise InvalidArgument(f"Malformed JSON in request body: {exc}") from None
    except RecursionError:
        raise InvalidArgument("Malformed JSON in request body: nested too deeply") from None


_JSON_TYPE = {str: "string", bool: "boolean", type(None): "null", dict: "object", list: "list"}


def to_float32_array(
    value: Any,
    what: str,
    layout: str = "a nested list of numbers forming a [N, 28, 28, 1] tensor",
    raw: bytes | None = None,
) -> np.ndarray:
    """JSON numbers -> float32 array; anything else (strings, booleans, nulls, ragged lists) is InvalidArgument.

    `raw`, the body `value` was parsed from, lets the common case skip a per-value type scan."""
    # numpy would turn "0.5", true and null into floats (null as NaN); TF Serving rejects any JSON value
    # that is not a number for a float input, and so do we. Inferring the dtype first shows strings
    # (kind U) and nulls or huge integers (kind O) at numpy's speed. Only booleans mixed with numbers
    # hide (upcast to numbers); JSON spells them `true`/`false`, so without those bytes in the body
    # (no valid key or value contains them) the per-value scan is skipped.
    try:
        inferred = np.asarray(value)
        if inferred.dtype.kind in "fiu":
            if raw is None or b"true" in raw or b"false" in raw:
                _check_numbers(value, what)
            return inferred.astype(np.float32)
    except (ValueError, TypeError, OverflowError):
        pass  # ragged, or mixed kinds: the float32 conversion below names the problem
    try:
        arr = np.asarray(value, dtype=np.float32)
    except OverflowError:
        # An integer literal beyond any float (JSON allows any number of digits).
        raise InvalidArgument(f"Input '{contract.INPUT_NAME}' contains a number too large for float32") from None
    except (ValueError, TypeError) as exc:
        # Ragged nesting, strings, objects: numpy names the problem; say where it was.
        raise InvalidArgument(f"{what} must be {layout}: {exc}") from None
    _check_numbers(value, what)
    return arr


def _check_numbers(value: Any, what: str) -> None:
    """InvalidArgument naming the first JSON value in `value` that is not a number."""
    leaves = np.asarray(value, dtype=object).ravel().tolist() if isinstance(value, list) else [value]
    kinds = set(map(type, leaves))
    kinds.discard(float)
    kinds.discard(int)
    if kinds:
        bad = next(x for x in leaves if type(x) not in (float, int))
        kind = _JSON_TYPE.get(type(bad), type(bad).__name__)
        raise InvalidArgument(
            f"{what} must contain only numbers; found a {kind} ({json.dumps(bad)[:40]}) where a float was expected"
        )


def _named_input(obj: dict[str, Any], where: str) -> Any:
    unknown = sorted(set(obj) - {contract.INPUT_NAME})
    if unknown:
        raise InvalidArgument(
            f"Unknown input name(s) {unknown} in {where}; this model has one input named '{contract.INPUT_NAME}'"
        )
    if contract.INPUT_NAME not in obj:
        raise InvalidArgument(f"Missing input '{contract.INPUT_NAME}' in {where}")
    return obj[contract.INPUT_NAME]


# A number beyond float32's range (1e39) becomes infinite when the body is read as float32: say so.
_NOT_FINITE = (
    f"Input '{contract.INPUT_NAME}' contains NaN or infinite values (or numbers beyond float32's range, about ±3.4e38)"
)


def check_batch_shape(shape: tuple[int, ...] | list[int]) -> None:
    """InvalidArgument unless `shape` is [N, 28, 28, 1] (checked before any array of it is built)."""
    if len(shape) != 4 or tuple(shape[1:]) != contract.INSTANCE_SHAPE:
        got = list(shape[1:])[:8]  # a declared shape can be any length; the message need not be
        raise InvalidArgument(
            f"Input '{contract.INPUT_NAME}' must have shape [N, 28, 28, 1] (NHWC, float32 in [0, 1]); "
            f"each instance has shape {got}, expected {list(contract.INSTANCE_SHAPE)}"
        )


def validate_images(
    arr: np.ndarray, max_batch_size: int | None = None, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Check rank, shape, batch size and finiteness (and with `value_range`, the values) of a batch;
    returns it as contiguous float32.

    `value_range` is the model contract's (contract.INPUT_RANGE), enforced by the gateway and
    torch_service. The compat server passes None: any finite value (TF Serving checks no range either, and
    would even run NaN, which every server here refuses)."""
    check_batch_shape(arr.shape)
    if arr.shape[0] == 0:
        raise InvalidArgument("Request has no instances: send at least one [28, 28, 1] image")
    if max_batch_size is not None and arr.shape[0] > max_batch_size:
        # TF Serving's batcher's wording, which both backends use too: one message whoever rejects it.
        raise InvalidArgument(f"Task size {arr.shape[0]} is larger than maximum input batch size {max_batch_size}")
    if value_range is None:
        if not np.isfinite(arr).all():
            raise InvalidArgument(_NOT_FINITE)
    else:
        lo, hi = value_range
        least, most = float(arr.min()), float(arr.max())
        if not (lo <= least and most <= hi):  # NaN compares false: caught here too, then named below
            if not np.isfinite(arr).all():
                raise InvalidArgument(_NOT_FINITE)
            looks_8bit = least >= 0 and 2 <= most <= 255  # raw pixel values, the classic slip
            hint = "; 0-255 pixel values must be divided by 255" if looks_8bit else ""
            raise InvalidArgument(
                f"Input '{contract.INPUT_NAME}' values must lie in [{lo:g}, {hi:g}] (pixels scaled to [0, 1]); "
                f"got values from {_show(least)} to {_show(most)}{hint}"
            )
    return np.ascontiguousarray(arr, dtype=np.float32)


def _show(value: float) -> str:
    """A value for an error message: short (%g), unless that would hide why it was refused ("1" for
    1.0000001, just above the range); then float32's shortest exact form."""
    short = f"{value:g}"
    return short if np.float32(short) == np.float32(value) else str(np.float32(value))


# ------------------------------------------------------------------------------ fast path
# The common body, `{"instances": [[[[0.1], ...]]]}` (or `"inputs"`), costs most of its parse time
# in building 784 one-element Python lists per image and in numpy walking them. For that shape
# only, the numbers are parsed as ONE flat JSON list and the nesting is checked separately on the
# bracket skeleton. Anything else (other keys, objects, odd values, wrong shape) takes the general
# path below, which also writes every error message, so both paths accept and reject alike.
# Only the few bytes before the tensor go through a regex: scanning the whole 10 KB body with one
# (as this path first did) cost 14 us of its 70; the skeleton comparison already rejects any byte
# that is not a digit, sign, point, exponent, JSON whitespace, comma or bracket.
_FAST_HEAD = re.compile(rb'[ \t\n\r]*\{[ \t\n\r]*"(instances|inputs)"[ \t\n\r]*:[ \t\n\r]*')
_JSON_SPACE = b" \t\n\r"
_NUMBER_CHARS = b"0123456789.-+eE" + _JSON_SPACE
_INSTANCE_VALUES = int(np.prod(contract.INSTANCE_SHAPE))


def _skeleton(shape: tuple[int, ...]) -> bytes:
    """Brackets and commas of a dense tensor of `shape` once its numbers and spaces are removed."""
    if not shape:
        return b""
    inner = _skeleton(shape[1:])
    return b"[" + b",".join([inner] * shape[0]) + b"]"


_INSTANCE_SKELETON = _skeleton(contract.INSTANCE_SHAPE)


def _fast_parse(
    body: bytes, max_batch_size: int | None, value_range: tuple[float, float] | None = None
) -> PredictRequest | None:
    m = _FAST_HEAD.match(body)
    if m is None:
        return None
    tail = body[m.end() :].rstrip(_JSON_SPACE)
    if not tail.endswith(b"}"):
        return None
    tensor = tail[:-1].rstrip(_JSON_SPACE)
    skeleton = tensor.translate(None, _NUMBER_CHARS)
    # A batch of n instances has the skeleton "[" + n copies joined by "," + "]".
    n, rest = divmod(len(skeleton) - 1, len(_INSTANCE_SKELETON) + 1)
    if n < 1 or rest or skeleton != b"[" + b",".join([_INSTANCE_SKELETON] * n) + b"]":
        return None
    if max_batch_size is not None and n > max_batch_size:
        # Refused before any number is parsed: a 14 MB body of 1,449 images took 0.2-0.5 s to parse only to
        # be refused, holding the GIL against every other request meanwhile. validate_images' wording.
        raise InvalidArgument(f"Task size {n} is larger than maximum input batch size {max_batch_size}")
    try:
        flat = orjson.loads(b"[" + tensor.translate(None, b"[]") + b"]")
        arr = np.asarray(flat, dtype=np.float32)
    except (orjson.JSONDecodeError, ValueError, TypeError):
        return None
    if arr.shape != (n * _INSTANCE_VALUES,):
        return None
    fmt: RequestFormat = "row" if m.group(1) == b"instances" else "columnar"
    images = arr.reshape((n, *contract.INSTANCE_SHAPE))
    return PredictRequest(fmt, contract.SIGNATURE_NAME, validate_images(images, max_batch_size, value_range))


def parse_predict_body(
    body: bytes, *, max_batch_size: int | None = None, value_range: tuple[float, float] | None = None
) -> PredictRequest:
    """Parse and validate a `:predict` body in row (`instances`) or columnar (`inputs`) format."""
    fast = _fast_parse(body, max_batch_size, value_range)
    if fast is not None:
        return fast
    if not body:
        raise InvalidArgument("Empty request body: expected a JSON object with 'instances' or 'inputs'")
    doc = _loads(body)
    if not isinstance(doc, dict):
        raise InvalidArgument("Request body must be a JSON object with 'instances' or 'inputs'")
    signature = doc.get("signature_name", contract.SIGNATURE_NAME)
    if not isinstance(signature, str):
        raise InvalidArgument("'signature_name' must be a string")
    signature = signature or contract.SIGNATURE_NAME
    if signature != contract.SIGNATURE_NAME:
        raise InvalidArgument(
            f'Serving signature name: "{signature}" not found in signature def (available: "{contract.SIGNATURE_NAME}")'
        )
    has_rows, has_cols = "instances" in doc, "inputs" in doc
    if has_rows and has_cols:
        raise InvalidArgument("Request can have either 'instances' (row format) or 'inputs' (columnar), not both")
    # Other top-level keys are ignored, as TF Serving's FillPredictRequestFromJson ignores them (json_tensor.cc
    # looks up only these three): a client that adds, say, "parameters" is served by both. They are named
    # when neither tensor key is there, where they are most likely a misspelling.
    fmt: RequestFormat
    if has_rows:
        fmt = "row"
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise InvalidArgument("'instances' must be a list (one entry per image)")
        if not instances:
            raise InvalidArgument("'instances' is empty: send at least one [28, 28, 1] image")
        if isinstance(instances[0], dict):
            if not all(isinstance(i, dict) for i in instances):
                raise InvalidArgument("'instances' mixes objects and plain tensors")
            instances = [_named_input(i, "an instance") for i in instances]
        arr = to_float32_array(instances, "'instances'", raw=body)
    elif has_cols:
        fmt = "columnar"
        inputs = doc["inputs"]
        if isinstance(inputs, dict):
            inputs = _named_input(inputs, "'inputs'")
        arr = to_float32_array(inputs, "'inputs'", raw=body)
    else:
        others = sorted(set(doc) - {"signature_name"})[:8]
        got = f" (got {others})" if others else ""
        raise InvalidArgument(f"Missing 'instances' or 'inputs' key in request body{got}")
    return PredictRequest(fmt, signature, validate_images(arr, max_batch_size, value_range))


def predict_response(fmt: RequestFormat, outputs: dict[str, np.ndarray]) -> bytes:
    """Render outputs as TF Serving does: a list of per-instance objects (row) or named columns."""
    probs = np.asarray(outputs[contract.OUTPUT_PROBABILITIES], dtype=np.float32)
    classes = np.asarray(outputs[contract.OUTPUT_CLASSES], dtype=np.int64)
    if fmt == "columnar":
        doc: dict[str, Any] = {"outputs": {contract.OUTPUT_PROBABILITIES: probs, contract.OUTPUT_CLASSES: classes}}
    else:
        doc = {
            "predictions": [
                {contract.OUTPUT_PROBABILITIES: p, contract.OUTPUT_CLASSES: c}
                for p, c in zip(probs, classes.tolist(), strict=True)  # tolist: Python ints in one call
            ]
        }
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def parse_predict_response(doc: dict[str, Any]) -> dict[str, np.ndarray]:
    """Inverse of `predict_response` (for the gateway and clients): named numpy outputs."""
    if "predictions" in doc:
        preds = doc["predictions"]
        probs = np.asarray([p[contract.OUTPUT_PROBABILITIES] for p in preds], dtype=np.float32)
        classes = np.asarray([p[contract.OUTPUT_CLASSES] for p in preds], dtype=np.int64)
    elif "outputs" in doc:
        out = doc["outputs"]
        probs = np.asarray(out[contract.OUTPUT_PROBABILITIES], dtype=np.float32)
        classes = np.asarray(out[contract.OUTPUT_CLASSES], dtype=np.int64)
    else:
        raise InvalidArgument("Response has neither 'predictions' nor 'outputs'")
    return {contract.OUTPUT_PROBABILITIES: probs, contract.OUTPUT_CLASSES: classes}


def model_status_json(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """GetModelStatusResponse in proto3 JSON (versions as strings, as TF Serving renders int64)."""
    return {"model_version_status": entries}


def model_metadata_json(name: str, version: int, signature_defs: dict[str, Any]) -> dict[str, Any]:
    """GetModelMetadataResponse as TF Serving's REST metadata endpoint renders it."""
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(version)},
        "metadata": {"signature_def": {"signature_def": signature_defs}},
    }
