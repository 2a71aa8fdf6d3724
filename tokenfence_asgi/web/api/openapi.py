"""The OpenAPI 3.1 document of the HTTP API, generated from the route table and the models."""

from __future__ import annotations

import copy
import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema

from tokenfence_asgi.web.api.problems import Error
from tokenfence_asgi.web.api.routes import OPERATIONS, Operation

__all__ = ["openapi_schema"]

_REF = "#/components/schemas/{model}"


class _Schema(GenerateJsonSchema):
    """pydantic's JSON Schema, without a title on every field (the name says it)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(op: Operation) -> dict[str, Any]:
    ok = {"type": "object"} if op.response is None else _ref(op.response)
    doc: dict[str, Any] = {"operationId": op.name, "summary": op.summary}
    if op.description:
        doc["description"] = op.description
    if op.public:
        doc["security"] = []
    if op.params is not None:
        properties = op.params.model_json_schema(schema_generator=_Schema)["properties"]
        doc["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": schema}
            for name, schema in properties.items()
        ]
    if op.body is not None:
        doc["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(op.body)}},
        }
    doc["responses"] = {
        "200": _json(op.ok, ok),
        **{status: _json(text, _ref(Error)) for status, text in op.errors.items()},
    }
    return doc


@functools.cache
def _document() -> dict[str, Any]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(Error, "serialization")]
    for op in OPERATIONS:
        if op.body is not None:
            models.append((op.body, "validation"))
        if op.response is not None:
            models.append((op.response, "serialization"))
    _, top = models_json_schema(models, ref_template=_REF, schema_generator=_Schema)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tokenfence reserve / commit API",
            "version": "1",
            "description": "Atomic per-tenant AI budgets over HTTP: reserve the worst case "
            "before an LLM call, commit the actual cost after it, release on failure.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": top["$defs"],
        },
    }


def openapi_schema(root_path: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API (what ``GET /openapi.json`` serves); ``root_path``
    (where the app is mounted) is its server URL."""
    document = copy.deepcopy(_document())
    if root_path:
        document["servers"] = [{"url": root_path}]
    return document
