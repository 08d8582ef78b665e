"""The FastDFS backend: aiofdfs's protocol code over connections of our own (``connection``).

Every operation runs under an overall deadline, and errors are translated by the stage (tracker
or storage) that raised them (``errors``). Downloads send their request and read the reply
themselves (``download``; docs/fastdfs.md, "Downloads").

FastDFS needs a file's size before its content. A body of known length (raw ``PUT`` with
``Content-Length``) streams straight through; any other body is first spooled to a temporary file
on disk (never memory), which is removed afterwards whatever happens. A spooled upload costs one
extra disk write, but unlike an appender file nothing half-written is ever visible in FastDFS and
the stored file is an ordinary one (CRC32 in its name, usable by every FastDFS client).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import IO, Any, cast

import anyio
import anyio.to_thread
from aiofdfs.async_connection import AsyncConnectionPool
from aiofdfs.async_fdfs_protol import Storage_server, Tracker_header
from aiofdfs.async_tracker_client import Async_Tracker_Client

from app.errors import BackendUnavailable, FileNotFound, InvalidArgument
from app.settings import Settings
from app.storage.base import ByteRange, Chunk, NewObject, ObjectInfo, ObjectRef
from app.storage.budget import Budget
from app.storage.crc import crc32
from app.storage.diskio import write_in_batches
from app.storage.fastdfs.appender import Appender
from app.storage.fastdfs.connection import Pool, StorageClient
from app.storage.fastdfs.download import Download
from app.storage.fastdfs.errors import AIOFDFS_ERRORS, Stage, translate
from app.storage.fastdfs.records import (
    INTERNAL_KEYS,
    NAME_KEY,
    TYPE_KEY,
    fdfs_ext,
    records_for,
    unfinished_upload,
)

ACTIVE_TEST = 111
SPOOL_CHUNK = 1024 * 1024
"""Read size when a spooled body is sent on to the storage."""


class _BodyReader:
    """The ``read(n)`` that aiofdfs's streaming upload pulls from, fed by an async iterator and
    held to the size announced to the storage."""

    def __init__(self, chunks: AsyncIterator[Chunk], size: int) -> None:
        self._chunks = chunks
        self._left = size
        self.crc32 = 0
        """Of what was sent: the storage puts the same CRC32 in the file name and file info."""

    async def read(self, n: int = -1) -> Chunk:
        chunk = await anext(self._chunks, b"")
        if len(chunk) > self._left:
            raise InvalidArgument("The body is longer than its declared length.")
        if not chunk and self._left:
            raise InvalidArgument("The body is shorter than its declared length.")
        self._left -= len(chunk)
        self.crc32 = crc32(chunk, self.crc32)
        return chunk


async def _file_chunks(file: IO[bytes]) -> AsyncIterator[bytes]:
    await anyio.to_thread.run_sync(file.seek, 0)
    while chunk := await anyio.to_thread.run_sync(file.read, SPOOL_CHUNK):
        yield chunk


class FastDFSStream:
    """A download in progress (``download.Download``); its connection lives until the stream
    is closed."""

    def __init__(self, download: Download) -> None:
        self._download = download
        self._pieces = aiter(download)
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while True:
                try:
                    chunk = await anext(self._pieces)
                except StopAsyncIteration:
                    return
                except AIOFDFS_ERRORS as exc:
                    raise translate(exc, "storage") from exc
                yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Drop the storage connection first: a read in flight in another task then fails at
        once instead of going on."""
        if self._closed:
            return
        self._closed = True
        self._download.close()
        with contextlib.suppress(RuntimeError):  # "already running": it stops on the socket
            await self._pieces.aclose()


async def open_fastdfs_backend(
    settings: Settings, stack: AsyncExitStack, budget: Budget
) -> FastDFSBackend:
    """The FastDFS backend, its connections closed when ``stack`` closes."""
    backend = FastDFSBackend(
        settings.fastdfs_tracker_servers,
        settings.fastdfs_connect_timeout,
        settings.fastdfs_network_timeout,
        budget,
        settings.backend_timeout,
        tuple(settings.fastdfs_groups),
    )
    stack.push_async_callback(backend.close)
    return backend


