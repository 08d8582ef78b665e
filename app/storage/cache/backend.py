"""A backend in front of S3 or FastDFS that keeps small files on local disk (``CACHE_DIR``).

``cached(inner, store)`` answers ``head``, ``fetch`` and ``open`` from a complete entry when
there is one, and otherwise reads the whole file from ``inner`` once, however many requests miss
it at the same time (single flight), keeps it and serves it. Every other capability of ``inner``
(listing, batch delete, server copy, presigned links, stored checksums) is passed through, and
every delete through this process evicts first. The service has checked the caller and the route
before any of this runs (docs/architecture.md, "The read-through cache").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
from collections.abc import AsyncIterable
from typing import IO, Any

import anyio
import anyio.to_thread

from app.logs import request_marks
from app.storage.base import (
    Backend,
    BatchDeleter,
    ByteRange,
    ChecksumReader,
    Chunk,
    Fetcher,
    Lister,
    Loaded,
    NewObject,
    ObjectInfo,
    ObjectRef,
    ObjectStream,
    Presigner,
    ServerCopier,
)
from app.storage.cache.store import CacheStore, Entry
from app.storage.crc import crc32
from app.storage.local import LocalStream

log = logging.getLogger(__name__)
SMALL = 256 * 1024
"""Files up to this size are filled in memory and written in one thread hop; entries (or ranges)
up to it are read in the thread hop that opens them."""
WRITE_BATCH = 1024 * 1024
READ_IN_LOOP = 64 * 1024
"""Entries (or ranges) up to this size are read on the event loop: an entry was written or read
moments ago, so its pages are in memory and ``pread`` costs microseconds, a tenth of a hop to a
worker thread and back (the hot path of a small file; docs/performance.md, "The cache")."""
_MD5_ETAG = re.compile(r'"([0-9a-f]{32})"')


class _Flight:
    """A fill under way, and how many requests wait for it."""

    def __init__(self) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters = 0


class Unverifiable(Exception):
    """What the backend sent does not match what it described: never kept."""


class CachedBackend:
    """The reading half: ``head``, ``fetch``, ``open`` through the cache; ``put`` and ``check``
    go straight through; ``delete`` evicts first."""

    def __init__(self, inner: Backend, store: CacheStore) -> None:
        self.inner = inner
        self.store = store
        self.name = inner.name
        self._flights: dict[str, _Flight] = {}

    def _key(self, ref: ObjectRef) -> str:
        return self.store.key(self.name, ref.bucket, ref.key)

    async def check(self) -> None:
        await self.inner.check()

    async def put(self, obj: NewObject, body: AsyncIterable[Chunk]) -> ObjectInfo:
        return await self.inner.put(obj, body)

    async def delete(self, ref: ObjectRef) -> None:
        self.store.evict(self._key(ref))
        await self.inner.delete(ref)

    async def head(self, ref: ObjectRef) -> ObjectInfo:
        entry = self.store.lookup(self._key(ref))
        if entry is not None:
            self.store.events.hit(self.name, 0)
            mark_hit()
            return entry.info
        return await self.inner.head(ref)

    async def fetch(self, ref: ObjectRef) -> tuple[ObjectInfo, ObjectStream]:
        return await self._read(ref, None)

    async def open(self, ref: ObjectRef, byte_range: ByteRange | None = None) -> ObjectStream:
        _, stream = await self._read(ref, byte_range)
        return stream

    async def _read(
        self, ref: ObjectRef, byte_range: ByteRange | None
    ) -> tuple[ObjectInfo, ObjectStream]:
        """From the entry; else, after a fill of the same file under way; else fill it here
        (the other readers of the file wait for this fill: single flight)."""
        key = self._key(ref)
        entry = self.store.lookup(key)
        if entry is None and (flight := self._flights.get(key)) is not None:
            flight.waiters += 1
            await asyncio.shield(flight.done)
            entry = self.store.lookup(key)
            if entry is None:  # not kept (too large, or a failure): read it as it is
                self.store.events.miss(self.name)
                return await self._uncached(ref, byte_range)
        if entry is not None and (stream := await self._serve(entry, byte_range)) is not None:
            return entry.info, stream
        self.store.events.miss(self.name)
        flight = _Flight()
        self._flights[key] = flight
        try:
            return await self._fill(key, ref, byte_range, flight)
        finally:
            del self._flights[key]
            flight.done.set_result(None)

    async def _uncached(
        self, ref: ObjectRef, byte_range: ByteRange | None
    ) -> tuple[ObjectInfo, ObjectStream]:
        if byte_range is None and isinstance(self.inner, Fetcher):
            return await self.inner.fetch(ref)
        info = await self.inner.head(ref)
        return info, await self.inner.open(ref, byte_range)

    async def _serve(
        self, entry: Entry, byte_range: ByteRange | None, *, hit: bool = True
    ) -> ObjectStream | None:
        """The entry's bytes (or range); None if its file went away meanwhile (evicted)."""
        length = entry.info.size if byte_range is None else byte_range.length
        try:
            if length <= READ_IN_LOOP:
                stream: ObjectStream = _read_small(entry.path, entry.info.size, byte_range)
            else:
                stream = await anyio.to_thread.run_sync(
                    _open, entry.path, entry.info.size, byte_range
                )
        except OSError:
            return None
        if not hit:  # just filled by this request
            return stream
        served = entry.info.size if byte_range is None else byte_range.length
        self.store.events.hit(self.name, min(served, entry.info.size))
        mark_hit()
        return stream

    async def _fill(
        self, key: str, ref: ObjectRef, byte_range: ByteRange | None, flight: _Flight
    ) -> tuple[ObjectInfo, ObjectStream]:
        """Read the whole file from ``inner`` and keep it, then serve ``byte_range`` of it. A
        file asked for the first time by one request alone, a file too large, or one a failing
        disk could not keep, is served uncached (``inner`` is asked again if part of its stream
        was spent on the disk)."""
        first = not self.store.seen(key)
        if first and byte_range is not None:  # not kept now: ask for the range alone
            return await self._uncached(ref, byte_range)
        if isinstance(self.inner, Fetcher):
            info, stream = await self.inner.fetch(ref)
            if not self._admits(info, first, flight):
                return info, await _ranged(stream, byte_range, self.inner, ref)
        else:
            info = await self.inner.head(ref)
            if not self._admits(info, first, flight):
                return info, await self.inner.open(ref, byte_range)
            stream = await self.inner.open(ref)
        try:
            kept = await self._keep(key, info, stream)
        except Unverifiable as exc:
            log.warning("%s sent %s/%s %s: not cached", self.name, ref.bucket, ref.key, exc)
            kept = None
        if isinstance(kept, bytes):  # small: served from the bytes just read
            data = kept if byte_range is None else kept[byte_range.start : byte_range.end + 1]
            return info, Loaded(data)
        if kept is not None and (served := await self._serve(kept, byte_range, hit=False)):
            return info, served
        return info, await self.inner.open(ref, byte_range)

    async def _keep(self, key: str, info: ObjectInfo, stream: ObjectStream) -> Entry | bytes | None:
        """Read ``stream`` into a new entry. Small files: their bytes (kept as an entry too when
        the disk allows). Larger: the entry, or None when the disk failed (the stream is spent)."""
        check = _Check(info)
        temp = self.store.temp_path()
        try:
            if info.size <= SMALL:
                data = b"".join([bytes(chunk) async for chunk in _checked(stream, check)])
                check.finish()
                try:
                    await anyio.to_thread.run_sync(_write_whole, temp, data)
                except OSError as exc:
                    self.store.warn(exc)
                else:
                    self._admit(key, info, temp)
                return data
            file: IO[bytes] | None = None
            try:
                # opened here, not in a worker thread: a thread's result is lost when the task
                # is cancelled meanwhile, and the file with it
                file = open(temp, "xb", buffering=0)  # noqa: SIM115, ASYNC230 - a create
                batch: list[Chunk] = []
                size = 0
                async for chunk in _checked(stream, check):
                    batch.append(chunk)
                    size += len(chunk)
                    if size >= WRITE_BATCH:
                        await anyio.to_thread.run_sync(_write, file, batch)
                        batch, size = [], 0
                check.finish()
                await anyio.to_thread.run_sync(_write, file, batch)
            except OSError as exc:
                self.store.warn(exc)
                await anyio.to_thread.run_sync(_remove, temp)
                return None
            finally:
                if file is not None:
                    file.close()
            return self._admit(key, info, temp)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove, temp)
            raise
        finally:
            await stream.aclose()

    def _admits(self, info: ObjectInfo, first: bool, flight: _Flight) -> bool:
        """Whether to keep a file: not too large, and asked for before (since the store last
        forgot what it had seen), or by other requests now. A file asked for once is not worth
        a create, a write and the eviction of one that is asked for again."""
        return info.size <= self.store.max_file_size and (not first or flight.waiters > 0)

    def _admit(self, key: str, info: ObjectInfo, temp: str) -> Entry | None:
        entry = self.store.admit(key, info, temp)
        if entry is not None:
            self.store.events.filled(self.name, info.size)
        return entry


