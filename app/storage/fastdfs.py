"""The FastDFS backend, over aiofdfs 0.1.30 with its known defects contained (FASTDFS.md, part two).

aiofdfs's high-level client cannot be used as it is: an EOF in the middle of a reply spins the
event loop forever (bug 6), a pooled tracker connection is handed back after a timeout or a
cancellation and then answers the next caller with the previous reply (bug 7), fail-over order is
random, range arguments are ignored (bugs 1-2) and errno 2 means "file missing" as well as "no
storage alive" (bug 9). So this module uses aiofdfs's protocol code (``Async_Tracker_Client``,
``Async_Storage_Client``) over connections of its own that raise on EOF, try the trackers in the
configured order, and are pooled again only after a clean exchange; every operation runs under an
overall deadline, and errors are translated by the stage (tracker or storage) that raised them.

FastDFS needs a file's size before its content. A body of known length (raw ``PUT`` with
``Content-Length``) streams straight through; any other body is first spooled to a temporary file
on disk (never memory), which is removed afterwards whatever happens. A spooled upload costs one
extra disk write, but unlike an appender file nothing half-written is ever visible in FastDFS and
the stored file is an ordinary one (CRC32 in its name, usable by every FastDFS client).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
import tempfile
import zlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import IO, Any, Literal, cast

import anyio
import anyio.to_thread
from aiofdfs.async_connection import AsyncConnection, AsyncConnectionError, AsyncConnectionPool
from aiofdfs.async_fdfs_protol import Storage_server, Tracker_header
from aiofdfs.async_storage_client import Async_Storage_Client
from aiofdfs.async_tracker_client import Async_Tracker_Client
from aiofdfs.exceptions import DataError, FDFSError

from app.storage.base import ByteRange, NewObject, ObjectInfo, ObjectRef
from app.storage.diskio import write_in_batches
from app.storage.errors import (
    BackendUnavailable,
    FileNotFound,
    InvalidArgument,
    StorageError,
)
from app.storage.validation import extension

ACTIVE_TEST = 111
NAME_KEY = "OriginFileName"
"""aiofdfs's own key for the original name, so files uploaded by earlier clients show theirs."""
TYPE_KEY = "ContentType"
_INTERNAL_KEYS = ("Origin", TYPE_KEY)
MAX_META_NAME = 64
MAX_META_VALUE = 256
SPOOL_CHUNK = 1024 * 1024
"""Read size when a spooled body is sent on to the storage."""
_ERRNO = re.compile(r"Error:\s*(\d+)")
_FDFS_EXT = re.compile(r"[A-Za-z0-9_-]{1,6}")
AIOFDFS_ERRORS = (FDFSError, AsyncConnectionError, OSError, struct.error, TimeoutError, EOFError)
"""Everything aiofdfs raises: its own errors, a connection error type outside that hierarchy,
builtin socket errors, and struct.error from a short header."""

Stage = Literal["tracker", "storage"]


class _Connection(AsyncConnection):
    """An aiofdfs connection that raises on EOF, fails over in order and is never reused after
    a failed exchange."""

    def __init__(self, hosts: list[str], pool: _Pool) -> None:
        super().__init__(
            host_tuple=hosts,
            connect_timeout=pool.connect_timeout,
            network_timeout=pool.network_timeout,
            pool=pool,
        )
        self._hosts = hosts
        self._owner = pool

    async def connect(self) -> None:
        failure: Exception | None = None
        for host in self._hosts:  # aiofdfs shuffles; the configured order is the fail-over order
            self.host_tuple = [host]
            try:
                await super().connect()
                return
            except AsyncConnectionError as exc:
                failure = exc
        raise AsyncConnectionError(f"no FastDFS server reachable: {failure}")

    async def receive(self, size: int) -> bytes:
        data: bytes = await super().receive(size)
        if size > 0 and not data:
            await self.disconnect()
            raise AsyncConnectionError("connection closed by the FastDFS server mid-reply")
        return data

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        # After a failure a reply may still be in flight: this connection is out of step for good.
        await self._owner.give_back(self, reusable=exc_type is None)


