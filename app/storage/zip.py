"""Many files as one zip, streamed in constant memory with stream-zip.

Everything that can fail is settled before the first byte (``plan``): ids, permissions, existence
of every file (checked concurrently), limits and entry names. ``ZipStream`` then writes the
archive while the next entries' backend streams are already opening, and closes every stream it
opened however the response ends.

Entries are stored as they are (method STORE) when the backend knows the file's CRC-32 without
reading it (every file filegate stored itself); STORE needs the CRC before the data, so a file
whose CRC is unknown (put into a bucket by someone else) is written as deflate at level 0, which
keeps its bytes uncompressed in stored deflate blocks. ``compression="deflate"`` deflates every
entry. An archive of stored entries whose CRCs are all known (the normal case) is written by
stream-zip on the event loop: per MiB that is a CRC-32 with zlib-ng and at most one copy
(``_inline``). Any other archive runs stream-zip in a worker thread of its own (``zipwriter``),
so compression does not block the event loop. An archive
that could pass 4 GiB or 65,535 entries is written as zip64 throughout (known from the sizes
before the first byte); any other archive is a plain zip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import re
import stat
import unicodedata
import zlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from stream_zip import NO_COMPRESSION_32, NO_COMPRESSION_64, ZIP_AUTO, Method, stream_zip

from app.errors import FilegateError, FileNotFound, FileTooLarge, InvalidArgument, StorageError
from app.storage.base import Chunk, ObjectStream
from app.storage.ids import FileId
from app.storage.stored import StoredFile
from app.storage.zipwriter import END, Member, ZipWriter
from app.text import refuse

Compression = Literal["stored", "deflate"]
HEAD_CONCURRENCY = 16
PREFETCH = 2
"""Entries whose backend stream is opened ahead of the one being written."""
OUTPUT_CHUNK = 1024 * 1024
ENTRY_MODE = stat.S_IFREG | 0o644
log = logging.getLogger(__name__)
_DRIVE = re.compile(r"^[A-Za-z]:")
_ZIP32_LIMIT = 0xFFFFFFFF
_ZIP32_MAX_ENTRIES = 0xFFFF
_ENTRY_OVERHEAD = 256
"""More than a zip64 local header, extra fields and data descriptor add to an entry (plus its
name, counted separately): the bound used to tell whether an archive could pass 4 GiB."""

_TIMESTAMP_EXTRA = 9
"""stream-zip writes an extended-timestamp extra field (4 + 5 bytes) with every entry."""
_LOCAL = 30 + _TIMESTAMP_EXTRA
_CENTRAL = 46 + _TIMESTAMP_EXTRA
_END = 22
_LOCAL_64 = _LOCAL + 20  # the zip64 extra field: sizes
_CENTRAL_64 = _CENTRAL + 28  # the zip64 extra field: sizes and offset
_END_64 = _END + 56 + 20  # the zip64 end record and its locator

Describe = Callable[[FileId], Awaitable[StoredFile]]
Opener = Callable[[StoredFile], Awaitable[ObjectStream]]


MAX_NAME_BYTES = 65_535
"""The zip format's limit on an entry's name (a 16-bit length)."""


@dataclass(frozen=True, slots=True)
class ZipRequest:
    file_id: FileId
    file_name: str | None = None


@dataclass(frozen=True, slots=True)
class ZipEntry:
    name: str
    file: StoredFile


@dataclass(frozen=True, slots=True)
class ZipLimits:
    max_entries: int = 1000
    max_total_size: int = 0
    """Bytes; 0 means no limit."""


def safe_name(requested: str, fallback: str) -> str:
    """A relative entry name: no absolute path, drive letter, ``..``, backslash or control
    character; ``fallback`` if nothing is left."""
    name = _DRIVE.sub("", requested.replace("\\", "/"))
    segments = [
        "".join(c for c in segment if unicodedata.category(c) != "Cc").strip()
        for segment in name.split("/")
    ]
    kept = [s for s in segments if s not in ("", ".", "..")]
    return "/".join(kept) or fallback


class _UniqueNames:
    """``a.pdf``, ``a (1).pdf``, ``a (2).pdf``... compared without regard to case."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def claim(self, name: str) -> str:
        candidate, number = name, 0
        folder, leaf = posixpath.split(name)
        stem, ext = os.path.splitext(leaf)
        while candidate.casefold() in self._taken:
            number += 1
            candidate = posixpath.join(folder, f"{stem} ({number}){ext}")
        self._taken.add(candidate.casefold())
        return candidate


