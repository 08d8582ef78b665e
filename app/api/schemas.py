"""The JSON shapes of the HTTP contract (docs/api.md)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, field_serializer

from app.storage.stored import StoredFile


class ErrorBody(BaseModel):
    """Every error response."""

    detail: str = Field(description="A message for a person.")
    code: str = Field(description="A stable machine code, e.g. file_not_found.")
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
        )


class Deleted(BaseModel):
    detail: str = "deleted"
    file_id: str


class LinkRequest(BaseModel):
    """What a signed link grants."""

    expires_in: int = Field(default=3600, gt=0, description="Seconds until the link expires.")
    filename: str | None = Field(default=None, description="Download under this name.")
    inline: bool = Field(default=False, description="Shown in the browser (never HTML/SVG/XML).")
    direct: bool = Field(
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
