"""The OpenAPI document, finished for this deployment: request validation answers 400 (not
FastAPI's 422 shape), file ids carry the pattern of the backends this storage mode serves, the key
schemes are declared only when keys are configured, and downloads declare any media type.

A generated client or a fuzzer builds requests from this document, so whatever it calls valid must
be accepted (docs/api.md, "The OpenAPI document").
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.errors import InvalidArgument
from app.settings import Settings
from app.storage.bulk import MAX_CURSOR_CHARS
from app.storage.fusion import enabled
from app.storage.ids import BackendName
from app.storage.zip import MAX_NAME_BYTES as MAX_ZIP_NAME_BYTES
from app.text import BIDI_CONTROLS, CONTROLS, NONCHARACTERS, SEPARATORS

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

# The rules of app.storage.ids and app.storage.validation as JSON Schema patterns: whatever they
# match is accepted, whatever they do not is refused (4xx). Only the byte limits (names 200, keys
# 1,024, metadata 1,024 UTF-8 bytes) are not patterns: a pattern counts characters.
_NAME_REFUSED = f"{CONTROLS}{SEPARATORS}{BIDI_CONTROLS}{NONCHARACTERS}"
"""What a name or folder must not contain (app.text): Cc, Zl, Zp, bidi controls and the
noncharacters. (Lone surrogates, Cs, cannot be in JSON or UTF-8 text, and a JSON Schema regex
cannot name them.)"""
_BUCKET = r"[a-z0-9](?:[a-z0-9-]|\.(?!\.)){1,61}[a-z0-9]"
_PREFIX_SEGMENT = rf"(?!\.\.?(?:/|$))[^/\\{CONTROLS}]+"
_RESERVED = r"(?!\.filegate-(?:tus|moved)(?:/|$))"
# A file id in a request: the form of the ids filegate makes, in few plain character classes, so
# that a generator (schemathesis, a property test) makes valid ones without filtering: up to four
# folders that do not start with '.' (so never '.', '..' or the reserved folder), then the
# generated leaf, 16 hex digits and the name. At most 533 UTF-8 bytes, within the key limit. Other
# ids are still served; the document describes the ones a client gets from an upload.
_TEXT = f"^[^{CONTROLS}{SEPARATORS}]*$"
"""Text the rules admit outside names (metadata values, cursors, zip entry names)."""
_NOT_IN_KEYS = rf"/\\{CONTROLS}"
_KEY_CHAR = rf"[^{_NOT_IN_KEYS}]"
_FOLDER = rf"[^.{_NOT_IN_KEYS}]{_KEY_CHAR}{{0,15}}"
_KEY = rf"(?:{_FOLDER}/){{0,4}}[0-9a-f]{{16}}_{_KEY_CHAR}{{1,64}}"
_PLAIN_BUCKET = r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]"
FASTDFS_ID = r"[A-Za-z0-9_-]{1,16}/M[0-9A-F]{2}/[0-9A-F]{2}/[0-9A-F]{2}/[A-Za-z0-9_.-]{12,117}"


def id_pattern(backend: BackendName, buckets: list[str] | None = None) -> str:
    """The pattern of a ``backend`` id in a request, in ``buckets`` (any bucket name if None)."""
    if backend == "fastdfs":
        return FASTDFS_ID
    bucket = _PLAIN_BUCKET if buckets is None else "(?:" + "|".join(map(re.escape, buckets)) + ")"
    return rf"{backend}:{bucket}/{_KEY}"


ID_PATTERNS: dict[BackendName, str] = {
    b: id_pattern(b) for b in ("s3", "local", "memory", "fastdfs")
}
_SEGMENT = rf"(?!\s*(?:/|$))(?!\.\.?(?:/|$))[^/\\{_NAME_REFUSED}]{{1,255}}"
"""A file name or folder segment: not blank, not . or .., no separator or refused character."""
NAME: dict[str, Any] = {"type": "string", "pattern": rf"^{_SEGMENT}$", "maxLength": 200}
FOLDER: dict[str, Any] = {
    "type": "string",
    "pattern": rf"^(?:{_SEGMENT}(?:/{_SEGMENT}){{0,15}}/?)?$",
    "maxLength": 512,
}
BUCKET: dict[str, Any] = {"type": "string", "pattern": rf"^(?:{_BUCKET})?$"}
PREFIX: dict[str, Any] = {
    "type": "string",
    "pattern": (
        rf"^(?:s3|local|memory):{_BUCKET}"
        rf"(?:/{_RESERVED}(?:{_PREFIX_SEGMENT}/)*(?:{_PREFIX_SEGMENT})?)?$"
    ),
    "description": "A folder in file-id form: s3:<bucket>/<folder>/ or local:<bucket>/<folder>/.",
}
FOLDER_PREFIX: dict[str, Any] = {
    **PREFIX,
    "pattern": rf"^(?:s3|local|memory):{_BUCKET}/{_RESERVED}(?:{_PREFIX_SEGMENT}/)+$",
}
METADATA: dict[str, Any] = {
    "type": "object",
    "description": 'Sent as JSON, e.g. {"author": "john"}; up to 1,024 bytes in all.',
    "propertyNames": {"pattern": r"^(?!filegate-)[a-z0-9][a-z0-9_-]{0,63}$"},
    "additionalProperties": {
        "type": "string",
        "pattern": _TEXT,
    },
    "maxProperties": 32,
}


def file_id_schema(settings: Settings) -> dict[str, Any]:
    """The JSON schema of a file id this deployment serves, in its buckets."""
    buckets: dict[BackendName, list[str]] = {
        "s3": settings.s3_buckets or [settings.s3_default_bucket],
        "local": [settings.local_bucket],
        "memory": [settings.memory_bucket],
    }
    patterns = [id_pattern(backend, buckets.get(backend)) for backend in enabled(settings)]
    examples = [
        EXAMPLE_IDS[backend].replace("files", buckets[backend][0], 1)
        for backend in enabled(settings)
        if backend != "fastdfs"
    ]
    return {
        "type": "string",
        "pattern": "^(?:" + "|".join(patterns) + ")$",
        "examples": examples or [EXAMPLE_IDS["fastdfs"]],
        "description": (
            "A file id as an upload returns it: s3:<bucket>/<key>, local:<bucket>/<key> or a "
            'FastDFS id (docs/api.md, "The OpenAPI document").'
        ),
    }


CURSOR: dict[str, Any] = {
    "type": "string",
    "maxLength": MAX_CURSOR_CHARS,
    "pattern": _TEXT,
    "description": (
        "Start after this key: next_cursor of the previous page (or any key, to start there)."
    ),
}
ZIP_ENTRY_NAME: dict[str, Any] = {
    "type": "string",
    "maxLength": MAX_ZIP_NAME_BYTES // 4,
    "pattern": _TEXT,
    "description": "The entry's name inside the zip (folders with '/').",
}
EXAMPLE_IDS: dict[BackendName, str] = {
    "s3": "s3:files/reports/3f9c0a1b2c3d4e5f_Q3 report.pdf",
    "local": "local:files/3f9c0a1b2c3d4e5f_notes.txt",
    "memory": "memory:files/3f9c0a1b2c3d4e5f_notes.txt",
    "fastdfs": "group1/M00/00/05/fwAAAWsFKtSATKktAAAADgWKGpg335.pdf",
}


NAMED_FIELDS: dict[str, dict[str, Any]] = {
    "filename": NAME,
    "folder": FOLDER,
    "bucket": BUCKET,
    "metadata": METADATA,
    "prefix": PREFIX,
    "cursor": CURSOR,
}
"""Fields by name, wherever they appear (query, form or JSON body)."""


def _narrowed(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    named = NAMED_FIELDS.get(name)
    if named is None:
        return schema
    kept = {k: v for k, v in schema.items() if k in ("title", "description", "default")}
    if "anyOf" in schema:  # Optional[str]: a string of this form, or null
        return {**kept, "anyOf": [named, {"type": "null"}]}
    return {**kept, **named}


def _narrow_properties(schema: dict[str, Any], id_schema: dict[str, Any]) -> None:
    for name, prop in schema.get("properties", {}).items():
        if name == "file_id":
            schema["properties"][name] = {**id_schema, "title": "File Id"}
        elif name == "file_ids":
            prop["items"] = id_schema
        else:
            schema["properties"][name] = _narrowed(name, prop)


def _request_schemas(document: dict[str, Any], schemas: dict[str, Any]) -> set[str]:
    """The component schemas that request bodies use, directly or nested."""
    found: set[str] = set()
    pending = [
        content.get("schema", {})
        for item in document.get("paths", {}).values()
        for operation in item.values()
        for content in operation.get("requestBody", {}).get("content", {}).values()
    ]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            name = ref.rsplit("/", 1)[-1]
            if ref and name not in found:
                found.add(name)
                pending.append(schemas[name])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found


_ANY_BODY = {"*/*": {"schema": {"type": "string", "format": "binary"}}}


def _finish(document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    components = document.setdefault("components", {})
    id_schema = file_id_schema(settings)
    keyed = bool(settings.keys)
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = {
                    "description": InvalidArgument.description,
                    "content": {"application/json": {"schema": {"$ref": _ERROR_REF}}},
                }
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "file_id" and parameter["in"] == "path":
                    parameter["schema"] = {**id_schema, "title": "File Id"}
                elif parameter["name"] == "file_name" and parameter["in"] == "path":
                    parameter["schema"] = {**NAME, "title": "File Name"}
                else:
                    parameter["schema"] = _narrowed(parameter["name"], parameter["schema"])
                if parameter["in"] == "header" and "anyOf" in parameter["schema"]:
                    # an optional header is absent, never null
                    schema = parameter["schema"]
                    (present,) = [s for s in schema.pop("anyOf") if s != {"type": "null"}]
                    schema.update(present)
            for content in operation.get("requestBody", {}).get("content", {}).values():
                _narrow_properties(content.get("schema", {}), id_schema)
            if operation.get("operationId") == "download_zip":
                body = operation["requestBody"]["content"]["application/json"]["schema"]
                body["minItems"] = 1  # more than ZIP_MAX_ENTRIES is a 413, not a schema rule
            if path.endswith("/download"):
                # A file is served with its own type: any media type, on 200 and on 206.
                for status in ("200", "206"):
                    if method == "head":
                        responses[status].pop("content", None)
                    else:
                        responses[status]["content"] = _ANY_BODY
            if (
                (path.startswith("/files") or path == "/access") and keyed and method != "options"
            ) or (path == "/metrics" and settings.metrics_api_key is not None):
                operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
            else:
                operation.pop("security", None)
                responses.pop("401", None)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(unused, None)
    schemas = components.get("schemas", {})
    for name in _request_schemas(document, schemas):  # answers name ids of any form
        _narrow_properties(schemas[name], id_schema)
    schemas = components["schemas"]
    schemas["DeletePrefixRequest"]["properties"]["prefix"] = FOLDER_PREFIX
    schemas["CopyRequest"]["properties"]["file_name"] = _narrowed(
        "filename", schemas["CopyRequest"]["properties"]["file_name"]
    )
    zip_item = schemas["ZipItem"]["properties"]
    zip_item["file_name"] = {**zip_item["file_name"], "anyOf": [ZIP_ENTRY_NAME, {"type": "null"}]}
    backend = schemas["CopyRequest"]["properties"]["backend"]
    backend["anyOf"] = [
        {"type": "string", "enum": list(enabled(settings))},
        {"type": "null"},
    ]
    if not {"s3", "fastdfs"} <= set(enabled(settings)):  # migration: hybrid mode only
        document["paths"].pop("/files/{file_id}/migrate", None)
    link = components["schemas"]["LinkRequest"]["properties"]
    link["expires_in"]["maximum"] = settings.link_max_expires
    # "" names nothing (the file's own name), as the route reads it: schemathesis found the gap
    link["filename"]["anyOf"].insert(1, {"type": "string", "maxLength": 0})
    if "s3" not in enabled(settings):  # direct links are S3 presigned URLs
        link["direct"]["enum"] = [False]
    components.setdefault("schemas", {})["FileId"] = id_schema
    components["securitySchemes"] = SECURITY_SCHEMES
    return document


def install(app: FastAPI, settings: Settings) -> None:
    """Replace ``app.openapi`` by a builder of the finished document (built once, on demand)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _finish(
                get_openapi(
                    title=app.title, version=app.version, summary=app.summary, routes=app.routes
                ),
                settings,
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
