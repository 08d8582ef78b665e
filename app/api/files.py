"""The routes on one stored file: what is known of it, and deleting it."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.auth import PrincipalDep
from app.api.deps import FileIdDep, FilesDep
from app.api.errors import declare
from app.api.schemas import Deleted, FileInfo
from app.errors import FileNotFound, Forbidden, InvalidArgument

router = APIRouter(prefix="/files", tags=["files"])


@router.get(
    "/{file_id:file_id}/info",
    operation_id="get_file_info",
    response_model=FileInfo,
    responses=declare(InvalidArgument, Forbidden, FileNotFound),
)
async def get_file_info(file_id: FileIdDep, files: FilesDep, principal: PrincipalDep) -> FileInfo:
    """Size, times, type, original name, metadata and CRC-32 of a file."""
    return FileInfo.of(await files.info(principal, file_id, with_crc32=True))


@router.delete(
    "/{file_id:bare_file_id}",
    operation_id="delete_file",
    response_model=Deleted,
    responses=declare(InvalidArgument, Forbidden),
)
async def delete_file(file_id: FileIdDep, files: FilesDep, principal: PrincipalDep) -> Deleted:
    """Delete a file; deleting one that is already gone also succeeds."""
    await files.delete(principal, file_id)
    return Deleted(file_id=str(file_id))
