"""OpenAPI documents that say what the services really answer.

FastAPI documents each route's 200 and, for any route with a parameter, a 422 "Validation Error" in
its own `{"detail": [...]}` shape. Neither HTTP service ever answers that 422 (request validation
errors are mapped to 400 `{"error": ...}`), while every error they do answer (`{"error": "..."}` with
400, 404, 413, 502, ...) was missing, as were the request bodies the handlers read as raw bytes. A
client generated from the document, or a tool that checks answers against it (schemathesis, in
tests/contract/test_openapi.py), would have been wrong about every failure.

- `errors(...)`: the `responses=` of a route, each code with the `ErrorBody` shape;
- `predict_body_schema(...)`: TF Serving's predict body as a JSON Schema exact enough that a body it
  admits is one the servers accept (row or columnar, [N, 28, 28, 1], N up to the batch cap);
- `json_body(...)`: a route's `openapi_extra` for a body the handler reads itself;
- `finish(app, ...)`: drops the 422s nobody answers, and gives path parameters their real patterns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from serving_core import contract


class ErrorBody(BaseModel):
    """Every error answer of every service: one message for a person to read."""

    error: str = Field(description="What went wrong, and where it is useful, what to send instead.")


# What each status means in these services; a route may say more with `errors(..., descriptions=)`.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid request: the message says which part (body, shape, values, version, query).",
    401: "Missing or invalid API key (only when API keys are configured): send `Authorization: Bearer <key>`.",
    404: "Unknown model, version or resource.",
    409: "The resource is not in a state that allows this.",
    413: "Request body larger than the configured limit.",
    415: "Unsupported content type.",
    422: "Well-formed, but nothing to act on.",
    502: "The backend broke the connection or answered something that is not its protocol.",
    503: "No backend replica can take the call now (unreachable, ejected, or its queue is full).",
    504: "The backend did not answer within the configured time limit.",
}


def errors(*codes: int, descriptions: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that may answer these error codes, each as `{"error": ...}`."""
    more = descriptions or {}
    return {code: {"model": ErrorBody, "description": more.get(code, ERROR_DESCRIPTIONS[code])} for code in codes}


def _number() -> dict[str, Any]:
    lo, hi = contract.INPUT_RANGE
    return {"type": "number", "minimum": lo, "maximum": hi}


def image_schema() -> dict[str, Any]:
    """One [28, 28, 1] image as nested JSON arrays."""
    schema = _number()
    for size in reversed(contract.INSTANCE_SHAPE):
        schema = {"type": "array", "minItems": size, "maxItems": size, "items": schema}
    return schema


def predict_body_schema(max_batch_size: int) -> dict[str, Any]:
    """TF Serving's REST predict body for this model's one input (g3doc/api_rest.md, "Request format")."""
    image = image_schema()
    batch = {"type": "array", "minItems": 1, "maxItems": max_batch_size, "items": image}
    named = {
        "type": "object",
        "properties": {contract.INPUT_NAME: image},
        "required": [contract.INPUT_NAME],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "signature_name": {
                "type": "string",
                "enum": [contract.SIGNATURE_NAME, ""],
                "description": "The one signature; empty means the default.",
            },
            "instances": {
                "description": "Row format: one entry per image, a tensor or an object naming the input.",
                "anyOf": [
                    batch,
                    {"type": "array", "minItems": 1, "maxItems": max_batch_size, "items": named},
                ],
            },
            "inputs": {
                "description": "Columnar format: the whole batch, a tensor or an object naming the input.",
                "anyOf": [
                    batch,
                    {
                        "type": "object",
                        "properties": {contract.INPUT_NAME: batch},
                        "required": [contract.INPUT_NAME],
                        "additionalProperties": False,
                    },
                ],
            },
        },
        "additionalProperties": False,
        "oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}],
    }


