"""The memory backend (``STORAGE_MODE=memory``): every operation, nothing on disk, nothing kept
across a restart. For tests of applications that use filegate, demos and short-lived previews
(docs/architecture.md, "Memory").

An object is its bytes in pieces of about ``PIECE`` bytes, immutable once stored, plus its record.
Pieces are ``bytes``, so a download hands out views of them without copying, a copy shares them,
and a delete during a read leaves the reader its pieces. ``MEMORY_MAX_SIZE`` bounds what objects
and unfinished resumable uploads hold together (``Room``): an upload takes room as its bytes
arrive and gets ``507`` (``InsufficientStorage``) the moment it would go over, keeping nothing.
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from app.errors import FileNotFound, InsufficientStorage, InvalidArgument
from app.storage.base import (
    ByteRange,
    Chunk,
    Listing,
    Loaded,
    NewObject,
    ObjectInfo,
    ObjectRef,
    ObjectStream,
)
from app.storage.crc import crc32

PIECE = 1024 * 1024
"""Bytes gathered into one stored piece (and the most one download chunk carries)."""
INLINE_READ = 256 * 1024
"""A read this small is answered as bytes, not a stream."""


class Room:
    """The bytes the memory backend may hold, shared by objects and resumable uploads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        if self.used + size > self.limit:
            raise InsufficientStorage(
                f"The memory backend is full ({self.used} of {self.limit} bytes held; "
                "MEMORY_MAX_SIZE). Nothing of this upload was kept."
            )
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size


class Pieces:
    """Bytes received so far, gathered into pieces of about ``PIECE``; each byte is counted in
    ``room`` as it arrives, and ``drop`` hands all of it back."""

    def __init__(self, room: Room) -> None:
        self.room = room
        self.pieces: list[bytes] = []
        self.size = 0
        self.crc32 = 0
        self._buffer = bytearray()

    def add(self, chunk: Chunk) -> None:
        self.room.take(len(chunk))
        self.size += len(chunk)
        self.crc32 = crc32(chunk, self.crc32)
        self._buffer += chunk
        if len(self._buffer) >= PIECE:
            self.pieces.append(bytes(self._buffer))
            self._buffer.clear()

    def seal(self) -> tuple[bytes, ...]:
        if self._buffer:
            self.pieces.append(bytes(self._buffer))
            self._buffer.clear()
        return tuple(self.pieces)

    def cut(self, size: int) -> None:
        """Keep only the first ``size`` bytes (a tus PATCH that may not keep what it sent):
        whole pieces stay as they are, the one the cut falls in is shortened, and the CRC-32 is
        taken again over what stays, piece by piece (never a copy of the whole)."""
        kept: list[bytes] = []
        crc = position = 0
        for piece in self.seal():
            if position >= size:
                break
            part = piece[: size - position]  # the piece itself when it fits whole
            kept.append(part)
            crc = crc32(part, crc)
            position += len(part)
        self.room.give(self.size - size)
        self.pieces, self.size, self.crc32 = kept, size, crc

    def drop(self) -> None:
        self.room.give(self.size)
        self.pieces, self.size = [], 0
        self._buffer.clear()


@dataclass(frozen=True, slots=True)
class _Stored:
    info: ObjectInfo
    pieces: tuple[bytes, ...]
    starts: tuple[int, ...]
    """Where each piece starts in the object."""


class MemoryStream:
    """Views of an object's pieces over one byte span; nothing is copied."""

    def __init__(self, stored: _Stored, start: int, end: int) -> None:
        self._stored = stored
        self._start = start
        self._end = end  # exclusive

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        for view in _views(self._stored, self._start, self._end):
            yield view

    async def aclose(self) -> None:
        return None