class _Pool:
    """The few methods of aiofdfs's pool its clients call; reuses only clean connections, and
    ``close_all`` also drops the ones in use (a stream closed mid-read stops there)."""

    def __init__(
        self, hosts: list[str], connect_timeout: float, network_timeout: float, keep: int
    ) -> None:
        self.hosts = hosts
        self.connect_timeout = connect_timeout
        self.network_timeout = network_timeout
        self._keep = keep
        self._idle: list[_Connection] = []
        self._lent: set[_Connection] = set()

    async def get_connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if await connection.is_connected():
                self._lent.add(connection)
                return connection
            await connection.disconnect()
        connection = _Connection(self.hosts, self)
        await connection.connect()
        self._lent.add(connection)
        return connection

    async def give_back(self, connection: _Connection, *, reusable: bool) -> None:
        self._lent.discard(connection)
        if reusable and len(self._idle) < self._keep and await connection.is_connected():
            self._idle.append(connection)
        else:
            await connection.disconnect()

    async def close_all(self) -> None:
        connections = [*self._idle, *self._lent]
        self._idle, self._lent = [], set()
        for connection in connections:
            await connection.disconnect()


class _StorageClient(Async_Storage_Client):
    """aiofdfs's storage protocol over one fresh, unpooled connection per request."""

    def __init__(self, server: Storage_server, pool: _Pool) -> None:
        ip = cast(bytes, server.ip_addr)
        address = f"{ip.decode()}:{server.port}"
        self.connections = _Pool([address], pool.connect_timeout, pool.network_timeout, keep=0)
        # Duck-typed: aiofdfs only calls get_connection() and close_all() on its pool.
        self.pool = cast(AsyncConnectionPool, self.connections)


def _errno(exc: DataError) -> int | None:
    match = _ERRNO.search(str(exc))
    return int(match.group(1)) if match else None


def translate(exc: Exception, stage: Stage) -> StorageError:
    """Map what aiofdfs raised (one of ``AIOFDFS_ERRORS``), and at which stage, to ours."""
    if isinstance(exc, DataError):
        code = _errno(exc)
        if code == 2 and stage == "storage":
            return FileNotFound("No such file.")
        if code == 2:  # the tracker: no ACTIVE storage in the group, or no such group
            return BackendUnavailable("FastDFS has no storage server available for this group.")
        if code == 28:
            return StorageError("FastDFS storage is full.")
        if code is None:  # aiofdfs wraps socket errors met while streaming as DataError
            return BackendUnavailable("FastDFS connection failed; try again later.")
        return StorageError(f"FastDFS refused the request (errno {code}).")
    return BackendUnavailable("FastDFS is unreachable; try again later.")


class _BodyReader:
    """The ``read(n)`` that aiofdfs's streaming upload pulls from, fed by an async iterator and
    held to the size announced to the storage."""

    def __init__(self, chunks: AsyncIterator[bytes], size: int) -> None:
        self._chunks = chunks
        self._left = size
        self.crc32 = 0
        """Of what was sent: the storage puts the same CRC32 in the file name and file info."""

    async def read(self, n: int = -1) -> bytes:
        chunk = await anext(self._chunks, b"")
        if len(chunk) > self._left:
            raise InvalidArgument("The body is longer than its declared length.")
        if not chunk and self._left:
            raise InvalidArgument("The body is shorter than its declared length.")
        self._left -= len(chunk)
        self.crc32 = zlib.crc32(chunk, self.crc32)
        return chunk


async def _file_chunks(file: IO[bytes]) -> AsyncIterator[bytes]:
    await anyio.to_thread.run_sync(file.seek, 0)
    while chunk := await anyio.to_thread.run_sync(file.read, SPOOL_CHUNK):
        yield chunk


def _ext(name: str) -> str:
    """FastDFS keeps up to 6 characters of ``[A-Za-z0-9._-]`` as the stored file's extension."""
    ext = extension(name)
    return ext if _FDFS_EXT.fullmatch(ext) else ""


def _metadata(obj: NewObject) -> dict[str, str]:
    """The records stored with the file; refuses what FastDFS would store corrupted."""
    records = {NAME_KEY: obj.file_name, TYPE_KEY: obj.content_type, **obj.metadata}
    for name, value in records.items():
        if len(name.encode()) > MAX_META_NAME or len(value.encode()) > MAX_META_VALUE:
            raise InvalidArgument(
                f"FastDFS keeps metadata names up to {MAX_META_NAME} bytes and values up to "
                f"{MAX_META_VALUE} bytes; {name!r} is longer."
            )
        if any(c in name + value for c in "\x00\x01\x02"):
            raise InvalidArgument(f"Metadata {name!r} holds a byte FastDFS uses as a separator.")
    return records


