"""The narrow protocol every storage backend implements, and the small models it speaks.

A backend stores bytes under an ``ObjectRef`` (bucket + key). It knows nothing of HTTP, file ids,
validation or routing: those live in ``app.storage.fusion``. Every backend honours the same rules:

- ``put`` consumes the body as it arrives and stores it completely or not at all: if the body
  iterator raises (size limit, client disconnect) or the task is cancelled, nothing is left behind.
- ``open`` raises ``FileNotFound`` before returning, so the caller can still choose a status; the
  returned stream must be closed with ``aclose()``.
- ``delete`` of a missing object is not an error.
- Every SDK failure is raised as a ``StorageError`` subclass (``app.storage.errors``).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """Where an object lives inside one backend."""

    bucket: str
    key: str


@dataclass(frozen=True, slots=True)
class NewObject:
    """What ``put`` is asked to store besides the bytes."""

    ref: ObjectRef
    file_name: str
    content_type: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    size: int | None = None
    """The body's length when the client declared it (FastDFS needs it before the content)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a backend knows of a stored object."""

    ref: ObjectRef
    size: int
    etag: str
    """Quoted, as sent in the ``ETag`` header."""
    last_modified: datetime
    file_name: str | None = None
    content_type: str | None = None
    storage_class: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    crc32: int | None = None
    """The content's CRC-32 when the backend knows it without reading the content (zip entries
    can then be stored as they are, in one pass)."""


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive, already validated byte range inside an object."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


Chunk = bytes | memoryview
"""A piece of an object: bytes, or a zero-copy view of a client library's buffer (obstore)."""


class ObjectStream(Protocol):
    """The bytes of one object (or of a range of it), read in chunks as the consumer asks."""

    def __aiter__(self) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None:
        """Release the file handle or connection; safe to call more than once."""


class Loaded:
    """All the bytes of a small object (or range), already read when it was opened: served as
    they are, without a stream. Also the bytes of an empty file, which some backends (FastDFS)
    refuse to serve themselves."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.data:
            yield self.data

    async def aclose(self) -> None:
        return None


class Writer(Protocol):
    async def put(self, obj: NewObject, body: AsyncIterable[Chunk]) -> ObjectInfo:
        """Store ``body`` under ``obj.ref``, all of it or nothing."""


class Reader(Protocol):
    async def head(self, ref: ObjectRef) -> ObjectInfo:
        """Describe a stored object; ``FileNotFound`` if there is none."""

    async def open(self, ref: ObjectRef, byte_range: ByteRange | None = None) -> ObjectStream:
        """Start reading an object, or the inclusive ``byte_range`` of it."""


class Deleter(Protocol):
    async def delete(self, ref: ObjectRef) -> None:
        """Remove an object; a missing one is not an error."""


class Backend(Writer, Reader, Deleter, Protocol):
    """One storage system behind filegate: what every backend does. What only some can do is a
    capability of its own below (``Lister``, ``BatchDeleter``, ``ServerCopier``, ``Presigner``,
    ``ChecksumReader``, ``Fetcher``), tested with ``isinstance``; a wrapper such as the cache
    has exactly the capabilities of what it wraps (docs/architecture.md, "Backends")."""

    name: str
    """The id prefix and ``backend`` field of FileInfo: ``local``, ``s3``, ``fastdfs``,
    ``memory``."""

    async def check(self) -> None:
        """Raise ``StorageError`` unless the backend can serve now (for readiness)."""


@dataclass(frozen=True, slots=True)
class Listing:
    """One page of a listing, in key order."""

    objects: list[ObjectInfo]
    folders: list[str]
    """Key prefixes ending in the delimiter (one level down), when a delimiter was given."""
    next_token: str | None
    """The last key or folder of this page, after which the next page starts; None after the
    last page."""


@runtime_checkable
class Lister(Protocol):
    """A backend that can list keys under a prefix (S3, local disk; FastDFS cannot)."""

    async def list_page(
        self, bucket: str, prefix: str, *, delimiter: str, limit: int, token: str | None
    ) -> Listing:
        """Up to ``limit`` objects and folders under ``prefix`` whose keys sort after ``token``
        (any string; a folder ``a/`` as a token skips everything in it when listing by folder)."""


@runtime_checkable
class BatchDeleter(Protocol):
    """A backend that deletes many keys in one request (S3's DeleteObjects)."""

    async def delete_many(self, bucket: str, keys: list[str]) -> dict[str, str]:
        """Delete up to 1000 keys; the keys that failed, with the backend's reason."""


class CopyNotPossible(Exception):
    """A copy the backend cannot make itself (e.g. an S3 write pair that may not read the
    source): the caller streams the bytes instead."""


@runtime_checkable
class ServerCopier(Protocol):
    """A backend that copies an object within itself without moving the bytes through us."""

    async def copy_within(self, source: ObjectInfo, new: NewObject) -> ObjectInfo:
        """Copy ``source`` to ``new.ref`` with ``new``'s name, type and metadata."""


@runtime_checkable
class Presigner(Protocol):
    """A backend that can hand out URLs its storage serves directly (S3)."""

    async def presign(
        self, ref: ObjectRef, expires_in: int, *, content_disposition: str, content_type: str
    ) -> str:
        """A GET URL for ``ref``, valid ``expires_in`` seconds, signed with the read credentials."""


@runtime_checkable
class ChecksumReader(Protocol):
    """A backend that can be asked for a CRC-32 it keeps apart from ``head`` (S3 multipart)."""

    async def stored_crc32(self, ref: ObjectRef, etag: str | None = None) -> int | None:
        """The whole object's CRC-32, if the storage keeps one (may cost a request); ``etag``:
        the version ``head`` saw."""


@runtime_checkable
class Fetcher(Protocol):
    """A backend that describes and starts reading an object in one round trip (S3's GET)."""

    async def fetch(self, ref: ObjectRef) -> tuple[ObjectInfo, ObjectStream]:
        """What ``head`` and ``open`` (whole object) give, from a single request."""