class _Check:
    """The size, and the CRC-32 or MD5 the backend described, of the bytes as they come."""

    def __init__(self, info: ObjectInfo) -> None:
        self.info = info
        self.size = 0
        self.crc = 0 if info.crc32 is not None else None
        match = _MD5_ETAG.fullmatch(info.etag) if self.crc is None else None
        self.md5 = hashlib.md5(usedforsecurity=False) if match else None
        self.md5_expected = match.group(1) if match else None

    def add(self, chunk: Chunk) -> None:
        self.size += len(chunk)
        if self.size > self.info.size:
            raise Unverifiable("longer than its size")
        if self.crc is not None:
            self.crc = crc32(chunk, self.crc)
        elif self.md5 is not None:
            self.md5.update(chunk)

    def finish(self) -> None:
        if self.size != self.info.size:
            raise Unverifiable("shorter than its size")
        if self.crc is not None and self.crc != self.info.crc32:
            raise Unverifiable("CRC-32 differs")
        if self.md5 is not None and self.md5.hexdigest() != self.md5_expected:
            raise Unverifiable("MD5 differs from the ETag")


async def _checked(stream: ObjectStream, check: _Check) -> AsyncIterable[Chunk]:
    async for chunk in stream:
        check.add(chunk)
        yield chunk


