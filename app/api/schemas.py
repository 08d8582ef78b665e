"""The JSON shapes of the HTTP contract (docs/api.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, StrictBool, field_serializer

from app.storage.ids import FileIdField
from app.storage.stored import StoredFile


class ErrorBody(BaseModel):
    """Every error response."""

    detail: str = Field(description="A message for a person.")
    code: str = Field(description="A stable machine code, e.g. file_not_found.")
    field: str | None = Field(
        default=None, description="The request field that broke a text rule, e.g. file_name."
    )
    file_id: str | None = None
    file_ids: list[str] | None = None


class FileAttach(BaseModel):
    """What an upload returns."""

    file_id: str
    file_name: str
    file_size: int
    content_type: str
    etag: str

    @classmethod
    def of(cls, stored: StoredFile) -> FileAttach:
        info = stored.info
        return cls(
            file_id=str(stored.file_id),
            file_name=info.file_name or "",
            file_size=info.size,
            content_type=info.content_type or "application/octet-stream",
            etag=info.etag,
        )


class FileInfo(BaseModel):
    """What is known of a stored file."""

    file_id: str
    file_name: str
    file_size: int
    content_type: str
    last_modify_time: datetime
    etag: str
    storage_class: str | None
    metadata: dict[str, str]
    backend: str
    crc32: str | None = Field(
        default=None,
        pattern="^[0-9a-f]{8}$",
        description="The CRC-32 of the content, 8 hex digits, where the storage keeps one "
        "(every file filegate stored does); clients verify downloads with it.",
    )
    moved_from: str | None = Field(
        default=None,
        description="Asked for by a FastDFS id whose file was moved to S3: that id "
        "(file_id is where the file lives now).",
    )

    @field_serializer("last_modify_time")
    def _iso_with_offset(self, value: datetime) -> str:
        return value.isoformat()

    @classmethod
    def of(cls, stored: StoredFile) -> FileInfo:
        info = stored.info
        return cls(
            file_id=str(stored.file_id),
            file_name=stored.name,
            file_size=info.size,
            content_type=info.content_type or "application/octet-stream",
            last_modify_time=info.last_modified,
            etag=info.etag,
            storage_class=info.storage_class,
            metadata=dict(info.metadata),
            backend=stored.file_id.backend,
            crc32=None if info.crc32 is None else f"{info.crc32:08x}",
            moved_from=None if stored.moved_from is None else str(stored.moved_from),
        )


class MigrateRequest(BaseModel):
    """Where a FastDFS file goes in S3 (everything else carries over)."""

    bucket: str | None = Field(default=None, description="Default: S3_DEFAULT_BUCKET.")
    folder: str | None = None
    delete_source: StrictBool = Field(
        default=False, description="Delete the FastDFS copy once the S3 copy is verified."
    )


class Migration(BaseModel):
    """One FastDFS file's move to S3; its old id now serves the new copy."""

    file_id: str = Field(description="The S3 copy's id.")
    moved_from: str
    file_size: int
    crc32: str | None = Field(default=None, pattern="^[0-9a-f]{8}$")
    copied: bool = Field(description="false: an earlier request had already copied it.")
    source_deleted: bool


class Deleted(BaseModel):
    detail: str = "deleted"
    file_id: str


class LinkRequest(BaseModel):
    """What a signed link grants."""

    expires_in: int = Field(default=3600, gt=0, description="Seconds until the link expires.")
    filename: str | None = Field(default=None, description="Download under this name.")
    inline: StrictBool = Field(
        default=False, description="Shown in the browser (never HTML/SVG/XML)."
    )
    direct: StrictBool = Field(
        default=False, description="S3 files: an S3 presigned URL, signed with the read-only pair."
    )


class Link(BaseModel):
    url: str
    expires_at: datetime

    @field_serializer("expires_at")
    def _iso_with_offset(self, value: datetime) -> str:
        return value.isoformat()


class Health(BaseModel):
    status: str = "ok"


class ListedFile(BaseModel):
    """One file of a listing."""

    file_id: str
    file_name: str = Field(description="The original name (from the generated key).")
    file_size: int
    last_modify_time: datetime
    etag: str

    @field_serializer("last_modify_time")
    def _iso_with_offset(self, value: datetime) -> str:
        return value.isoformat()


class FilePage(BaseModel):
    """One page of GET /files, in key order."""

    files: list[ListedFile]
    folders: list[str] = Field(description="Folders one level down, as prefixes (with '/').")
    next_cursor: str | None = Field(
        description="Pass as cursor for the next page; null at the end."
    )


class FolderSummary(BaseModel):
    prefix: str
    file_count: int
    total_size: int
    complete: bool = Field(
        description="false when the count stopped at 1,000,000 files (the figures are a floor)."
    )


class BatchDeleteRequest(BaseModel):
    file_ids: list[FileIdField] = Field(min_length=1, max_length=1000)


class BatchDeleteError(BaseModel):
    file_id: str
    code: str
    detail: str


class BatchDeleteResult(BaseModel):
    deleted: list[str] = Field(description="Deleted (or already missing) files.")
    errors: list[BatchDeleteError]


class DeletePrefixRequest(BaseModel):
    prefix: str = Field(
        min_length=1, description="A folder: s3:<bucket>/<folder>/ or local:<bucket>/<folder>/."
    )
    dry_run: StrictBool = Field(default=False, description="Only count what would be deleted.")


class DeletePrefixResult(BaseModel):
    prefix: str
    file_count: int
    deleted: bool


class CopyRequest(BaseModel):
    """Where a copy goes; everything not given is taken from the source (or the defaults)."""

    backend: Literal["s3", "local", "memory", "fastdfs"] | None = Field(
        default=None, description="Default: where uploads go."
    )
    bucket: str | None = None
    folder: str | None = None
    file_name: str | None = None
    delete_source: StrictBool = Field(default=False, description="A move: needs the delete scope.")
