"""POST /files/download-zip: many files, from any mix of backends, as one streamed zip."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.api.auth import PrincipalDep
from app.api.deps import FilesDep, ZipLimitsDep
from app.api.errors import error_responses
from app.api.responses import ObjectStreamResponse
from app.storage.ids import parse_file_id
from app.storage.zip import ZipRequest, ZipStream, plan

router = APIRouter(prefix="/files", tags=["files"])


class ZipItem(BaseModel):
    file_id: str = Field(description="Any file id: s3:, local: or FastDFS.")
    file_name: str | None = Field(default=None, description="The entry's name inside the zip.")


@router.post(
    "/download-zip",
    operation_id="download_zip",
    status_code=200,
    response_class=ObjectStreamResponse,
    responses={
        200: {
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
            "description": "The archive, streamed as it is built",
        },
        **error_responses(400, 403, 404, 413),
    },
)
async def download_zip(
    items: list[ZipItem],
    files: FilesDep,
    limits: ZipLimitsDep,
    principal: PrincipalDep,
    compression: Annotated[
        Literal["stored", "deflate"],
        Query(description="stored (default) keeps entries as they are; deflate compresses."),
    ] = "stored",
) -> ObjectStreamResponse:
    """Download many files as one zip; every file is checked before the first byte is sent."""
    principal.require("read")
    for item in items:
        principal.check("read", parse_file_id(item.file_id))
    requests = [ZipRequest(item.file_id, item.file_name) for item in items]
    entries = await plan(files, requests, limits)
    return ObjectStreamResponse(
        ZipStream(files, entries, compression),
        f"a zip of {len(entries)} files",
        media_type="application/zip",
        headers={
            "Content-Disposition": 'attachment; filename="files.zip"',
            "X-Content-Type-Options": "nosniff",
        },
    )