def check_count(count: int, limits: ZipLimits) -> None:
    if not count:
        raise InvalidArgument("The list of files is empty.")
    if count > limits.max_entries:
        raise FileTooLarge(f"A zip holds at most {limits.max_entries} files.")


async def plan(
    requests: Sequence[ZipRequest], describe: Describe, limits: ZipLimits
) -> list[ZipEntry]:
    """Check every requested file before anything is sent; name the entries.

    The caller has already authorized and routed every id; ``describe`` heads one file.
    """
    check_count(len(requests), limits)
    slots = asyncio.Semaphore(HEAD_CONCURRENCY)

    async def head(request: ZipRequest) -> StoredFile | None:
        async with slots:
            try:
                return await describe(request.file_id)
            except FileNotFound:
                return None

    found = await asyncio.gather(*(head(request) for request in requests))
    missing = [str(r.file_id) for r, f in zip(requests, found, strict=True) if f is None]
    if missing:
        raise FileNotFound(f"{len(missing)} of the files do not exist.", file_ids=missing)
    stored = [f for f in found if f is not None]
    total = sum(f.info.size for f in stored)
    if 0 < limits.max_total_size < total:
        raise FileTooLarge(f"The files add up to more than {limits.max_total_size} bytes.")
    names = _UniqueNames()
    entries = []
    for request, item in zip(requests, stored, strict=True):
        fallback = item.file_id.ref.key.rsplit("/", 1)[-1]
        wanted = request.file_name or item.name
        name = names.claim(safe_name(wanted, fallback))
        if len(name.encode()) > MAX_NAME_BYTES:  # a long name made longer by " (1)"
            raise refuse("zip_entry_name", f"is longer than {MAX_NAME_BYTES} bytes")
        entries.append(ZipEntry(name, item))
    return entries


