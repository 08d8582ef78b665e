"""The /files routes: upload, batch upload, download (GET/HEAD), info and delete."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from app.access import LinkInvalid, LinkTerms, Principal, Scope
from app.api.auth import KeyringDep, PresentedKeyDep, PrincipalDep, SignerDep
from app.api.deps import FilesDep
from app.api.errors import error_responses
from app.api.http import content_disposition, http_date, not_modified, parse_range, range_applies
from app.api.multipart import FormStream
from app.api.responses import ObjectStreamResponse
from app.api.schemas import Deleted, FileAttach, FileInfo, Link, LinkRequest
from app.storage.base import ByteRange
from app.storage.errors import InvalidArgument
from app.storage.fusion import FileService, StoredFile, content_type_for
from app.storage.ids import parse_file_id
from app.storage.validation import check_file_name

router = APIRouter(prefix="/files", tags=["files"])
log = logging.getLogger(__name__)

FORM_FIELDS = ("folder", "bucket", "metadata")
FORM_OVERHEAD = 256 * 1024
"""Room for boundaries and text fields when a multipart Content-Length is checked up front."""
META_HEADER = "x-meta-"
S3_MAX_PRESIGN_SECONDS = 7 * 24 * 3600
_ACTIVE_TYPES = {
    "text/html",
    "application/xhtml+xml",
    "image/svg+xml",
    "text/xml",
    "application/xml",
}
_ACTIVE_EXTENSIONS = (".html", ".htm", ".xhtml", ".shtml", ".svg", ".svgz", ".xml", ".xsl", ".xslt")


def _authorized(principal: Principal, scope: Scope, raw_id: str) -> None:
    """``Forbidden`` unless the caller may ``scope`` this file (scope first, then its place)."""
    principal.require(scope)
    principal.check(scope, parse_file_id(raw_id))


def _active_content(media_type: str, name: str) -> bool:
    """HTML, SVG and XML can run script in our origin if a browser renders them."""
    essence = media_type.split(";")[0].strip().lower()
    return (
        essence in _ACTIVE_TYPES
        or essence.endswith("+xml")
        or name.lower().endswith(_ACTIVE_EXTENSIONS)
    )


def _form_body(file_field: str, many: bool) -> dict[str, Any]:
    file_schema: dict[str, Any] = {"type": "string", "format": "binary"}
    properties: dict[str, Any] = {
        file_field: {"type": "array", "items": file_schema} if many else file_schema,
        "folder": {"type": "string", "description": "Relative folder, e.g. reports/2026."},
        "bucket": {"type": "string", "description": "A bucket from the allowlist."},
        "metadata": {"type": "string", "description": 'JSON object, e.g. {"author": "john"}.'},
    }
    return {
        "requestBody": {
            "required": True,
            "description": "Put folder, bucket and metadata before the file parts.",
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": [file_field], "properties": properties}
                }
            },
        }
    }


def _created(stored: list[StoredFile], many: bool) -> JSONResponse:
    attaches = [FileAttach.of(item).model_dump() for item in stored]
    headers = {} if many else {"Location": f"/files/{quote(attaches[0]['file_id'])}/info"}
    return JSONResponse(attaches if many else attaches[0], status_code=201, headers=headers)


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value and value.isdigit() else None


def _header_text(value: str) -> str:
    """Header bytes arrive as latin-1; clients such as curl send UTF-8."""
    raw = value.encode("latin-1")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return value


def _parse_metadata(raw: str | None) -> Mapping[str, object]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument("metadata must be a JSON object of strings.") from exc
    if not isinstance(value, dict):
        raise InvalidArgument("metadata must be a JSON object of strings.")
    return value


async def _receive_form(
    request: Request, files: FileService, principal: Principal, file_field: str, many: bool
) -> list[StoredFile]:
    """Stream every file part of the form to storage as it arrives; all of them or none."""
    principal.require("write")
    length = _declared_length(request)
    if not many and length is not None:
        files.policy.check_declared_size(length - FORM_OVERHEAD)
    form = FormStream(request.stream(), request.headers.get("content-type"))
    fields: dict[str, str] = {}
    async with files.batch() as stored:
        async for part in form.parts():
            if part.filename is None and part.name in FORM_FIELDS:
                if stored:
                    raise InvalidArgument(
                        f"Form field {part.name!r} came after a file: send folder, bucket and "
                        "metadata before the file parts (curl -F folder=x -F file=@f)."
                    )
                fields[part.name] = await form.text()
            elif part.filename is not None and part.name == file_field:
                if stored and not many:
                    raise InvalidArgument("One file per request: use /files/batch-upload.")
                files.policy.check_batch_count(len(stored) + 1)
                file_id, new = files.prepare_upload(
                    part.filename,
                    folder=fields.get("folder"),
                    bucket=fields.get("bucket"),
                    content_type=part.content_type,
                    metadata=_parse_metadata(fields.get("metadata")),
                )
                principal.check("write", file_id)
                stored.append(await files.store(file_id, new, form.data()))
            else:
                raise InvalidArgument(
                    f"Unexpected form field {part.name!r}: expected {file_field!r}, "
                    "folder, bucket or metadata."
                )
        if not stored:
            raise InvalidArgument(f"The form has no {file_field!r} file field.")
    return stored


@router.post(
    "/upload",
    operation_id="upload_file",
    status_code=201,
    response_model=FileAttach,
    responses=error_responses(400, 403, 408, 413),
    openapi_extra=_form_body("file", many=False),
)
async def upload_file(request: Request, files: FilesDep, principal: PrincipalDep) -> JSONResponse:
    """Upload one file (multipart/form-data), streamed to storage as it arrives."""
    stored = await _receive_form(request, files, principal, "file", many=False)
    return _created(stored, many=False)


@router.post(
    "/batch-upload",
    operation_id="batch_upload",
    status_code=201,
    response_model=list[FileAttach],
    responses=error_responses(400, 403, 408, 413),
    openapi_extra=_form_body("files", many=True),
)
async def batch_upload(request: Request, files: FilesDep, principal: PrincipalDep) -> JSONResponse:
    """Upload several files at once (at most MAX_BATCH_FILES): all of them are stored, or none."""
    stored = await _receive_form(request, files, principal, "files", many=True)
    return _created(stored, many=True)


@router.put(
    "/upload/{file_name:path}",
    operation_id="upload_raw",
    status_code=201,
    response_model=FileAttach,
    responses=error_responses(400, 403, 408, 413),
    openapi_extra={
        "requestBody": {
            "required": True,
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
    folder: str | None = None,
    bucket: str | None = None,
) -> JSONResponse:
    """Upload one file sent as the raw request body (``curl -T``)."""
    principal.require("write")
    files.policy.check_declared_size(_declared_length(request))
    metadata = {
        name.removeprefix(META_HEADER): _header_text(value)
        for name, value in request.headers.items()
        if name.startswith(META_HEADER)
    }
    file_id, new = files.prepare_upload(
        file_name,
        folder=folder,
        bucket=bucket,
        content_type=request.headers.get("content-type"),
        metadata=metadata,
        size=_declared_length(request),
    )
    principal.check("write", file_id)
    return _created([await files.store(file_id, new, request.stream())], many=False)


_CONDITIONS = ("range", "if-none-match", "if-modified-since", "if-range")


async def _serve(
    request: Request,
    files: FileService,
    file_id: str,
    options: DownloadOptions,
    with_body: bool,
) -> Response:
    inline = options.inline
    chosen_name = check_file_name(options.filename) if options.filename else None
    if with_body and not any(header in request.headers for header in _CONDITIONS):
        # A plain download needs no decision before the body: one round trip where the
        # backend can (S3: a GET without the HEAD).
        stored, stream = await files.fetch(file_id)
        try:
            name = chosen_name or stored.name
            headers = _file_headers(stored, name, inline)
            headers["Content-Length"] = str(stored.info.size)
        except BaseException:
            await stream.aclose()
            raise
        return ObjectStreamResponse(
            stream, str(stored.file_id), headers=headers, media_type=headers.pop("Content-Type")
        )

    stored = await files.info(file_id)
    info = stored.info
    headers = _file_headers(stored, chosen_name or stored.name, inline)
    media_type = headers.pop("Content-Type")
    if not_modified(
        info, request.headers.get("if-none-match"), request.headers.get("if-modified-since")
    ):
        return Response(status_code=304, headers=headers)
    byte_range: ByteRange | None = None
    range_header = request.headers.get("range")
    if range_header and range_applies(info, request.headers.get("if-range")):
        byte_range = parse_range(range_header, info.size)
    headers["Content-Length"] = str(byte_range.length if byte_range else info.size)
    if byte_range:
        headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{info.size}"
    status = 206 if byte_range else 200
    if not with_body:
        return Response(status_code=status, headers=headers, media_type=media_type)
    stream = await files.open(stored, byte_range)
    return ObjectStreamResponse(
        stream, str(stored.file_id), status_code=status, headers=headers, media_type=media_type
    )


def _file_headers(stored: StoredFile, name: str, inline: bool) -> dict[str, str]:
    """The headers every answer about a file carries (``Content-Type`` is popped by the caller:
    a 304 has none)."""
    info = stored.info
    media_type = content_type_for(name, info.content_type)
    return {
        "Content-Type": media_type,
        "ETag": info.etag,
        "Last-Modified": http_date(info),
        "Accept-Ranges": "bytes",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
        "Content-Disposition": _disposition(name, media_type, inline),
    }


InlineQuery = Annotated[
    bool, Query(description="Content-Disposition: inline instead of attachment.")
]
FilenameQuery = Annotated[str | None, Query(description="Download under this name instead.")]
ExpiresQuery = Annotated[
    int | None, Query(description="Signed links: Unix time until which the link is valid.")
]
SignatureQuery = Annotated[
    str | None, Query(description="Signed links: the signature; no API key is needed then.")
]
_DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": "The file",
    },
    206: {"description": "The requested byte range"},
    304: {"description": "Not modified (If-None-Match / If-Modified-Since)"},
    **error_responses(400, 403, 404, 416),
}


@dataclass(frozen=True, slots=True)
class DownloadOptions:
    inline: bool
    filename: str | None


async def admit_download(
    file_id: str,
    keyring: KeyringDep,
    presented: PresentedKeyDep,
    signer: SignerDep,
    inline: InlineQuery = False,
    filename: FilenameQuery = None,
    expires: ExpiresQuery = None,
    signature: SignatureQuery = None,
) -> DownloadOptions:
    """A download needs a key with ``read`` on the file, or a signed link for exactly this id,
    expiry and these options."""
    if expires is None and signature is None:
        _authorized(keyring.authenticate(presented), "read", file_id)
    elif expires is None or signature is None:
        raise LinkInvalid("A signed link needs both 'expires' and 'signature'.", file_id=file_id)
    else:
        canonical = str(parse_file_id(file_id))
        signer.verify(LinkTerms(canonical, expires, filename, inline), signature)
    return DownloadOptions(inline, filename)


DownloadDep = Annotated[DownloadOptions, Depends(admit_download)]


@router.get(
    "/{file_id:path}/download",
    operation_id="download_file",
    response_class=StreamingResponse,
    responses=_DOWNLOAD_RESPONSES,
)
async def download_file(
    file_id: str, request: Request, files: FilesDep, options: DownloadDep
) -> Response:
    """Download a file, or one byte range of it (with an API key, or through a signed link)."""
    return await _serve(request, files, file_id, options, with_body=True)


@router.head(
    "/{file_id:path}/download",
    operation_id="download_file_head",
    response_class=Response,
    responses=_DOWNLOAD_RESPONSES,
)
async def download_file_head(
    file_id: str, request: Request, files: FilesDep, options: DownloadDep
) -> Response:
    """The headers a download would send, without the body."""
    return await _serve(request, files, file_id, options, with_body=False)


@router.post(
    "/{file_id:path}/link",
    operation_id="create_link",
    response_model=Link,
    responses=error_responses(400, 403, 404),
)
async def create_link(
    file_id: str,
    body: LinkRequest,
    request: Request,
    files: FilesDep,
    principal: PrincipalDep,
    signer: SignerDep,
) -> Link:
    """A download URL that works without a key until it expires (for <a href> and <img src>)."""
    _authorized(principal, "read", file_id)
    limit = signer.max_expires_in
    if body.direct:
        limit = min(limit, S3_MAX_PRESIGN_SECONDS)
    elif not signer.enabled:
        raise LinkInvalid("Signed links are not configured: set SIGNING_SECRET.", file_id=file_id)
    if body.expires_in > limit:
        raise InvalidArgument(f"expires_in may be at most {limit} s.")
    stored = await files.info(file_id)
    name = check_file_name(body.filename) if body.filename else stored.name
    expires = int(time.time()) + body.expires_in
    if body.direct:
        media_type = content_type_for(name, stored.info.content_type)
        url = await files.presign(
            stored,
            body.expires_in,
            content_disposition=_disposition(name, media_type, body.inline),
            content_type=media_type,
        )
    else:
        terms = LinkTerms(str(stored.file_id), expires, body.filename, body.inline)
        url = signer.url(terms, str(request.base_url))
    return Link(url=url, expires_at=datetime.fromtimestamp(expires, UTC))


def _disposition(name: str, media_type: str, inline: bool) -> str:
    """Inline only for content that cannot script our origin; HTML, SVG, XML always download."""
    return content_disposition(name, inline=inline and not _active_content(media_type, name))


@router.get(
    "/{file_id:path}/info",
    operation_id="get_file_info",
    response_model=FileInfo,
    responses=error_responses(400, 403, 404),
)
async def get_file_info(file_id: str, files: FilesDep, principal: PrincipalDep) -> FileInfo:
    """Size, times, type, original name and metadata of a file."""
    _authorized(principal, "read", file_id)
    return FileInfo.of(await files.info(file_id))


@router.delete(
    "/{file_id:path}",
    operation_id="delete_file",
    response_model=Deleted,
    responses=error_responses(400, 403),
)
async def delete_file(file_id: str, files: FilesDep, principal: PrincipalDep) -> Deleted:
    """Delete a file; deleting one that is already gone also succeeds."""
    _authorized(principal, "delete", file_id)
    return Deleted(file_id=str(await files.delete(file_id)))