async def _ranged(
    stream: ObjectStream, byte_range: ByteRange | None, inner: Backend, ref: ObjectRef
) -> ObjectStream:
    """``stream`` (the whole file) when no range is asked; else the range, from ``inner``."""
    if byte_range is None:
        return stream
    await stream.aclose()
    return await inner.open(ref, byte_range)


def _open(path: str, size: int, byte_range: ByteRange | None) -> ObjectStream:
    file = open(path, "rb", buffering=0)  # noqa: SIM115 - owned by the stream
    try:
        start, length = 0, size
        if byte_range is not None:
            start, length = byte_range.start, min(byte_range.length, size - byte_range.start)
            file.seek(start)
        if length <= SMALL:
            data = file.read(length)
            file.close()
            return Loaded(data)
        return LocalStream(file, length)
    except BaseException:
        file.close()
        raise


def _read_small(path: str, size: int, byte_range: ByteRange | None) -> Loaded:
    start, length = 0, size
    if byte_range is not None:
        start, length = byte_range.start, min(byte_range.length, size - byte_range.start)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, length, start)
    finally:
        os.close(fd)
    if len(data) != length:
        raise OSError(f"the entry {path} is shorter than its record")
    return Loaded(data)


def _write_whole(temp: str, data: bytes) -> None:
    with open(temp, "xb") as file:
        file.write(data)


def _write(file: IO[bytes], batch: list[Chunk]) -> None:
    for chunk in batch:
        file.write(chunk)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):  # gone already, or its directory is
        os.unlink(path)


def mark_hit() -> None:
    """Tell the request's log line that it was served from the cache."""
    marks = request_marks.get()
    if marks is not None:
        marks.add("cache-hit")


class _Lists:
    inner: Any

    async def list_page(self, *args: Any, **kwargs: Any) -> Any:
        return await self.inner.list_page(*args, **kwargs)


class _DeletesMany:
    inner: Any
    store: CacheStore
    name: str

    async def delete_many(self, bucket: str, keys: list[str]) -> dict[str, str]:
        for key in keys:
            self.store.evict(self.store.key(self.name, bucket, key))
        result: dict[str, str] = await self.inner.delete_many(bucket, keys)
        return result


class _Copies:
    inner: Any

    async def copy_within(self, source: ObjectInfo, new: NewObject) -> ObjectInfo:
        result: ObjectInfo = await self.inner.copy_within(source, new)
        return result


class _Presigns:
    inner: Any

    async def presign(self, *args: Any, **kwargs: Any) -> str:
        result: str = await self.inner.presign(*args, **kwargs)
        return result


class _Checksums:
    inner: Any

    async def stored_crc32(self, ref: ObjectRef, etag: str | None = None) -> int | None:
        result: int | None = await self.inner.stored_crc32(ref, etag)
        return result


_CAPABILITIES: tuple[tuple[type, type], ...] = (
    (Lister, _Lists),
    (BatchDeleter, _DeletesMany),
    (ServerCopier, _Copies),
    (Presigner, _Presigns),
    (ChecksumReader, _Checksums),
)


def cached(inner: Backend, store: CacheStore) -> CachedBackend:
    """``inner`` behind the cache, with exactly ``inner``'s capabilities (each protocol of
    ``app.storage.base`` that it implements, the cache implements by passing it through)."""
    mixins = tuple(mixin for protocol, mixin in _CAPABILITIES if isinstance(inner, protocol))
    kind = type(f"Cached{type(inner).__name__}", (CachedBackend, *mixins), {})
    backend: CachedBackend = kind(inner, store)
    return backend
