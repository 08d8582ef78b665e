"""The OpenAPI document, finished: request validation answers 400 (not FastAPI's 422 shape), and
the API-key schemes are declared on every operation that takes a key."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.errors import InvalidArgument

_ERROR_REF = "#/components/schemas/ErrorBody"
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key as a bearer token (when the service has keys configured).",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key (when the service has keys configured).",
    },
}
KEYED_PATHS = ("/files", "/metrics")
"""Operations under these paths take an API key (``/metrics`` only its own)."""


def _finish(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {})
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = {
                    "description": InvalidArgument.description,
                    "content": {"application/json": {"schema": {"$ref": _ERROR_REF}}},
                }
            if path.startswith(KEYED_PATHS):
                operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
    for unused in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(unused, None)
    components["securitySchemes"] = SECURITY_SCHEMES
    return schema


def install(app: FastAPI) -> None:
    """Replace ``app.openapi`` by a builder of the finished document (built once, on demand)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _finish(
                get_openapi(
                    title=app.title, version=app.version, summary=app.summary, routes=app.routes
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
