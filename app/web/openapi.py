"""The OpenAPI document, made to tell the truth about answers every route shares, whatever the route declares:

- 422 is either FastAPI's list of validation errors or one message of ours ({"detail": "..."});
- a route with a body can answer 400 (a body that does not parse) and 413 (too large, app.web.body_limit);
- a route behind an API key can answer 401 and 503 (the key is looked up in the database);
- errors are JSON, also on routes that answer a stream, a file or an archive;
- on the Open Inference Protocol's routes (/v2) errors are {"error": "..."}, as its clients read them.

Checked by schemathesis against every operation (tests/app/test_schemathesis.py)."""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.web.responses import ERROR_DESCRIPTIONS

PUBLIC_PATHS = frozenset({"/health", "/v2", "/v2/health/live", "/v2/health/ready"})
METHODS = ("get", "post", "put", "patch", "delete")

VALIDATION_422 = {
    "title": "UnprocessableContent",
    "type": "object",
    "required": ["detail"],
    "properties": {"detail": {"anyOf": [
        {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
        {"type": "string", "description": "The field and the rule it breaks, or the limit it passes."},
    ]}},
}
V2_ERROR = {
    "title": "InferenceError",
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"anyOf": [{"type": "string"}, {"type": "array", "items": {}}],
                             "description": "What went wrong, as the Open Inference Protocol has it."}},
}
ERROR = {"$ref": "#/components/schemas/ErrorPublic"}


def _error(status: int, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": ERROR_DESCRIPTIONS[status], "content": {"application/json": {"schema": schema}}}


def _complete(path: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    v2 = path.startswith("/v2/")
    has_input = "requestBody" in operation or bool(operation.get("parameters"))
    if has_input:
        responses["422"] = _error(422, {"$ref": "#/components/schemas/UnprocessableContent"})
    if "requestBody" in operation:
        responses.setdefault("400", _error(400, ERROR))
        responses.setdefault("413", _error(413, ERROR))
    if path not in PUBLIC_PATHS:
        responses.setdefault("401", _error(401, ERROR))
        responses.setdefault("503", _error(503, ERROR))
        responses["503"].setdefault("headers", {"Retry-After": {"schema": {"type": "integer"}}})
    if "429" in responses:
        responses["429"].setdefault("headers", {"Retry-After": {"schema": {"type": "integer"}}})
    for status, response in responses.items():
        # Errors are JSON whatever a route streams on success (FastAPI gives them the route's media type).
        content = response.get("content")
        if status.startswith(("4", "5")) and content and "application/json" not in content:
            response["content"] = {"application/json": {"schema": next(iter(content.values())).get("schema", {})}}
    if v2:
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                for content in response.get("content", {}).values():
                    content["schema"] = {"$ref": "#/components/schemas/InferenceError"}


def install(app: FastAPI) -> None:
    """Have app.web.openapi() build the completed document (once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["UnprocessableContent"] = VALIDATION_422
            components["InferenceError"] = V2_ERROR
            for path, item in schema.get("paths", {}).items():
                for method in METHODS:
                    if method in item:
                        _complete(path, item[method])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