def predict_response_schema() -> dict[str, Any]:
    """TF Serving's predict answer: `predictions` (row requests) or `outputs` (columnar requests)."""
    probs = {
        "type": "array",
        "minItems": contract.NUM_CLASSES,
        "maxItems": contract.NUM_CLASSES,
        "items": {"type": "number"},
    }
    label = {"type": "integer", "minimum": 0, "maximum": contract.NUM_CLASSES - 1}
    prediction = {
        "type": "object",
        "properties": {contract.OUTPUT_PROBABILITIES: probs, contract.OUTPUT_CLASSES: label},
        "required": list(contract.OUTPUT_NAMES),
    }
    columns = {
        "type": "object",
        "properties": {
            contract.OUTPUT_PROBABILITIES: {"type": "array", "items": probs},
            contract.OUTPUT_CLASSES: {"type": "array", "items": label},
        },
        "required": list(contract.OUTPUT_NAMES),
    }
    return {
        "type": "object",
        "properties": {"predictions": {"type": "array", "items": prediction}, "outputs": columns},
        "oneOf": [{"required": ["predictions"]}, {"required": ["outputs"]}],
    }


def predict_example() -> dict[str, Any]:
    return {"signature_name": contract.SIGNATURE_NAME, "instances": [[[[0.0]] * 28] * 28]}


def json_body(schema: dict[str, Any], description: str, example: Any | None = None) -> dict[str, Any]:
    """`openapi_extra` for a JSON body the handler reads as raw bytes (no pydantic on the hot path)."""
    content: dict[str, Any] = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"requestBody": {"required": True, "description": description, "content": {"application/json": content}}}


# Path parameters as the servers parse them; FastAPI's `str` says nothing about either.
MODEL_NAME_PARAM = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$"}


def served_model(name: str) -> dict[str, Any]:
    """The model path parameter of a deployment serving `name`: other names get a 404."""
    return {"type": "string", "enum": [name], "description": "The served model's name."}


# Canonical form; the servers also accept leading zeros ("01" is version 1: serving_core.tfs_rest.parse_version).
VERSION_PARAM = {"type": "string", "pattern": "^[1-9][0-9]{0,17}$", "description": "A positive integer."}


def ref(name: str) -> dict[str, str]:
    """A reference to a schema that `finish(..., schemas=)` adds (built from the app's settings)."""
    return {"$ref": f"#/components/schemas/{name}"}


def finish(
    app: FastAPI,
    *,
    path_params: dict[str, dict[str, Any]] | None = None,
    schemas: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Make `app.openapi()` drop FastAPI's unanswered 422s, apply `path_params` schemas by name, and
    add `schemas` as components (routes are declared at import; limits such as the batch cap are
    settings, known only when the app is built)."""
    build: Callable[[], dict[str, Any]] = app.openapi
    params = path_params or {}
    extra = schemas or {}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = build()  # caches the document in app.openapi_schema; edited in place
            _finish(doc, params)
            doc.setdefault("components", {}).setdefault("schemas", {}).update(extra)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


_ERROR_REF = "#/components/schemas/ErrorBody"


def _finish(doc: dict[str, Any], params: dict[str, dict[str, Any]]) -> None:
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "HTTPValidationError" in str(responses.get("422", "")):
                del responses["422"]
            for response in responses.values():
                # FastAPI files a route's extra responses under the route's own media type (text/html
                # for a report, text/plain for metrics); errors are always JSON.
                content = response.get("content", {})
                for media_type in [m for m in content if m != "application/json"]:
                    if content[media_type].get("schema", {}).get("$ref") == _ERROR_REF:
                        content["application/json"] = content.pop(media_type)
            for param in operation.get("parameters", []):
                if param.get("in") == "path" and param.get("name") in params:
                    param["schema"] = dict(params[param["name"]])
    schemas = doc.get("components", {}).get("schemas", {})
    if "HTTPValidationError" in schemas and "#/components/schemas/HTTPValidationError" not in str(doc.get("paths")):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