class ZipStream:
    """The archive's bytes; ``aclose()`` releases every backend stream it opened."""

    def __init__(
        self,
        open: Opener,
        entries: list[ZipEntry],
        compression: Compression,
        *,
        zip64: bool | None = None,
    ) -> None:
        """``zip64``: None decides from the sizes (the normal case); True or False forces it."""
        self._open_stream = open
        self._entries = entries
        self.count = len(entries)
        self._compression = compression
        names = sum(len(e.name.encode()) for e in entries)
        total = sum(e.file.info.size for e in entries) + names
        self._zip64 = (
            zip64
            if zip64 is not None
            else (
                len(entries) > _ZIP32_MAX_ENTRIES
                or total + len(entries) * _ENTRY_OVERHEAD >= _ZIP32_LIMIT
            )
        )
        self._opening: deque[asyncio.Task[ObjectStream]] = deque()
        self._open_streams: list[ObjectStream] = []
        self._closed = False
        self._writer: ZipWriter | None = None
        self._pump: asyncio.Task[None] | None = None
        self._reading: AsyncGenerator[Chunk | object] | None = None

    @property
    def length(self) -> int | None:
        """The archive's exact size when every entry is stored as it is (sizes, names and CRCs
        known before the first byte), else ``None``. It follows stream-zip's layout of a stored
        entry: a local header, the name, the extended-timestamp extra field (and the zip64 one),
        the bytes; then a central directory record with the same fields; then the end records.
        ``tests/test_zip.py`` checks it against the archives stream-zip really writes."""
        if self._compression != "stored" or any(e.file.info.crc32 is None for e in self._entries):
            return None
        local, central, end = (
            (_LOCAL_64, _CENTRAL_64, _END_64) if self._zip64 else (_LOCAL, _CENTRAL, _END)
        )
        names = sum(len(e.name.encode()) for e in self._entries)
        data = sum(e.file.info.size for e in self._entries)
        return data + 2 * names + len(self._entries) * (local + central) + end

    async def __aiter__(self) -> AsyncIterator[bytes]:
        members = [
            (e.name, e.file.info.last_modified, ENTRY_MODE, self._method(e)) for e in self._entries
        ]
        if self.length is not None:  # every entry stored, every CRC known: no thread needed
            async for chunk in self._inline(members):
                yield chunk
            return
        self._writer = ZipWriter(
            members, chunk_size=OUTPUT_CHUNK, get_compressobj=self._compressobj
        )
        self._pump = asyncio.create_task(self._feed(self._writer))
        async for chunk in self._writer.chunks():
            yield chunk

    async def _inline(self, members: list[Member]) -> AsyncIterator[bytes]:
        """stream-zip on the event loop, for an archive of stored entries whose CRCs are known
        (docs/performance.md, "Zips"): its work per MiB is then a CRC-32 and at most one copy,
        less than handing the chunk to a thread and back.

        stream-zip pulls its input synchronously, so the entries' bytes are read ahead into
        ``pending`` first: each output chunk needs at most ``OUTPUT_CHUNK`` bytes of input plus
        the rest of one input chunk, and that much is always waiting (or the whole remainder of
        the archive) before stream-zip is asked for the next one. Were it ever to ask for more,
        the archive fails rather than being cut short silently."""
        pending: deque[Chunk | object] = deque()
        waiting = largest = 0

        def entry() -> Iterator[bytes]:
            nonlocal waiting
            while True:
                if not pending:
                    raise StorageError(
                        "The zip's input ran dry (a defect: see app/storage/zip.py)."
                    )
                item = pending.popleft()
                if item is END:
                    return
                assert isinstance(item, bytes | memoryview)
                waiting -= len(item)
                yield item  # type: ignore[misc]  # a memoryview: stream-zip measures, checks, joins

        def files() -> Iterator[tuple[str, datetime, int, Method, Iterator[bytes]]]:
            for name, modified, mode, method in members:
                yield name, modified, mode, method, entry()

        written = iter(
            stream_zip(files(), chunk_size=OUTPUT_CHUNK, get_compressobj=self._compressobj)
        )
        items = self._items()
        self._reading = items
        ended = False
        while True:
            while not ended and waiting < OUTPUT_CHUNK + largest:
                item = await anext(items, None)
                if item is None:
                    ended = True
                    break
                pending.append(item)
                if item is not END:
                    assert isinstance(item, bytes | memoryview)
                    waiting += len(item)
                    largest = max(largest, len(item))
            chunk = next(written, None)
            if chunk is None:
                return
            yield chunk

    async def _items(self) -> AsyncGenerator[Chunk | object]:
        """Every entry's bytes in order, ``END`` after each; the next entries' streams are
        already opening while one is read."""
        upcoming = iter(self._entries)
        for entry in self._entries[:PREFETCH]:
            self._opening.append(self._open(entry))
            next(upcoming)
        for _ in self._entries:
            stream = await self._opening.popleft()
            following = next(upcoming, None)
            if following is not None:
                self._opening.append(self._open(following))
            async for chunk in stream:
                yield chunk
            yield END
            self._open_streams.remove(stream)
            await stream.aclose()

    @staticmethod
    def _compressobj() -> Any:
        return zlib.compressobj(level=6, wbits=-zlib.MAX_WBITS)

    def _method(self, entry: ZipEntry) -> Method:
        info = entry.file.info
        if self._compression == "deflate":
            return ZIP_AUTO(info.size, level=6)
        if info.crc32 is None:
            return ZIP_AUTO(info.size, level=0)
        stored = NO_COMPRESSION_64 if self._zip64 else NO_COMPRESSION_32
        return stored(info.size, info.crc32)

    def _open(self, entry: ZipEntry) -> asyncio.Task[ObjectStream]:
        return asyncio.ensure_future(self._open_registered(entry))

    async def _open_registered(self, entry: ZipEntry) -> ObjectStream:
        """Open an entry's stream where ``aclose`` will find it; once the zip is closed,
        whatever still opens is closed at once."""
        stream = await self._open_stream(entry.file)
        if self._closed:
            await stream.aclose()
            raise StorageError("The zip was abandoned.")
        self._open_streams.append(stream)
        return stream

    async def _feed(self, writer: ZipWriter) -> None:
        """Every entry's bytes into the writer's thread. A failure is handed to the writer,
        which fails the archive with it."""
        items = self._items()
        self._reading = items
        try:
            async for item in items:
                await writer.put(item)
        except (FilegateError, OSError) as exc:
            await writer.put(exc)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.abort()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, FilegateError, OSError):
                await self._pump
        if self._reading is not None:
            with contextlib.suppress(RuntimeError, FilegateError, OSError):  # RuntimeError: running
                await self._reading.aclose()
        opening, self._opening = list(self._opening), deque()
        for task in opening:
            task.cancel()
        for task in opening:
            with contextlib.suppress(asyncio.CancelledError, StorageError):
                await task
        for stream in list(self._open_streams):
            try:
                await stream.aclose()
            except (StorageError, OSError) as exc:  # close the others all the same
                log.warning("closing a zip entry's stream failed: %s", exc)
