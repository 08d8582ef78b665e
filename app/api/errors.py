"""Where every error becomes HTTP: one JSON shape, rendered by one function.

``FilegateError`` (``app.errors``) carries its own status, code and headers; ``render`` turns it
into the response, counts it in the backend-error metric when it blames a backend, and logs it.
The few exceptions raised outside filegate's vocabulary (FastAPI's request validation, Starlette's
routing errors, a client disconnect, a bug) are first translated into it. Routes declare the
errors they can raise with ``declare``, so the OpenAPI document lists each with its schema.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from app.api.schemas import ErrorBody
from app.errors import (
    BackendUnavailable,
    ClientGone,
    FilegateError,
    InvalidArgument,
    MethodNotAllowed,
    NotFound,
    StorageError,
    Unauthorized,
)

log = logging.getLogger(__name__)

ALWAYS: tuple[type[FilegateError], ...] = (Unauthorized, StorageError, BackendUnavailable)
"""Possible on every file operation: a missing key (when keys are configured), a backend failure
and an unreachable backend."""


def declare(*errors: type[FilegateError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of a route's error responses, by status, from the error classes."""
    by_status: dict[int, list[str]] = defaultdict(list)
    for error in sorted({*errors, *ALWAYS}, key=lambda e: (e.status_code, e.__name__)):
        if error.description not in by_status[error.status_code]:
            by_status[error.status_code].append(error.description)
    return {
        status: {"model": ErrorBody, "description": "; ".join(descriptions)}
        for status, descriptions in sorted(by_status.items())
    }


def _echoed(text: str) -> str:
    """An id as the client sent it, with what UTF-8 cannot carry (a lone surrogate) as '?'."""
    return text if text.isascii() else text.encode(errors="replace").decode()


def _body(exc: FilegateError) -> dict[str, Any]:
    body = ErrorBody(
        detail=exc.detail,
        code=exc.code,
        field=exc.field,
        file_id=None if exc.file_id is None else _echoed(exc.file_id),
        file_ids=None if exc.file_ids is None else [_echoed(i) for i in exc.file_ids],
    )
    return body.model_dump(exclude_none=True)


def body_of(exc: FilegateError) -> bytes:
    """The JSON body of ``exc``, for the one place that answers outside a route (a stall)."""
    return bytes(JSONResponse(_body(exc)).body)


async def render(request: Request, exc: Exception) -> JSONResponse:
    """The one answer to every error."""
    assert isinstance(exc, FilegateError)
    if exc.blames_backend:
        request.app.state.metrics.backend_errors.labels(exc.backend or "unknown", exc.code).inc()
    where = f"{request.method} {request.url.path}"
    if exc.status_code >= 500:
        log.warning(
            "%s failed on %s: %s (%s)",
            where,
            exc.backend or "filegate",
            exc.code,
            exc.detail,
            exc_info=exc.__cause__ is not None and exc.status_code == 500,
        )
    elif isinstance(exc, ClientGone):
        log.info("%s: the client went away mid-request", where)
    elif exc.status_code in (401, 403, 408):
        log.info("%s refused: %s (%s)", where, exc.code, exc.detail)
    return JSONResponse(_body(exc), status_code=exc.status_code, headers=exc.headers())


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
    )
    return await render(request, InvalidArgument(problems))


async def _routing(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    error: FilegateError
    if exc.status_code == 404:
        error = NotFound(str(exc.detail))
    elif exc.status_code == 405:
        error = MethodNotAllowed(str(exc.detail))
    elif exc.status_code < 500:  # Starlette raises no other; a client's fault all the same
        error = InvalidArgument(str(exc.detail))
    else:
        error = FilegateError(str(exc.detail))
    response = await render(request, error)
    response.headers.update(exc.headers or {})
    if exc.status_code == 405:  # Starlette names the methods of the first matching route only
        response.headers["Allow"] = ", ".join(_methods_of(request))
    return response


def _methods_of(request: Request) -> list[str]:
    """Every method some route serves at this path (``GET /files/download-zip`` and
    ``POST /files/download-zip`` are two routes)."""
    scope = {**request.scope, "method": "\x00"}  # no route serves it: every match is partial
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(scope)
        if match == Match.PARTIAL:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    """Whatever the request stored was already rolled back; nobody reads this answer."""
    return await render(request, ClientGone("The client disconnected."))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug, not a storage condition: logged with its traceback, answered as JSON without one.
    (Starlette re-raises it afterwards, so the server logs it too.)"""
    log.error("%s %s crashed", request.method, request.url.path, exc_info=exc)
    return await render(request, FilegateError("Internal error."))


def install(app: FastAPI) -> None:
    app.add_exception_handler(FilegateError, render)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _routing)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