class FastDFSStream:
    """A download in progress: the storage connection lives until the stream is closed."""

    def __init__(self, first: bytes, rest: AsyncIterator[bytes], storage: _StorageClient) -> None:
        self._first = first
        self._rest = rest
        self._storage = storage
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            first, self._first = self._first, b""
            if first:
                yield first
            del first
            while True:
                try:
                    chunk = await anext(self._rest)
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
        await self._storage.connections.close_all()
        if isinstance(self._rest, AsyncGenerator):
            with contextlib.suppress(RuntimeError):  # "already running": it stops on the socket
                await self._rest.aclose()


class FastDFSBackend:
    name = "fastdfs"

    def __init__(self, trackers: list[str], connect_timeout: float, network_timeout: float) -> None:
        """Must run inside the event loop that will use it (aiofdfs binds to the loop)."""
        self._pool = _Pool(trackers, connect_timeout, network_timeout, keep=16)
        self._tracker = Async_Tracker_Client(cast(AsyncConnectionPool, self._pool), -1)
        self.deadline = connect_timeout + 2 * network_timeout
        """Seconds for one whole control operation (tracker query plus storage exchange)."""

    async def close(self) -> None:
        await self._pool.close_all()

    @asynccontextmanager
    async def _within_deadline(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.deadline):
                yield
        except TimeoutError as exc:
            raise BackendUnavailable("FastDFS did not answer in time; try again later.") from exc

    async def _step[T](self, stage: Stage, operation: Awaitable[T]) -> T:
        try:
            return await operation
        except AIOFDFS_ERRORS as exc:
            raise translate(exc, stage) from exc

    def _storage(self, server: Storage_server) -> _StorageClient:
        return _StorageClient(server, self._pool)

    async def _locate(self, ref: ObjectRef, *, update: bool) -> Storage_server:
        query = (
            self._tracker.tracker_query_storage_update
            if update
            else (self._tracker.tracker_query_storage_fetch)
        )
        server: Storage_server = await self._step("tracker", query(ref.bucket, ref.key))
        return server

    async def check(self) -> None:
        """ACTIVE_TEST against the first tracker that answers."""
        async with self._within_deadline():
            await self._step("tracker", self._active_test())

    async def _active_test(self) -> None:
        async with await self._pool.get_connection() as connection:
            header = Tracker_header()
            header.cmd = ACTIVE_TEST
            await header.send_header(connection)
            await header.recv_header(connection)
            if header.status != 0:
                raise BackendUnavailable(f"FastDFS tracker answered errno {header.status}.")

    async def put(self, obj: NewObject, body: AsyncIterable[bytes]) -> ObjectInfo:
        records = _metadata(obj)
        if obj.size is not None:
            return await self._upload(obj, records, aiter(body), obj.size)
        with tempfile.TemporaryFile(prefix="filegate-spool-") as spool:
            size = await write_in_batches(body, spool)
            await anyio.to_thread.run_sync(spool.flush)
            return await self._upload(obj, records, _file_chunks(spool), size)

    async def _upload(
        self, obj: NewObject, records: dict[str, str], chunks: AsyncIterator[bytes], size: int
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
                    file_ext_name=_ext(obj.file_name),
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
        crc = int(found["crc32"]) & 0xFFFFFFFF
        return ObjectInfo(
            ref=ref,
            size=int(found["file_size"]),
            etag=f'"{crc:08x}"',
            last_modified=datetime.fromtimestamp(int(found["create_timestamp"]), tz=UTC),
            file_name=records.get(NAME_KEY),
            content_type=records.get(TYPE_KEY),
            metadata={k: v for k, v in records.items() if not k.startswith(_INTERNAL_KEYS)},
            crc32=crc,
        )

    async def open(self, ref: ObjectRef, byte_range: ByteRange | None = None) -> FastDFSStream:
        async with self._within_deadline():
            server = await self._locate(ref, update=False)
            storage = self._storage(server)
            offset, count = (byte_range.start, byte_range.length) if byte_range else (0, 0)
            stream = FastDFSStream(
                b"", storage.storage_download_to_generator(server, offset, count, ref.key), storage
            )
            try:
                # The first chunk proves the file is there before any response byte is sent.
                stream._first = await self._step("storage", anext(stream._rest, b""))
            except BaseException:
                await stream.aclose()
                raise
        return stream

    async def delete(self, ref: ObjectRef) -> None:
        async with self._within_deadline():
            server = await self._locate(ref, update=True)
            async with self._storage(server) as storage:
                try:
                    await self._step("storage", storage.storage_delete_file(server, ref.key))
                except FileNotFound:
                    return
