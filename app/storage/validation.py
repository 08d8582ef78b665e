"""What an upload must satisfy before and while it is stored: name, folder, type, size, metadata."""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass

from app.errors import FileTooLarge, InvalidFileType, TooManyFiles
from app.storage.base import Chunk
from app.storage.ids import RESERVED_FOLDERS
from app.text import check_text, refuse

MAX_NAME_BYTES = 200
"""Leaves room for the 17-character key prefix within a file system's 255-byte name limit."""
MAX_FOLDER_BYTES = 512
MAX_FOLDER_DEPTH = 16
MAX_SEGMENT_BYTES = 255
"""A folder is a directory on local disk: each segment within a file system's name limit."""
MAX_METADATA_ENTRIES = 32
FORM_OVERHEAD = 256 * 1024
"""Room for boundaries and text fields when a one-file form's Content-Length is checked up front."""
MAX_METADATA_BYTES = 1024
"""Keys plus values, UTF-8: keeps S3's 2 KB user-metadata limit after encoding."""
RESERVED_METADATA_PREFIX = "filegate-"
_METADATA_KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def check_file_name(name: str, field: str = "file_name") -> str:
    """Return ``name`` unchanged if it is a safe single path segment, else ``InvalidArgument``
    naming ``field`` (``filename`` for a download or link name)."""
    if not name or not name.strip():
        raise refuse(field, "is empty")
    check_text(name, field, max_bytes=MAX_NAME_BYTES, name=True)
    _check_segment(name, field)
    return name


def check_folder(folder: str | None) -> str:
    """Normalise a relative folder (``a/b``; one trailing ``/`` allowed); ``""`` for none."""
    if not folder:
        return ""
    check_text(folder, "folder", max_bytes=MAX_FOLDER_BYTES, name=True)
    if folder.startswith("/"):
        raise refuse("folder", "must be a relative path (no leading '/')")
    folder = folder.removesuffix("/")
    segments = folder.split("/")
    if segments[0] in RESERVED_FOLDERS:
        reserved = segments[0]
        raise refuse("folder", f"must not start with {reserved} ({RESERVED_FOLDERS[reserved]})")
    if len(segments) > MAX_FOLDER_DEPTH:
        raise refuse("folder", f"is deeper than {MAX_FOLDER_DEPTH} levels")
    for segment in segments:
        if not segment.strip():
            raise refuse("folder", "has an empty segment")
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            raise refuse("folder", f"has a segment longer than {MAX_SEGMENT_BYTES} bytes")
        _check_segment(segment, "folder")
    return folder


def _check_segment(segment: str, field: str) -> None:
    if "/" in segment or "\\" in segment:
        raise refuse(field, "must not contain path separators ('/' or '\\')")
    if segment in (".", ".."):
        raise refuse(field, "must not be '.' or '..'")


def extension(name: str) -> str:
    """The lowercased last extension without the dot; ``""`` for ``Makefile`` or ``.bashrc``."""
    stem, dot, ext = name.lstrip(".").rpartition(".")
    return ext.lower() if dot and stem else ""


def check_metadata(metadata: Mapping[str, object]) -> dict[str, str]:
    """User metadata: string to string, lowercase ASCII keys, bounded in count and size."""
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise refuse("metadata", f"has more than {MAX_METADATA_ENTRIES} entries")
    size = 0
    checked: dict[str, str] = {}
    for key, value in metadata.items():
        if _METADATA_KEY.fullmatch(key) is None or key.startswith(RESERVED_METADATA_PREFIX):
            raise refuse(
                "metadata",
                f"key {key!a} is not allowed: use 1-64 lowercase letters, digits, "
                f"'-' or '_', not starting with {RESERVED_METADATA_PREFIX!r}",
            )
        if not isinstance(value, str):
            raise refuse("metadata", f"value of {key!r} must be a string")
        check_text(value, "metadata", max_bytes=MAX_METADATA_BYTES)
        size += len(key) + len(value.encode())
        checked[key] = value
    if size > MAX_METADATA_BYTES:
        raise refuse("metadata", f"is larger than {MAX_METADATA_BYTES} bytes")
    return checked


@dataclass(frozen=True, slots=True)
class UploadPolicy:
    """The operator's limits on what may be stored."""

    max_file_size: int = 0
    """Bytes; 0 means no limit."""
    whitelist: frozenset[str] = frozenset()
    blacklist: frozenset[str] = frozenset()
    max_batch_files: int = 100

    def check_batch_count(self, count: int) -> None:
        """Refuse the ``count``-th file of one batch upload if that is over the limit."""
        if count > self.max_batch_files:
            raise TooManyFiles(f"At most {self.max_batch_files} files per batch upload.")

    def check_type(self, name: str) -> None:
        ext = extension(name)
        if ext in self.blacklist or (self.whitelist and ext not in self.whitelist):
            shown = f".{ext}" if ext else "without an extension"
            raise InvalidFileType(f"Files {shown} are not accepted.")

    def check_declared_size(self, size: int | None) -> None:
        """Refuse a body whose declared length is already over the limit, before reading it."""
        if size is not None and 0 < self.max_file_size < size:
            raise self._too_large()

    def check_declared_form(self, length: int | None) -> None:
        """Refuse a one-file form whose Content-Length cannot fit under the limit."""
        if length is not None:
            self.check_declared_size(length - FORM_OVERHEAD)

    async def limit(self, body: AsyncIterable[Chunk]) -> AsyncIterator[Chunk]:
        """Pass ``body`` through, raising ``FileTooLarge`` as soon as it passes the limit."""
        total = 0
        async for chunk in body:
            total += len(chunk)
            if 0 < self.max_file_size < total:
                raise self._too_large()
            yield chunk

    def _too_large(self) -> FileTooLarge:
        return FileTooLarge(f"The file is larger than the limit of {self.max_file_size} bytes.")