class FastDFSBackend:
    name = "fastdfs"

    def __init__(
        self,
        trackers: list[str],
        connect_timeout: float,
        network_timeout: float,
        budget: Budget,
        timeout: float = 10,
        groups: tuple[str, ...] = (),
    ) -> None:
        self._groups = groups
        """Must run inside the event loop that will use it (aiofdfs binds to the loop)."""
        self._budget = budget
        self._pool = Pool(trackers, connect_timeout, network_timeout, keep=16)
        self._tracker = Async_Tracker_Client(cast(AsyncConnectionPool, self._pool), -1)
        self.deadline = timeout
        """``BACKEND_TIMEOUT``: seconds for one whole control operation (tracker query plus
        storage exchange); body streams are bounded per read by ``network_timeout``."""

    @property
    def budget(self) -> Budget:
        """``UPLOAD_MEMORY``: resumable uploads take their piece buffers from it too."""
        return self._budget

    async def close(self) -> None:
        await self._pool.close_all()

    @asynccontextmanager
    async def _within_deadline(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.deadline):
                yield
        except TimeoutError as exc:
            raise BackendUnavailable(
                "FastDFS did not answer in time; try again later.", backend="fastdfs"
            ) from exc

    async def _step[T](self, stage: Stage, operation: Awaitable[T]) -> T:
        try:
            return await operation
        except AIOFDFS_ERRORS as exc:
            raise translate(exc, stage) from exc

    def _storage(self, server: Storage_server) -> StorageClient:
        return StorageClient(server, self._pool)

    async def _locate(self, ref: ObjectRef, *, update: bool) -> Storage_server:
        query = (
            self._tracker.tracker_query_storage_update
            if update
            else (self._tracker.tracker_query_storage_fetch)
        )
        server: Storage_server = await self._step("tracker", query(ref.bucket, ref.key))
        return server

    async def check(self) -> None:
        """What serving needs: a tracker answers (ACTIVE_TEST), it names a storage server for
        each group of ``FASTDFS_GROUPS`` (or, without that setting, for a new upload), and that
        storage answers ACTIVE_TEST. A tracker names a group's storage only while it is alive
        (errno 2 otherwise); the storage's own answer covers the seconds before the tracker
        notices it died."""
        async with self._within_deadline():
            await self._step("tracker", self._active_test(self._pool))
            if self._groups:
                for group in self._groups:
                    query = self._tracker.tracker_query_storage_stor_with_group(group)
                    await self._check_storage(await self._step("tracker", query))
            else:
                query = self._tracker.tracker_query_storage_stor_without_group()
                await self._check_storage(await self._step("tracker", query))

    async def _check_storage(self, server: Storage_server) -> None:
        storage = self._storage(server)
        await self._step("storage", self._active_test(storage.connections))

    async def _active_test(self, pool: Pool) -> None:
        async with await pool.get_connection() as connection:
            header = Tracker_header()
            header.cmd = ACTIVE_TEST
            await header.send_header(connection)
            await header.recv_header(connection)
            if header.status != 0:
                raise BackendUnavailable(
                    f"FastDFS answered ACTIVE_TEST with errno {header.status}.", backend="fastdfs"
                )

    async def put(self, obj: NewObject, body: AsyncIterable[Chunk]) -> ObjectInfo:
        records = records_for(obj)
        if obj.size is not None:
            return await self._upload(obj, records, aiter(body), obj.size)
        with tempfile.TemporaryFile(prefix="filegate-spool-") as spool:
            size = await write_in_batches(body, spool, self._budget)
            await anyio.to_thread.run_sync(spool.flush)
            return await self._upload(obj, records, _file_chunks(spool), size)

    async def _upload(
        self, obj: NewObject, records: dict[str, str], chunks: AsyncIterator[Chunk], size: int
    ) -> ObjectInfo:
        async with self._within_deadline():
            server = await self._step(
                "tracker", self._tracker.tracker_query_storage_stor_without_group()
            )
        reader = _BodyReader(chunks, size)
        async with self._storage(server) as storage:
            answer = await self._step(
                "storage",
                storage.storage_upload_from_upload_file(
                    server,
                    reader,
                    size,
                    records,
                    file_ext_name=fdfs_ext(obj.file_name),
                ),
            )
        group, _, remote = str(answer["file_id"]).partition("/")
        return ObjectInfo(
            ref=ObjectRef(group, remote),
            size=size,
            etag=f'"{reader.crc32:08x}"',
            last_modified=datetime.now(UTC),
            file_name=obj.file_name,
            content_type=obj.content_type,
            metadata=obj.metadata,
            crc32=reader.crc32,
        )

    async def head(self, ref: ObjectRef) -> ObjectInfo:
        async with self._within_deadline():
            server = await self._locate(ref, update=True)
            async with self._storage(server) as storage:
                found: dict[str, Any] = await self._step(
                    "storage", storage.storage_query_file_info(server, ref.key)
                )
            async with self._storage(server) as storage:
                records: dict[str, str] = await self._step(
                    "storage", storage.storage_get_metadata(self._tracker, server, ref.key)
                )
        if unfinished_upload(records):
            raise FileNotFound("No such file (a resumable upload that is not complete).")
        crc = int(found["crc32"]) & 0xFFFFFFFF
        return ObjectInfo(
            ref=ref,
            size=int(found["file_size"]),
            etag=f'"{crc:08x}"',
            last_modified=datetime.fromtimestamp(int(found["create_timestamp"]), tz=UTC),
            file_name=records.get(NAME_KEY),
            content_type=records.get(TYPE_KEY),
            metadata={k: v for k, v in records.items() if not k.startswith(INTERNAL_KEYS)},
            crc32=crc,
        )

    async def open(self, ref: ObjectRef, byte_range: ByteRange | None = None) -> FastDFSStream:
        """The storage server's answer (the file is there, or ``FileNotFound``) comes before
        any response byte is sent; its bytes are read by ``download`` (docs/fastdfs.md,
        "Downloads")."""
        async with self._within_deadline():
            server = await self._locate(ref, update=False)
            offset, count = (byte_range.start, byte_range.length) if byte_range else (0, 0)
            started = await self._step(
                "storage",
                Download.start(
                    server,
                    offset,
                    count,
                    ref.key,
                    connect_timeout=self._pool.connect_timeout,
                    network_timeout=self._pool.network_timeout,
                ),
            )
        return FastDFSStream(started)

    async def delete(self, ref: ObjectRef) -> None:
        async with self._within_deadline():
            server = await self._locate(ref, update=True)
            async with self._storage(server) as storage:
                try:
                    await self._step("storage", storage.storage_delete_file(server, ref.key))
                except FileNotFound:
                    return

    async def create_appender(self, obj: NewObject, records: dict[str, str]) -> Appender:
        """An empty appender file with ``records`` as its metadata (docs/tus.md, "FastDFS")."""
        async with self._within_deadline():
            server = await self._step(
                "tracker", self._tracker.tracker_query_storage_stor_without_group()
            )
            async with self._storage(server) as storage:
                answer = await self._step(
                    "storage",
                    storage.storage_upload_appender_by_buffer(
                        None, server, b"", meta_dict=records, file_ext_name=fdfs_ext(obj.file_name)
                    ),
                )
        group, _, remote = str(answer["file_id"]).partition("/")
        return Appender(self, ObjectRef(group, remote), server)

    async def appender(self, ref: ObjectRef) -> Appender:
        """The appender file ``ref``, on the storage server the tracker names for changes."""
        async with self._within_deadline():
            return Appender(self, ref, await self._locate(ref, update=True))
