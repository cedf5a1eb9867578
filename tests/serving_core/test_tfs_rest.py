"""TF Serving REST parsing and rendering: model paths, every bad predict body, response shapes."""

from __future__ import annotations

import json
import re

import numpy as np
import orjson
import pytest

from serving_core import contract
from serving_core.errors import InvalidArgument, NotFound
from serving_core.tfs_rest import (
    model_metadata_json,
    parse_model_path,
    parse_predict_body,
    parse_predict_response,
    parse_version,
    predict_response,
    validate_images,
)

IMG = np.linspace(0, 1, 784, dtype=np.float32).reshape(28, 28, 1)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/models/cnn", ("cnn", None, None, None, False)),
        ("/v1/models/cnn/versions/3", ("cnn", 3, None, None, False)),
        ("/v1/models/cnn/metadata", ("cnn", None, None, None, True)),
        ("/v1/models/cnn/versions/2/metadata", ("cnn", 2, None, None, True)),
        ("/v1/models/cnn:predict", ("cnn", None, None, "predict", False)),
        ("/v1/models/cnn/versions/1:predict", ("cnn", 1, None, "predict", False)),
        ("/v1/models/cnn/labels/stable:predict", ("cnn", None, "stable", "predict", False)),
    ],
)
def test_model_paths(path: str, expected: tuple) -> None:
    mp = parse_model_path(path)
    assert (mp.name, mp.version, mp.label, mp.verb, mp.metadata) == expected


@pytest.mark.parametrize(
    ("path", "exc"),
    [
        ("/v1/models/", NotFound),
        ("/v1/models/cnn/versions/x", InvalidArgument),
        ("/v1/models/cnn/versions/0:predict", InvalidArgument),
        ("/v1/models/cnn:explain", NotFound),
        ("/v1/models/cnn/extra/thing", NotFound),
    ],
)
def test_bad_model_paths(path: str, exc: type) -> None:
    with pytest.raises(exc):
        parse_model_path(path)


def body(doc: object) -> bytes:
    return json.dumps(doc).encode()


