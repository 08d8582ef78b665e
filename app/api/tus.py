"""Resumable uploads: the tus 1.0.0 routes at ``/files/tus`` (docs/tus.md).

HTTP only: headers in, headers out. ``app.storage.tus`` checks the caller, the upload rules, the
offsets and checksums, and keeps the state in the storage backend.
"""

from __future__ import annotations

from email.utils import formatdate
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request, Response

from app.api.auth import PrincipalDep
from app.api.errors import declare
from app.errors import (
    BucketNotAllowed,
    ChecksumMismatch,
    FileTooLarge,
    Forbidden,
    InsufficientStorage,
    InvalidArgument,
    OffsetMismatch,
    RequestTimeout,
    RouteNotSupported,
    UnsupportedMediaType,
    UnsupportedVersion,
    UploadExpired,
    UploadLocked,
    UploadNotFound,
)
from app.storage.ids import in_url
from app.storage.tus.engine import CHECKSUMS, EXTENSIONS, TusService, TusState, parse_checksum

router = APIRouter(prefix="/files/tus", tags=["resumable uploads"])

VERSION = "1.0.0"
OCTETS = "application/offset+octet-stream"
EXPOSED = [
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Defer-Length",
    "Upload-Metadata",
    "Upload-Expires",
    "File-Id",
]
"""Headers a browser may read from tus answers (CORS)."""
ALLOWED = [
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Defer-Length",
    "Upload-Metadata",
    "Upload-Offset",
    "Upload-Checksum",
    "Upload-Concat",
    "Content-Type",
    "Authorization",
    "X-API-Key",
    "X-HTTP-Method-Override",
]
"""Headers a browser may send to the tus routes (CORS)."""


async def get_tus(request: Request) -> TusService:
    tus: TusService | None = request.state.tus
    if tus is None:
        raise RouteNotSupported("Resumable uploads are not available with this storage.")
    return tus


TusDep = Annotated[TusService, Depends(get_tus)]


async def tus_version(
    tus_resumable: Annotated[
        str, Header(description="The tus protocol version.", json_schema_extra={"enum": [VERSION]})
    ],
) -> None:
    if tus_resumable != VERSION:
        raise UnsupportedVersion(f"Tus-Resumable must be {VERSION}.")


Versioned = Depends(tus_version)
UploadId = Annotated[
    str,
    Path(
        description="The upload id from Location (32 hex digits; in fastdfs mode, the appender "
        "file's id in base64url).",
        pattern=r"^[0-9A-Za-z_-]{32,256}$",
    ),
]
CHECKSUM_PATTERN = (
    r"^(sha1 [A-Za-z0-9+/]{27}=|sha256 [A-Za-z0-9+/]{43}=|md5 [A-Za-z0-9+/]{22}==|"
    r"crc32 [A-Za-z0-9+/]{6}==)$"
)
TUS_ERRORS = (Forbidden, RouteNotSupported, InvalidArgument, UnsupportedVersion)


