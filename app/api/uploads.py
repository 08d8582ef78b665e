"""The upload routes: one file or several as a form, or one file as the raw request body.

The routes only turn HTTP into ``UploadRequest`` values and body streams; the service checks the
caller, the names, types, sizes, buckets and metadata, and stores all of it or nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from app.api.auth import PrincipalDep, get_principal
from app.api.deps import FilesDep, direct_route, files_of
from app.api.errors import declare
from app.api.multipart import FormStream
from app.api.schemas import FileAttach
from app.errors import (
    BucketNotAllowed,
    FileTooLarge,
    Forbidden,
    InsufficientStorage,
    InvalidArgument,
    RequestTimeout,
    TooManyFiles,
)
from app.storage.service import FileService, UploadRequest
from app.storage.stored import StoredFile
from app.text import header_text, json_object, refuse

router = APIRouter(prefix="/files", tags=["files"])

FORM_FIELDS = ("folder", "bucket", "metadata")
META_HEADER = "x-meta-"
FolderQuery = Annotated[str | None, Query(description="Relative folder, e.g. reports/2026.")]
BucketQuery = Annotated[str | None, Query(description="A bucket from the allowlist.")]
Target = Mapping[str, str | None]
"""Where the files go, from the query: folder and bucket."""
UPLOAD_ERRORS = declare(
    InvalidArgument, Forbidden, BucketNotAllowed, RequestTimeout, FileTooLarge, InsufficientStorage
)


def _form_body(file_field: str, many: bool) -> dict[str, Any]:
    file_schema: dict[str, Any] = {"type": "string", "format": "binary"}
    file = {"type": "array", "items": file_schema, "minItems": 1} if many else file_schema
    return {
        "requestBody": {
            "required": True,
            "description": (
                "The file parts. folder, bucket and metadata (a JSON object) may also be form "
                "fields placed before the file parts (curl -F folder=x -F file=@f): the files "
                "stream to storage as they arrive. Generated clients send the file part first, "
                "so they give folder and bucket as query parameters."
            ),
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [file_field],
                        "properties": {file_field: file},
                    }
                }
            },
        }
    }


def _created(stored: list[StoredFile], many: bool) -> JSONResponse:
    attaches = [FileAttach.of(item).model_dump() for item in stored]
    headers = {} if many else {"Location": f"/files/{quote(attaches[0]['file_id'])}/info"}
    return JSONResponse(attaches if many else attaches[0], status_code=201, headers=headers)


def _content_type(request: Request) -> str | None:
    value = request.headers.get("content-type")
    return header_text(value, "content_type") if value else None


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value and value.isdigit() else None


def _parse_metadata(raw: str | None) -> Mapping[str, object]:
    return json_object(raw, "metadata") if raw else {}


async def _receive_form(
    request: Request,
    files: FileService,
    principal: PrincipalDep,
    file_field: str,
    many: bool,
    target: Target,
) -> list[StoredFile]:
    """Hand every file part of the form to the service as it arrives; all of them or none.
    Form fields before the files override the query's folder and bucket."""
    uploads = files.uploads(principal, single=not many, form_length=_declared_length(request))
    form = FormStream(request.stream(), request.headers.get("content-type"))
    fields = {name: value for name, value in target.items() if value is not None}
    async with uploads:
        async for part in form.parts():
            if part.filename is None and part.name in FORM_FIELDS:
                value = await form.text()
                if uploads.stored and value not in ("", "{}"):  # a late default changes nothing
                    raise InvalidArgument(
                        f"Form field {part.name!r} came after a file: send folder, bucket and "
                        "metadata before the file parts (curl -F folder=x -F file=@f)."
                    )
                fields[part.name] = value
            elif part.filename is not None and part.name == file_field:
                wanted = UploadRequest(
                    part.filename,
                    folder=fields.get("folder"),
                    bucket=fields.get("bucket"),
                    content_type=part.content_type,
                    metadata=_parse_metadata(fields.get("metadata")),
                )
                await uploads.add(wanted, form.data())
            elif part.filename is not None:  # a file that would silently go nowhere
                raise InvalidArgument(
                    f"Unexpected file field {part.name!r}: expected {file_field!r}."
                )
            # other text fields are ignored, as HTML forms send them (a submit button's name)
        if not uploads.stored:
            raise InvalidArgument(f"The form has no {file_field!r} file field.")
    return uploads.stored


async def upload_file(
    request: Request,
    files: FilesDep,
    principal: PrincipalDep,
    folder: FolderQuery = None,
    bucket: BucketQuery = None,
) -> JSONResponse:
    """Upload one file (multipart/form-data), streamed to storage as it arrives."""
    target = {"folder": folder, "bucket": bucket}
    stored = await _receive_form(request, files, principal, "file", many=False, target=target)
    return _created(stored, many=False)


async def _upload_arguments(request: Request) -> dict[str, Any]:
    """``upload_file``'s arguments, as FastAPI would resolve them (``direct_route``): the
    service, the caller (401 first), and the last ``folder`` and ``bucket`` of the query."""
    principal = await get_principal(request)
    query = request.query_params
    return {
        "request": request,
        "files": files_of(request),
        "principal": principal,
        "folder": query.get("folder"),
        "bucket": query.get("bucket"),
    }


router.add_api_route(  # as @router.post would, with a direct_route as the route class
    "/upload",
    upload_file,
    methods=["POST"],
    operation_id="upload_file",
    status_code=201,
    response_model=FileAttach,
    responses=UPLOAD_ERRORS,
    openapi_extra=_form_body("file", many=False),
    route_class_override=direct_route(_upload_arguments),
)


@router.post(
    "/batch-upload",
    operation_id="batch_upload",
    status_code=201,
    response_model=list[FileAttach],
    responses=declare(
        InvalidArgument,
        Forbidden,
        BucketNotAllowed,
        RequestTimeout,
        FileTooLarge,
        TooManyFiles,
        InsufficientStorage,
    ),
    openapi_extra=_form_body("files", many=True),
)
async def batch_upload(
    request: Request,
    files: FilesDep,
    principal: PrincipalDep,
    folder: FolderQuery = None,
    bucket: BucketQuery = None,
) -> JSONResponse:
    """Upload several files at once (at most MAX_BATCH_FILES): all of them are stored, or none."""
    target = {"folder": folder, "bucket": bucket}
    stored = await _receive_form(request, files, principal, "files", many=True, target=target)
    return _created(stored, many=True)


@router.put("/upload/", include_in_schema=False)
async def upload_raw_without_name() -> None:
    """``PUT /files/upload/``: a 400 for the empty name, not a redirect to another route."""
    raise refuse("file_name", "is empty")


@router.put(
    "/upload/{file_name:any_text}",
    operation_id="upload_raw",
    status_code=201,
    response_model=FileAttach,
    responses=UPLOAD_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": False,  # no body: an empty file
            "description": "The raw file; X-Meta-<name> headers become metadata.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_raw(
    file_name: str,
    request: Request,
    files: FilesDep,
    principal: PrincipalDep,
    folder: FolderQuery = None,
    bucket: BucketQuery = None,
) -> JSONResponse:
    """Upload one file sent as the raw request body (``curl -T``)."""
    metadata = {
        name.removeprefix(META_HEADER): header_text(value, "metadata")
        for name, value in request.headers.items()
        if name.startswith(META_HEADER)
    }
    wanted = UploadRequest(
        file_name,
        folder=folder,
        bucket=bucket,
        content_type=_content_type(request),
        metadata=metadata,
        size=_declared_length(request),
    )
    return _created([await files.upload(principal, wanted, request.stream())], many=False)
