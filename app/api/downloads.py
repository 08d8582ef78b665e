"""The download routes: GET and HEAD of a file (with a key or through a signed link), and the
creation of signed links. What to answer is decided by ``app.api.decision`` before any byte."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, ValidationError

from app.access import LinkTerms, Principal
from app.api.auth import PrincipalDep, keyring_of, presented_key, signer_of
from app.api.decision import Decision, decide, disposition, is_plain
from app.api.deps import FileIdDep, FilesDep, direct_route, files_of
from app.api.errors import declare
from app.api.responses import ObjectStreamResponse
from app.api.schemas import Link, LinkRequest
from app.errors import (
    FileNotFound,
    Forbidden,
    InvalidArgument,
    LinkInvalid,
    RangeNotSatisfiable,
)
from app.storage.base import Loaded
from app.storage.ids import FileId, parse_file_id
from app.storage.service import FileService
from app.storage.stored import StoredFile, content_type_for
from app.storage.validation import check_file_name

router = APIRouter(prefix="/files", tags=["files"])

S3_MAX_PRESIGN_SECONDS = 7 * 24 * 3600


class DownloadQuery(BaseModel):
    """How a download is served, and the signature of a signed link."""

    inline: bool = Field(False, description="Content-Disposition: inline instead of attachment.")
    filename: str | None = Field(None, description="Download under this name instead.")
    expires: int | None = Field(
        None, description="Signed links: Unix time until which the link is valid."
    )
    signature: str | None = Field(
        None, description="Signed links: the signature; no API key is needed then."
    )


_DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": "The file",
    },
    206: {"description": "The requested byte range"},
    304: {"description": "Not modified (If-None-Match / If-Modified-Since)"},
    **declare(InvalidArgument, Forbidden, FileNotFound, RangeNotSatisfiable),
}


@dataclass(frozen=True, slots=True)
class Admitted:
    """Who downloads which file, how it is to be served, and the service to ask."""

    files: FileService
    principal: Principal
    file_id: FileId
    inline: bool
    filename: str | None
    cache_control: str
    """``DOWNLOAD_CACHE_CONTROL`` with a key; a signed link may be kept by any cache (the URL is
    the credential) until it expires (docs/api.md, "Caching")."""

    def decide(self, stored: StoredFile, request_headers: Mapping[str, str]) -> Decision:
        """What to answer for ``stored`` to a request with these headers."""
        return decide(
            stored.info,
            self.filename or stored.name,
            inline=self.inline,
            request_headers=request_headers,
            cache_control=self.cache_control,
        )


async def admit_download(
    request: Request,
    file_id: Annotated[str, Path(description="A file id: s3:, local: or a FastDFS id.")],
    query: Annotated[DownloadQuery, Query()],
) -> Admitted:
    """A key, or a signed link for exactly this id, expiry and these options; a signed link's
    principal may read this one file only. (One dependency: each one costs time per request.)"""
    parsed = parse_file_id(file_id)
    if query.filename is not None:
        check_file_name(query.filename, "filename")
    cache_control: str = request.state.cache_control
    if query.expires is None and query.signature is None:
        principal = keyring_of(request).authenticate(presented_key(request.headers))
    elif query.expires is None or query.signature is None:
        raise LinkInvalid("A signed link needs both 'expires' and 'signature'.", file_id=file_id)
    else:
        terms = LinkTerms(str(parsed), query.expires, query.filename, query.inline)
        signer_of(request).verify(terms, query.signature)
        principal = Principal.for_link(parsed)
        cache_control = f"public, max-age={max(0, query.expires - int(time.time()))}, immutable"
    return Admitted(
        files_of(request), principal, parsed, query.inline, query.filename, cache_control
    )


AdmittedDep = Annotated[Admitted, Depends(admit_download)]


def _query(request: Request) -> DownloadQuery:
    """The query, validated as FastAPI would: the last value of each name, others ignored, an
    invalid value a ``RequestValidationError`` located in ``query`` (so the same 400)."""
    try:
        return DownloadQuery.model_validate(dict(request.query_params))
    except ValidationError as exc:
        errors = [{**error, "loc": ("query", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None


async def _admitted(request: Request) -> dict[str, Any]:
    """``download_file``'s and ``download_file_head``'s arguments, as FastAPI would resolve them
    (``direct_route``)."""
    admitted = await admit_download(request, request.path_params["file_id"], _query(request))
    return {"request": request, "admitted": admitted}


async def download_file(request: Request, admitted: AdmittedDep) -> Response:
    """Download a file, or one byte range of it (with an API key, or through a signed link)."""
    files = admitted.files
    if is_plain(request.headers):
        # Nothing to decide before the body: one round trip where the backend can (S3: one GET).
        stored, stream = await files.fetch(admitted.principal, admitted.file_id)
        try:
            decision = admitted.decide(stored, {})
        except BaseException:
            await stream.aclose()
            raise
    else:
        stored = await files.info(admitted.principal, admitted.file_id)
        decision = admitted.decide(stored, request.headers)
        if not decision.has_body:
            return Response(status_code=decision.status, headers=decision.headers)
        stream = await files.open(admitted.principal, stored, decision.byte_range)
    if isinstance(stream, Loaded):  # small, already read: no streaming machinery needed
        return Response(
            stream.data,
            status_code=decision.status,
            headers=decision.headers,
            media_type=decision.media_type,
        )
    return ObjectStreamResponse(
        stream,
        str(stored.file_id),
        status_code=decision.status,
        headers=decision.headers,
        media_type=decision.media_type,
    )


async def download_file_head(request: Request, admitted: AdmittedDep) -> Response:
    """The headers a download would send, without the body."""
    files = admitted.files
    stored = await files.info(admitted.principal, admitted.file_id)
    decision = admitted.decide(stored, request.headers)
    media_type = decision.media_type if decision.has_body else None
    return Response(status_code=decision.status, headers=decision.headers, media_type=media_type)


for _method, _endpoint, _operation, _class in (
    ("GET", download_file, "download_file", StreamingResponse),
    ("HEAD", download_file_head, "download_file_head", Response),
):  # as @router.get / @router.head would, with a direct_route as the route class
    router.add_api_route(
        "/{file_id:file_id}/download",
        _endpoint,
        methods=[_method],
        operation_id=_operation,
        response_class=_class,
        responses=_DOWNLOAD_RESPONSES,
        route_class_override=direct_route(_admitted),
    )


@router.post(
    "/{file_id:file_id}/link",
    operation_id="create_link",
    response_model=Link,
    responses=declare(InvalidArgument, Forbidden, FileNotFound),
)
async def create_link(
    file_id: FileIdDep,
    body: LinkRequest,
    request: Request,
    files: FilesDep,
    principal: PrincipalDep,
) -> Link:
    """A download URL that works without a key until it expires (for <a href> and <img src>)."""
    signer = signer_of(request)
    limit = signer.max_expires_in
    if body.direct:
        limit = min(limit, S3_MAX_PRESIGN_SECONDS)
    elif not signer.enabled:
        raise LinkInvalid(
            "Signed links are not configured: set SIGNING_SECRET.", file_id=str(file_id)
        )
    if body.expires_in > limit:
        raise InvalidArgument(f"expires_in may be at most {limit} s.")
    filename = body.filename or None  # "" names nothing: the file's own name
    if filename is not None:
        check_file_name(filename, "filename")
    stored = await files.info(principal, file_id)
    name = filename or stored.name
    expires = int(time.time()) + body.expires_in
    if body.direct:
        media_type = content_type_for(name, stored.info.content_type)
        url = await files.presign(
            principal,
            stored,
            body.expires_in,
            content_disposition=disposition(name, media_type, body.inline),
            content_type=media_type,
        )
    else:
        terms = LinkTerms(str(stored.file_id), expires, filename, body.inline)
        url = signer.url(terms, str(request.base_url))
    return Link(url=url, expires_at=datetime.fromtimestamp(expires, UTC))
