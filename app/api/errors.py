"""Where every error becomes HTTP: one JSON shape, one handler per kind of exception."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from app.access import AccessError
from app.api.middleware import ClientTooSlow
from app.api.schemas import ErrorBody
from app.storage.errors import StorageError

log = logging.getLogger(__name__)

_DESCRIPTIONS = {
    400: "Invalid argument or file type",
    401: "No API key, or an unknown one",
    403: "Not allowed: the key's scope, bucket or folder; the route, bucket or deletion",
    404: "No such file",
    408: "The client sent nothing for too long",
    413: "File or request too large",
    416: "Range not satisfiable",
    500: "Unexpected storage failure",
    503: "Backend unavailable; retry after the Retry-After delay",
}
_ERROR_REF = "#/components/schemas/ErrorBody"
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "file_too_large"}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of a route's error responses (401, 500 and 503 are always possible)."""
    return {
        status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]}
        for status in sorted({*statuses, 401, 500, 503})
    }


def error_response(
    status: int, body: ErrorBody, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StorageError)
    if exc.backend is not None:
        request.app.state.metrics.backend_errors.labels(exc.backend, exc.code).inc()
    if exc.status_code >= 500:
        log.warning(
            "%s %s failed on %s: %s (%s)",
            request.method,
            request.url.path,
            exc.backend or "filegate",
            exc.code,
            exc.detail,
            exc_info=exc.__cause__ is not None and exc.status_code == 500,
        )
    body = ErrorBody(detail=exc.detail, code=exc.code, file_id=exc.file_id, file_ids=exc.file_ids)
    return error_response(exc.status_code, body, exc.headers())


async def _access_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AccessError)
    log.info("%s %s refused: %s", request.method, request.url.path, exc.code)
    body = ErrorBody(detail=exc.detail, code=exc.code, file_id=exc.file_id)
    return error_response(exc.status_code, body, exc.headers())


async def _client_too_slow(request: Request, exc: Exception) -> JSONResponse:
    log.info("%s %s: %s", request.method, request.url.path, exc)
    body = ErrorBody(detail=f"{exc} Send the request faster.", code="request_timeout")
    return error_response(408, body, {"Connection": "close"})


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
    )
    return error_response(400, ErrorBody(detail=problems, code="invalid_argument"))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(
        exc.status_code, ErrorBody(detail=str(exc.detail), code=code), dict(exc.headers or {})
    )


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    """The client left mid-request: the upload was already rolled back, no one reads this."""
    log.info("%s %s: the client went away mid-request", request.method, request.url.path)
    return error_response(400, ErrorBody(detail="The client disconnected.", code="client_gone"))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug, not a storage condition: logged with its traceback, shown to the client as JSON
    without one. (Starlette re-raises it afterwards, so the server logs it too.)"""
    log.error("%s %s crashed", request.method, request.url.path, exc_info=exc)
    return error_response(500, ErrorBody(detail="Internal error.", code="internal_error"))


def document_validation_as_400(app: FastAPI) -> None:
    """Request validation failures are rendered as 400 ``invalid_argument`` (see
    ``_validation_error``), so the OpenAPI document must not promise FastAPI's 422 shape."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    responses = operation.get("responses", {})
                    if responses.pop("422", None) is not None and "400" not in responses:
                        responses["400"] = {
                            "description": _DESCRIPTIONS[400],
                            "content": {"application/json": {"schema": {"$ref": _ERROR_REF}}},
                        }
            for unused in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI) -> None:
    app.add_exception_handler(StorageError, _storage_error)
    app.add_exception_handler(AccessError, _access_error)
    app.add_exception_handler(ClientTooSlow, _client_too_slow)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
