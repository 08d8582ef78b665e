"""POST /files/download-zip: many files, from any mix of backends, as one streamed zip."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import AfterValidator, BaseModel, Field

from app.api.auth import PrincipalDep
from app.api.deps import BulkDep, FilesDep, PrefixQuery
from app.api.errors import declare
from app.api.http import content_disposition
from app.api.responses import ObjectStreamResponse
from app.errors import FileNotFound, FileTooLarge, Forbidden, InvalidArgument
from app.storage.bulk import parse_prefix
from app.storage.ids import FileIdField
from app.storage.zip import MAX_NAME_BYTES, ZipRequest, ZipStream
from app.text import check_text

router = APIRouter(prefix="/files", tags=["files"])

CompressionQuery = Annotated[
    Literal["stored", "deflate"],
    Query(description="stored (default) keeps entries as they are; deflate compresses."),
]


def _entry_name(value: str | None) -> str | None:
    return None if value is None else check_text(value, "zip_entry_name", max_bytes=MAX_NAME_BYTES)


class ZipItem(BaseModel):
    file_id: FileIdField = Field(description="Any file id: s3:, local: or FastDFS.")
    file_name: Annotated[str | None, AfterValidator(_entry_name)] = Field(
        default=None,
        description="The entry's name inside the zip (folders with '/'), at most 65,535 bytes.",
    )


ZIP_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
        "description": "The archive, streamed as it is built",
    },
    **declare(InvalidArgument, Forbidden, FileNotFound, FileTooLarge),
}


@router.post(
    "/download-zip",
    operation_id="download_zip",
    status_code=200,
    response_class=ObjectStreamResponse,
    responses=ZIP_RESPONSES,
)
async def download_zip(
    items: list[ZipItem],
    files: FilesDep,
    principal: PrincipalDep,
    compression: CompressionQuery = "stored",
) -> ObjectStreamResponse:
    """Download many files as one zip; every file is checked before the first byte is sent."""
    requests = [ZipRequest(item.file_id, item.file_name) for item in items]
    archive = await files.zip(principal, requests, compression)
    return _archive(archive, "files.zip")


@router.get(
    "/download-zip",
    operation_id="download_zip_prefix",
    status_code=200,
    response_class=ObjectStreamResponse,
    responses=ZIP_RESPONSES,
)
async def download_zip_prefix(
    prefix: PrefixQuery,
    bulk: BulkDep,
    principal: PrincipalDep,
    compression: CompressionQuery = "stored",
) -> ObjectStreamResponse:
    """Download a folder as one zip: entries are named by their folders below the prefix and
    their original names; every file is checked before the first byte is sent."""
    archive = await bulk.zip_prefix(principal, parse_prefix(prefix), compression)
    folder = prefix.rstrip("/").rsplit("/", 1)[-1].split(":")[-1] or "files"
    return _archive(archive, f"{folder}.zip")


def _archive(archive: ZipStream, name: str) -> ObjectStreamResponse:
    headers = {
        "Content-Disposition": content_disposition(name, plain_ascii=True),
        "X-Content-Type-Options": "nosniff",
    }
    if archive.length is not None:  # stored entries: the size is known, no chunked encoding
        headers["Content-Length"] = str(archive.length)
    return ObjectStreamResponse(
        archive, f"a zip of {archive.count} files", media_type="application/zip",
        headers=headers,
    )  # fmt: skip