def _header(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {name: {"description": description, "schema": schema}}


def _expires(state: TusState) -> str:
    return formatdate(state.expires, usegmt=True)


def _state_headers(state: TusState) -> dict[str, str]:
    headers = {
        "Tus-Resumable": VERSION,
        "Upload-Offset": str(state.offset),
        "Upload-Expires": _expires(state),
        "Cache-Control": "no-store",
    }
    if state.done:
        headers["File-Id"] = in_url(state.file_id)
    return headers


def _length(value: str | None, what: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or len(value) > 19:
        raise InvalidArgument(f"{what} must be a non-negative integer.")
    return int(value)


STATE_HEADERS = {
    **_header("Tus-Resumable", "1.0.0", {"type": "string"}),
    **_header("Upload-Offset", "Bytes received so far.", {"type": "integer"}),
    **_header("Upload-Expires", "When the upload expires (HTTP date).", {"type": "string"}),
    **_header("File-Id", "Once complete: the file's id.", {"type": "string"}),
}


@router.options(
    "",
    operation_id="tus_options",
    response_class=Response,
    status_code=204,
    responses={
        204: {
            "description": "What this server offers.",
            "headers": {
                **_header("Tus-Version", "1.0.0", {"type": "string"}),
                **_header("Tus-Extension", "The extensions offered.", {"type": "string"}),
                **_header("Tus-Checksum-Algorithm", "sha1,sha256,md5,crc32", {"type": "string"}),
                **_header("Tus-Max-Size", "MAX_FILE_SIZE, when set.", {"type": "integer"}),
            },
        }
    },
)
async def tus_options(tus: TusDep) -> Response:
    """What the tus server supports (no key needed)."""
    return _capabilities(tus)


@router.options(
    "/{upload_id}",
    operation_id="tus_upload_options",
    response_class=Response,
    status_code=204,
    responses={204: {"description": "What this server offers (as OPTIONS /files/tus)."}},
)
async def tus_upload_options(upload_id: UploadId, tus: TusDep) -> Response:
    """The same as OPTIONS /files/tus, on an upload's URL."""
    return _capabilities(tus)


def _capabilities(tus: TusService) -> Response:
    headers = {
        "Tus-Resumable": VERSION,
        "Tus-Version": VERSION,
        "Tus-Extension": ",".join(EXTENSIONS),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
    }
    if tus.max_size:
        headers["Tus-Max-Size"] = str(tus.max_size)
    return Response(status_code=204, headers=headers)


@router.post(
    "",
    operation_id="tus_create",
    response_class=Response,
    status_code=201,
    dependencies=[Versioned],
    responses={
        201: {
            "description": "Created; Location is the upload's URL.",
            "headers": {
                **_header("Location", "The upload's URL.", {"type": "string"}),
                **STATE_HEADERS,
            },
        },
        **declare(
            *TUS_ERRORS,
            BucketNotAllowed,
            FileTooLarge,
            InsufficientStorage,
            RequestTimeout,
            ChecksumMismatch,
            UnsupportedMediaType,
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": False,
            "description": "creation-with-upload: the first bytes of the file.",
            "content": {OCTETS: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def tus_create(
    request: Request,
    tus: TusDep,
    principal: PrincipalDep,
    upload_length: Annotated[
        str | None, Header(description="The file's size in bytes.", pattern=r"^[0-9]{1,19}$")
    ] = None,
    upload_defer_length: Annotated[
        str | None, Header(description="1: the size is given later.", pattern=r"^1$")
    ] = None,
    upload_metadata: Annotated[
        str | None,
        Header(description="filename (required), filetype, folder, bucket, metadata: base64."),
    ] = None,
    upload_checksum: Annotated[
        str | None,
        Header(description="<algorithm> <base64 digest> of the body.", pattern=CHECKSUM_PATTERN),
    ] = None,
    content_type: Annotated[str | None, Header()] = None,
) -> Response:
    """Create an upload (every upload rule is checked here); with a body, also its first bytes."""
    length = _length(upload_length, "Upload-Length")
    if length is None and upload_defer_length != "1":
        raise InvalidArgument("Give Upload-Length, or Upload-Defer-Length: 1.")
    with_body = content_type is not None and content_type.split(";")[0].strip() == OCTETS
    if (
        content_type is not None
        and not with_body
        and request.headers.get("content-length", "0") != "0"
    ):
        raise UnsupportedMediaType(f"A body at creation must be {OCTETS}.")
    checksum = parse_checksum(upload_checksum)
    state = await tus.create(principal, length, upload_metadata)
    if with_body or length == 0:
        state = await tus.append(state, 0, request.stream(), checksum=checksum)
    base = request.app.state.public_base_url or str(request.base_url).rstrip("/")
    headers = {**_state_headers(state), "Location": f"{base}/files/tus/{state.id}"}
    return Response(status_code=201, headers=headers)


@router.head(
    "/{upload_id}",
    operation_id="tus_status",
    response_class=Response,
    dependencies=[Versioned],
    responses={
        200: {
            "description": "The upload's state.",
            "headers": {
                **STATE_HEADERS,
                **_header("Upload-Length", "The file's size, once known.", {"type": "integer"}),
                **_header(
                    "Upload-Defer-Length", "1 while the size is unknown.", {"type": "integer"}
                ),
                **_header("Upload-Metadata", "As sent at creation.", {"type": "string"}),
            },
        },
        **declare(*TUS_ERRORS, UploadNotFound, UploadExpired),
    },
)
async def tus_status(upload_id: UploadId, tus: TusDep, principal: PrincipalDep) -> Response:
    """Where an upload stands: the offset to resume from."""
    state = await tus.status(principal, upload_id)
    headers = _state_headers(state)
    if state.length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(state.length)
    if state.upload_metadata:
        headers["Upload-Metadata"] = state.upload_metadata
    return Response(status_code=200, headers=headers)


@router.patch(
    "/{upload_id}",
    operation_id="tus_patch",
    response_class=Response,
    status_code=204,
    dependencies=[Versioned],
    responses={
        204: {"description": "Stored; Upload-Offset is the new offset.", "headers": STATE_HEADERS},
        **declare(
            *TUS_ERRORS,
            UploadNotFound,
            UploadExpired,
            OffsetMismatch,
            UploadLocked,
            ChecksumMismatch,
            UnsupportedMediaType,
            FileTooLarge,
            InsufficientStorage,
            RequestTimeout,
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {OCTETS: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def tus_patch(
    request: Request,
    upload_id: UploadId,
    tus: TusDep,
    principal: PrincipalDep,
    upload_offset: Annotated[
        str, Header(description="Where this chunk starts.", pattern=r"^[0-9]{1,19}$")
    ],
    content_type: Annotated[str, Header(description=OCTETS)],
    upload_length: Annotated[
        str | None,
        Header(
            description="The size, for an upload created with Upload-Defer-Length.",
            pattern=r"^[0-9]{1,19}$",
        ),
    ] = None,
    upload_checksum: Annotated[
        str | None,
        Header(description="<algorithm> <base64 digest> of this chunk.", pattern=CHECKSUM_PATTERN),
    ] = None,
) -> Response:
    """Append a chunk at Upload-Offset. The PATCH that completes the upload answers once the file
    is stored, with File-Id."""
    if content_type.split(";")[0].strip() != OCTETS:
        raise UnsupportedMediaType(f"A PATCH body must be {OCTETS}.")
    offset = _length(upload_offset, "Upload-Offset")
    assert offset is not None
    state = await tus.patch(
        principal,
        upload_id,
        offset,
        request.stream(),
        length=_length(upload_length, "Upload-Length"),
        checksum=parse_checksum(upload_checksum),
    )
    return Response(status_code=204, headers=_state_headers(state))


@router.delete(
    "/{upload_id}",
    operation_id="tus_terminate",
    response_class=Response,
    status_code=204,
    dependencies=[Versioned],
    responses={
        204: {"description": "Everything stored for the upload is removed."},
        **declare(*TUS_ERRORS, UploadNotFound, UploadExpired, UploadLocked),
    },
)
async def tus_terminate(upload_id: UploadId, tus: TusDep, principal: PrincipalDep) -> Response:
    """Stop an upload and remove what it stored (a completed upload's file stays)."""
    await tus.terminate(principal, upload_id)
    return Response(status_code=204, headers={"Tus-Resumable": VERSION})
