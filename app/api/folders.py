"""Folders and many files at once: list, summarize, delete many ids or a folder, copy and move.

The routes turn HTTP into calls of ``BulkService`` (``app.storage.bulk``), which checks the caller
and walks the storage page by page. A folder zip is in ``app.api.zip``.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from app.api.auth import PrincipalDep
from app.api.deps import BulkDep, FileIdDep, FilesDep
from app.api.errors import declare
from app.api.schemas import (
    BatchDeleteError,
    BatchDeleteRequest,
    BatchDeleteResult,
    CopyRequest,
    DeletePrefixRequest,
    DeletePrefixResult,
    FileAttach,
    FilePage,
    FolderSummary,
    ListedFile,
    MigrateRequest,
    Migration,
)
from app.errors import (
    BucketNotAllowed,
    DeleteNotSupported,
    FileNotFound,
    FileTooLarge,
    Forbidden,
    InsufficientStorage,
    InvalidArgument,
    MovedMeanwhile,
    RouteNotSupported,
    SourceCorrupt,
)
from app.storage.bulk import parse_prefix
from app.storage.migrate import migrate

router = APIRouter(prefix="/files", tags=["folders"])

LIST_ERRORS = declare(InvalidArgument, Forbidden, RouteNotSupported, BucketNotAllowed)
MOVING = (
    InvalidArgument,
    Forbidden,
    RouteNotSupported,
    BucketNotAllowed,
    DeleteNotSupported,
    FileNotFound,
    FileTooLarge,
)
"""What a copy or a migration can meet, besides its own."""
OptionalPrefix = Annotated[
    str | None,
    Query(
        description="A folder in file-id form (s3:files/reports/, local:files/); "
        "default: the root of the upload backend's default bucket.",
    ),
]


def _default_prefix(bulk: BulkDep, prefix: str | None) -> str:
    if prefix is not None:
        return prefix
    routes = bulk.routes
    if routes.upload_to == "fastdfs":
        raise InvalidArgument("FastDFS cannot list files.")
    return f"{routes.upload_to}:{routes.uploads.default_bucket}/"


@router.get(
    "", operation_id="list_files", response_model=FilePage, responses=LIST_ERRORS
)  # fmt: skip
async def list_files(
    bulk: BulkDep,
    principal: PrincipalDep,
    prefix: OptionalPrefix = None,
    delimiter: Annotated[
        str,
        Query(
            description="'/' for one level (default), empty for everything below.", pattern=r"^/?$"
        ),
    ] = "/",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> FilePage:
    """List files (and folders) under a prefix, in key order, a page at a time."""
    page = await bulk.list_files(
        principal,
        parse_prefix(_default_prefix(bulk, prefix)),
        delimiter=delimiter,
        limit=limit,
        cursor=cursor,
    )
    files = [
        ListedFile(
            file_id=str(item.file_id),
            file_name=item.name,
            file_size=item.info.size,
            last_modify_time=item.info.last_modified,
            etag=item.info.etag,
        )
        for item in page.files
    ]
    return FilePage(files=files, folders=page.folders, next_cursor=page.next_cursor)


@router.get(
    "/summary", operation_id="summarize_files", response_model=FolderSummary, responses=LIST_ERRORS
)
async def summarize_files(
    bulk: BulkDep, principal: PrincipalDep, prefix: OptionalPrefix = None
) -> FolderSummary:
    """Count the files under a prefix and add up their sizes (stops at 1,000,000 files)."""
    summary = await bulk.summarize(principal, parse_prefix(_default_prefix(bulk, prefix)))
    return FolderSummary(
        prefix=summary.prefix,
        file_count=summary.file_count,
        total_size=summary.total_size,
        complete=summary.complete,
    )


@router.post(
    "/batch-delete",
    operation_id="batch_delete",
    response_model=BatchDeleteResult,
    responses=declare(
        InvalidArgument, Forbidden, RouteNotSupported, BucketNotAllowed, DeleteNotSupported
    ),
)
async def batch_delete(
    body: BatchDeleteRequest, bulk: BulkDep, principal: PrincipalDep
) -> BatchDeleteResult:
    """Delete up to 1000 files. Every id is checked first: one malformed or forbidden id
    refuses the request and nothing is deleted. Missing files count as deleted."""
    result = await bulk.batch_delete(principal, body.file_ids)
    return BatchDeleteResult(
        deleted=result.deleted,
        errors=[
            BatchDeleteError(file_id=file_id, code=code, detail=detail)
            for file_id, code, detail in result.errors
        ],
    )


@router.post(
    "/delete-prefix",
    operation_id="delete_prefix",
    response_model=DeletePrefixResult,
    responses=declare(InvalidArgument, Forbidden, RouteNotSupported, BucketNotAllowed),
)
async def delete_prefix(
    body: DeletePrefixRequest, bulk: BulkDep, principal: PrincipalDep
) -> DeletePrefixResult:
    """Delete every file under a folder (never a bucket's root), page by page; dry_run counts."""
    count, deleted = await bulk.delete_prefix(
        principal, parse_prefix(body.prefix), dry_run=body.dry_run
    )
    return DeletePrefixResult(prefix=body.prefix, file_count=count, deleted=deleted)


@router.post(
    "/{file_id:file_id}/copy",
    operation_id="copy_file",
    status_code=201,
    response_model=FileAttach,
    responses=declare(*MOVING, InsufficientStorage, MovedMeanwhile),
)
async def copy_file(
    file_id: FileIdDep, body: CopyRequest, bulk: BulkDep, principal: PrincipalDep
) -> JSONResponse:
    """Copy a file within or across backends, under a new id; with delete_source, a move (the
    source is deleted only once the copy is stored)."""
    stored = await bulk.copy(
        principal,
        file_id,
        backend=body.backend,
        bucket=body.bucket,
        folder=body.folder,
        file_name=body.file_name,
        move=body.delete_source,
    )
    attach = FileAttach.of(stored).model_dump()
    headers = {"Location": f"/files/{quote(attach['file_id'])}/info"}
    return JSONResponse(attach, status_code=201, headers=headers)


@router.post(
    "/{file_id:file_id}/migrate",
    operation_id="migrate_file",
    response_model=Migration,
    responses=declare(*MOVING, MovedMeanwhile, SourceCorrupt),
)
async def migrate_file(
    file_id: FileIdDep, body: MigrateRequest, files: FilesDep, principal: PrincipalDep
) -> Migration:
    """Move a FastDFS file to S3 so that its id keeps working (hybrid mode): verified against
    the CRC-32 FastDFS recorded, recorded, then (with delete_source) deleted from FastDFS. Safe
    to repeat: a repeat does what is left and copies nothing twice (docs/fastdfs.md)."""
    done = await migrate(
        files,
        principal,
        file_id,
        bucket=body.bucket,
        folder=body.folder,
        delete_source=body.delete_source,
    )
    return Migration(
        file_id=str(done.file_id),
        moved_from=str(done.moved_from),
        file_size=done.size,
        crc32=None if done.crc32 is None else f"{done.crc32:08x}",
        copied=done.copied,
        source_deleted=done.source_deleted,
    )