def test_row_and_columnar_forms_parse_to_the_same_batch() -> None:
    batch = [IMG.tolist(), IMG.tolist()]
    forms = [
        {"instances": batch},
        {"instances": [{"images": i} for i in batch]},
        {"inputs": batch},
        {"inputs": {"images": batch}},
        {"signature_name": "serving_default", "instances": batch},
        {"signature_name": "", "instances": batch},
    ]
    for doc in forms:
        req = parse_predict_body(body(doc))
        assert req.images.shape == (2, 28, 28, 1) and req.images.dtype == np.float32
        np.testing.assert_array_equal(req.images[1], IMG)
    assert parse_predict_body(body(forms[0])).format == "row"
    assert parse_predict_body(body(forms[2])).format == "columnar"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"", "Empty request body"),
        (b"{", "Malformed JSON"),
        (b"\xff\xfe", "Malformed JSON"),
        (b'"instances"', "JSON object"),
        (b"{}", "Missing 'instances' or 'inputs'"),
        (b'{"instances": {}}', "must be a list"),
        (b'{"instances": []}', "'instances' is empty"),
        (b'{"inputs": []}', "[N, 28, 28, 1]"),
        (b'{"instances": [], "inputs": []}', "not both"),
        (b'{"instance": [[1]], "extra": 1}', "key in request body (got ['extra', 'instance'])"),
        (b'{"signature_name": 5, "instances": [[1]]}', "'signature_name' must be a string"),
        (b'{"signature_name": "classify", "instances": [[1]]}', "not found in signature def"),
        (b'{"instances": [[[[1]]], [[1]]]}', "nested list of numbers"),  # ragged
        (b'{"instances": [[[["x"]]]]}', "nested list of numbers"),
        (b'{"instances": [{"images": [[1]]}, [[1]]]}', "mixes objects"),
        (b'{"instances": [{"pixels": [[1]]}]}', "Unknown input name"),
        (b'{"inputs": {}}', "Missing input 'images'"),
        (b'{"instances": [1, 2, 3]}', "expected [28, 28, 1]"),
        (b'{"instances": [[[[NaN]]]]}', "expected [28, 28, 1]"),
        (b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),  # not a RecursionError
    ],
)
def test_bad_bodies(raw: bytes, needle: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_predict_body(raw)
    assert needle in info.value.message


def test_non_finite_values_and_batch_limit() -> None:
    img = IMG.copy()
    img[0, 0, 0] = np.nan
    raw = json.dumps({"instances": [img.tolist()]}).replace("NaN", "NaN").encode()
    with pytest.raises(InvalidArgument, match="NaN or infinite"):
        parse_predict_body(raw)
    with pytest.raises(InvalidArgument, match="Task size 3 is larger than maximum input batch size 2"):
        parse_predict_body(body({"instances": [IMG.tolist()] * 3}), max_batch_size=2)


def test_responses_have_tf_serving_shapes_and_round_trip() -> None:
    outputs: dict[str, np.ndarray] = {
        "probabilities": np.full((2, 10), 0.1, dtype=np.float32),
        "classes": np.array([3, 4], dtype=np.int64),
    }
    row = orjson.loads(predict_response("row", outputs))
    assert list(row) == ["predictions"] and row["predictions"][1]["classes"] == 4
    assert len(row["predictions"][0]["probabilities"]) == 10
    col = orjson.loads(predict_response("columnar", outputs))
    assert col == {"outputs": {"probabilities": [[pytest.approx(0.1)] * 10] * 2, "classes": [3, 4]}}
    for doc in (row, col):
        back = parse_predict_response(doc)
        np.testing.assert_array_equal(back["classes"], outputs["classes"])
        np.testing.assert_allclose(back["probabilities"], outputs["probabilities"])


def test_metadata_shape() -> None:
    doc = model_metadata_json("cnn", 3, {"serving_default": {}})
    assert doc["model_spec"] == {"name": "cnn", "signature_name": "", "version": "3"}
    assert doc["metadata"]["signature_def"]["signature_def"] == {"serving_default": {}}


def _general_path(body: bytes):
    """What parse_predict_body answers when its flat fast path is not taken (a second key forces it)."""
    doc = json.loads(body)
    doc["signature_name"] = "serving_default"
    return parse_predict_body(json.dumps(doc).encode())


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("key", ["instances", "inputs"])
@pytest.mark.parametrize("indent", [None, 1])
def test_fast_path_agrees_with_general_path(n: int, key: str, indent: int | None) -> None:
    images = np.random.default_rng(n).random((n, 28, 28, 1), dtype=np.float32)
    body = json.dumps({key: images.tolist()}, indent=indent).encode()
    fast, general = parse_predict_body(body), _general_path(body)
    assert fast.format == general.format == ("row" if key == "instances" else "columnar")
    np.testing.assert_array_equal(fast.images, general.images)
    np.testing.assert_array_equal(fast.images, images)


@pytest.mark.parametrize(
    "tensor",
    [
        np.zeros((1, 28, 28, 2)).tolist(),  # wrong channel count
        np.zeros((2, 28, 27, 1)).tolist(),  # wrong width
        [np.zeros((28, 28, 1)).tolist(), np.zeros((28, 27, 1)).tolist()],  # ragged batch
        np.zeros((28, 28, 1)).tolist(),  # missing batch dimension
    ],
)
def test_fast_path_never_accepts_what_the_general_path_rejects(tensor: list) -> None:
    body = orjson.dumps({"instances": tensor})
    with pytest.raises(InvalidArgument, match="shape"):
        parse_predict_body(body)


def _one_image_body(first_leaf: str = "[0.5]", prefix: str = "", suffix: str = "") -> bytes:
    """A valid one-image row body whose first [28, 28, 1] leaf and surroundings are replaced by text."""
    leaves = ", ".join([first_leaf] + ["[0.25]"] * 27)
    rows = ", ".join([f"[{leaves}]"] + ["[" + ", ".join(["[0.25]"] * 28) + "]"] * 27)
    return f'{prefix}{{"instances": [[{rows}]]}}{suffix}'.encode()


@pytest.mark.parametrize(
    ("first_leaf", "prefix", "suffix"),
    [
        ("[+0.5]", "", ""),  # JSON has no leading plus
        ("[01]", "", ""),  # nor leading zeros
        ("[.5]", "", ""),
        ("[5.]", "", ""),
        ("[1e]", "", ""),
        ("[--1]", "", ""),
        ("[0.5 0.5]", "", ""),  # two numbers, no comma: same skeleton as one
        ("[]", "", ""),  # an empty leaf: same skeleton as a full one
        ("[0.5]", "", "\x0c"),  # form feed is not JSON whitespace
        ("[0.5]", "\x0b", ""),
        ("[0.5]", "", "}"),  # trailing garbage
        ("[0.5]", "", " x"),
        ("[1e39]", "", ""),  # valid JSON, but infinite once float32
        ("[NaN]", "", ""),
    ],
)
def test_fast_path_rejects_exactly_what_json_and_validation_reject(first_leaf: str, prefix: str, suffix: str) -> None:
    from serving_core.tfs_rest import _fast_parse

    body = _one_image_body(first_leaf, prefix, suffix)
    assert parse_predict_body(_one_image_body()).images.shape == (1, 28, 28, 1)  # the unmutated body is fine
    with pytest.raises(InvalidArgument):
        parse_predict_body(body)
    if first_leaf != "[1e39]":  # that one parses and then fails validation, inside the fast path
        assert _fast_parse(body, None) is None


@pytest.mark.parametrize(
    ("first_leaf", "needle"),
    [
        ('["0.5"]', "found a string"),  # numpy would happily convert these four to floats
        ("[true]", "found a boolean"),
        ("[false]", "found a boolean"),
        ("[null]", "found a null"),
        ("[1" + "0" * 400 + "]", "too large for float32"),  # an int no float holds: was an OverflowError (500)
    ],
)
def test_non_numbers_and_huge_integers_in_a_well_shaped_image_are_invalid(first_leaf: str, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        parse_predict_body(_one_image_body(first_leaf))


def test_fast_path_accepts_json_whitespace_around_the_tensor() -> None:
    body = _one_image_body(prefix=" \r\n\t", suffix="\n \t\r")
    spaced = body.replace(b'{"instances": ', b'{ \n"instances"\t:\r\n ')
    from serving_core.tfs_rest import _fast_parse

    for raw in (body, spaced):
        fast = _fast_parse(raw, None)
        assert fast is not None
        np.testing.assert_array_equal(fast.images, _general_path(raw).images)


@pytest.mark.parametrize(
    "text", ["²", "1²", "٣", "0", "-1", "+1", " 1", "1" * 20, "1" * 5000, "", str(2**63), "9" * 19]
)
def test_versions_are_positive_ascii_integers(text: str) -> None:
    with pytest.raises(InvalidArgument, match="Model version must be a positive integer"):
        parse_version(text)
    if text:  # the same through the URL parser (int("²") used to escape it as a ValueError, a 500)
        with pytest.raises(InvalidArgument, match="Model version must be a positive integer"):
            parse_model_path(f"/v1/models/cnn/versions/{text}:predict")


def test_version_parses() -> None:
    assert parse_version("7") == 7
    assert parse_version("9223372036854775807") == 2**63 - 1


@pytest.mark.parametrize(
    ("first_leaf", "needle"),
    [
        ("[255]", "got values from 0.25 to 255; 0-255 pixel values must be divided by 255"),
        ("[-0.5]", "got values from -0.5 to 0.25"),
        ("[3e38]", "got values from 0.25 to 3e+38"),
        ("[1.0000001]", "must lie in [0, 1]"),
    ],
)
def test_contract_range_is_enforced_only_when_asked_alike_on_both_parse_paths(first_leaf: str, needle: str) -> None:
    from serving_core.tfs_rest import _fast_parse

    body = _one_image_body(first_leaf)
    # Without a range (the compat server, like TF Serving): any finite value.
    assert parse_predict_body(body).images.shape == (1, 28, 28, 1)
    with pytest.raises(InvalidArgument, match=re.escape(needle)):
        parse_predict_body(body, value_range=contract.INPUT_RANGE)
    with pytest.raises(InvalidArgument, match=re.escape(needle)):
        _fast_parse(body, None, contract.INPUT_RANGE)  # the fast path applies it too, not only the general one
    # Objects take the general path: same rule, same message.
    doc = orjson.loads(body)
    general = orjson.dumps({"instances": [{"images": doc["instances"][0]}]})
    with pytest.raises(InvalidArgument, match=re.escape(needle)):
        parse_predict_body(general, value_range=contract.INPUT_RANGE)
    assert parse_predict_body(_one_image_body("[1.0]"), value_range=contract.INPUT_RANGE).images.max() == 1.0


def test_nan_is_named_as_such_under_a_range() -> None:
    arr = np.full((1, 28, 28, 1), 0.5, dtype=np.float32)
    arr[0, 0, 0, 0] = np.nan
    with pytest.raises(InvalidArgument, match="NaN or infinite"):
        validate_images(arr, value_range=contract.INPUT_RANGE)


@pytest.mark.parametrize("token", ["NaN", "-Infinity"])
def test_a_large_body_with_nan_is_named_without_the_lenient_parser(token: str) -> None:
    # 100 images (~1.2 MB, past LENIENT_PARSE_MAX_BYTES) with one non-finite value: the same message as a
    # small body gets, from the strict parser's refusal (the stdlib parser held the GIL for seconds).
    from serving_core.tfs_rest import LENIENT_PARSE_MAX_BYTES

    images = np.full((100, 28, 28, 1), 0.123456789, dtype=np.float64).tolist()
    images[7][3][3][0] = float("nan")
    body = json.dumps({"instances": images}).replace("NaN", token).encode()
    assert len(body) > LENIENT_PARSE_MAX_BYTES
    with pytest.raises(InvalidArgument, match="contains NaN or infinite values"):
        parse_predict_body(body)
    with pytest.raises(InvalidArgument, match=r"Malformed JSON in request body: .*line 1 column"):
        parse_predict_body(body.replace(token.encode(), b"0.5").replace(b"]]]]}", b"]]]}"))


def test_an_oversized_batch_is_refused_before_its_numbers_are_parsed() -> None:
    # The numbers here are not even valid JSON ("0..5"): the batch count, read from the bracket skeleton,
    # refuses the body first. Parsing a 14 MB body only to refuse it held the GIL for up to 0.5 s.
    image = "[" + ",".join(["[" + ",".join(["[0..5]"] * 28) + "]"] * 28) + "]"
    body = ('{"instances": [' + ",".join([image] * 3) + "]}").encode()
    with pytest.raises(InvalidArgument, match="Task size 3 is larger than maximum input batch size 2"):
        parse_predict_body(body, max_batch_size=2)
    with pytest.raises(InvalidArgument, match="Malformed JSON"):  # within the cap, the numbers are read
        parse_predict_body(body, max_batch_size=3)


def test_an_integer_of_thousands_of_digits_is_named_without_pythons_advice() -> None:
    # orjson refuses it; the stdlib parser's error ("use sys.set_int_max_str_digits()") was passed on.
    body = b'{"instances": [[[[' + b"1" * 5000 + b"]]]]}"
    with pytest.raises(InvalidArgument, match="a number too large for float32") as info:
        parse_predict_body(body)
    assert "sys." not in info.value.message