class MemoryBackend:
    name = "memory"

    def __init__(self, limit: int) -> None:
        self.room = Room(limit)
        self._objects: dict[str, dict[str, _Stored]] = {}
        self._keys: dict[str, list[str]] = {}
        """Each bucket's keys in order, for listing."""
        self.uploads: dict[str, Any] = {}
        """Unfinished resumable uploads, kept by ``app.storage.tus.memory``."""

    async def check(self) -> None:
        return None

    def keys(self, bucket: str) -> list[str]:
        """Every key stored in ``bucket``, in order."""
        return list(self._keys.get(bucket, []))

    def _get(self, ref: ObjectRef) -> _Stored:
        stored = self._objects.get(ref.bucket, {}).get(ref.key)
        if stored is None:
            raise FileNotFound("No such file.")
        return stored

    async def head(self, ref: ObjectRef) -> ObjectInfo:
        return self._get(ref).info

    async def open(self, ref: ObjectRef, byte_range: ByteRange | None = None) -> ObjectStream:
        stored = self._get(ref)
        if byte_range is None:
            return _span(stored, 0, stored.info.size)
        return _span(stored, byte_range.start, min(byte_range.end + 1, stored.info.size))

    async def fetch(self, ref: ObjectRef) -> tuple[ObjectInfo, ObjectStream]:
        stored = self._get(ref)
        return stored.info, _span(stored, 0, stored.info.size)

    async def put(self, obj: NewObject, body: AsyncIterable[Chunk]) -> ObjectInfo:
        received = Pieces(self.room)
        try:
            async for chunk in body:
                received.add(chunk)
        except BaseException:
            received.drop()
            raise
        return self.keep(obj, received.seal(), received.crc32)

    def keep(self, obj: NewObject, pieces: tuple[bytes, ...], crc: int) -> ObjectInfo:
        """Store pieces whose size is counted in ``room`` already, as ``obj``."""
        size = sum(len(piece) for piece in pieces)
        info = ObjectInfo(
            ref=obj.ref,
            size=size,
            etag=f'"{crc:08x}-{size:x}"',  # keys are never reused: CRC and size tell versions
            last_modified=datetime.now(UTC),
            file_name=obj.file_name,
            content_type=obj.content_type,
            metadata=dict(obj.metadata),
            crc32=crc,
        )
        self._insert(_Stored(info, pieces, _starts(pieces)))
        return info

    def _insert(self, stored: _Stored) -> None:
        ref = stored.info.ref
        bucket = self._objects.setdefault(ref.bucket, {})
        old = bucket.get(ref.key)
        if old is not None:
            self.room.give(old.info.size)
        else:
            bisect.insort(self._keys.setdefault(ref.bucket, []), ref.key)
        bucket[ref.key] = stored

    async def delete(self, ref: ObjectRef) -> None:
        bucket = self._objects.get(ref.bucket, {})
        stored = bucket.pop(ref.key, None)
        if stored is None:
            return
        self.room.give(stored.info.size)
        keys = self._keys[ref.bucket]
        del keys[bisect.bisect_left(keys, ref.key)]

    async def delete_many(self, bucket: str, keys: list[str]) -> dict[str, str]:
        for key in keys:
            await self.delete(ObjectRef(bucket, key))
        return {}

    async def copy_within(self, source: ObjectInfo, new: NewObject) -> ObjectInfo:
        """Share the source's pieces; the copy counts in full against ``MEMORY_MAX_SIZE`` (so
        deleting either one never leaves the other over the bound)."""
        stored = self._get(source.ref)
        self.room.take(stored.info.size)
        info = replace(
            stored.info,
            ref=new.ref,
            file_name=new.file_name,
            content_type=new.content_type,
            metadata=dict(new.metadata),
            last_modified=datetime.now(UTC),
        )
        self._insert(_Stored(info, stored.pieces, stored.starts))
        return info

    async def list_page(
        self, bucket: str, prefix: str, *, delimiter: str, limit: int, token: str | None
    ) -> Listing:
        """S3's listing over the sorted keys: a folder one level down is listed once, as
        ``key/``, and skipped over whole."""
        if delimiter not in ("", "/"):
            raise InvalidArgument("The memory backend lists with delimiter '/' or none.")
        keys = self._keys.get(bucket, [])
        objects: list[ObjectInfo] = []
        folders: list[str] = []
        index = bisect.bisect_left(keys, prefix)
        if token:  # a folder's contents all sort before its name and U+10FFFF (app.text)
            after = f"{token}\U0010ffff" if delimiter and token.endswith(delimiter) else token
            index = max(index, bisect.bisect_right(keys, after))
        last: str | None = None
        while index < len(keys) and keys[index].startswith(prefix):
            key = keys[index]
            if len(objects) + len(folders) == limit:
                return Listing(objects, folders, last)
            slash = key.find("/", len(prefix)) if delimiter else -1
            if slash >= 0:
                folder = key[: slash + 1]
                folders.append(folder)
                last = folder
                index = bisect.bisect_left(keys, f"{folder}\U0010ffff", index)
                continue
            objects.append(self._objects[bucket][key].info)
            last = key
            index += 1
        return Listing(objects, folders, None)


def _span(stored: _Stored, start: int, end: int) -> ObjectStream:
    """A small span as bytes (served without a stream, like every backend's small reads), a
    larger one as views of the pieces."""
    if end - start <= INLINE_READ:
        return Loaded(b"".join(bytes(chunk) for chunk in _views(stored, start, end)))
    return MemoryStream(stored, start, end)


def _views(stored: _Stored, start: int, end: int) -> Iterator[memoryview]:
    index = bisect.bisect_right(stored.starts, start) - 1
    while start < end:
        piece = stored.pieces[index]
        offset = start - stored.starts[index]
        take = min(len(piece) - offset, end - start)
        yield memoryview(piece)[offset : offset + take]
        start += take
        index += 1


def _starts(pieces: Iterable[bytes]) -> tuple[int, ...]:
    starts, position = [], 0
    for piece in pieces:
        starts.append(position)
        position += len(piece)
    return tuple(starts)
