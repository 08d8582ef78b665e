"""A resumable upload's appender file on FastDFS (docs/tus.md, "FastDFS")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from aiofdfs.async_fdfs_protol import Storage_server

from app.errors import FileNotFound, StorageError
from app.storage.base import ObjectRef
from app.storage.fastdfs.connection import StorageClient

if TYPE_CHECKING:
    from app.storage.fastdfs.backend import FastDFSBackend


class Appender:
    """What a resumable upload does with its appender file, each step under the backend's
    deadline. aiofdfs's high-level calls for these are broken (docs/fastdfs.md); its storage
    protocol calls work when given the remote file name as bytes."""

    def __init__(self, backend: FastDFSBackend, ref: ObjectRef, server: Storage_server) -> None:
        self._backend = backend
        self.ref = ref
        self._server = server
        self._remote = ref.key.encode()

    @asynccontextmanager
    async def _storage(self) -> AsyncIterator[StorageClient]:
        async with self._backend._within_deadline(), self._backend._storage(self._server) as s:
            yield s

    async def records(self) -> dict[str, str]:
        """Its metadata; ``{}`` when it has none or does not exist (FastDFS answers both alike)."""
        async with self._storage() as storage:
            found: dict[str, str] = await self._backend._step(
                "storage",
                storage.storage_get_metadata(None, self._server, self.ref.key),
            )
        return found

    async def set_records(self, records: dict[str, str], *, merge: bool = False) -> None:
        """Replace its metadata with ``records`` (or merge them in); ``FileNotFound``."""
        async with self._storage() as storage:
            status = await self._backend._step(
                "storage",
                storage.storage_set_metadata(
                    self._server, self._remote, records, "M" if merge else "O"
                ),
            )
        if status == 2:
            raise FileNotFound("No such file.")
        if status:
            raise StorageError(f"FastDFS refused the metadata (errno {status}).", backend="fastdfs")

    async def write(self, offset: int, data: memoryview) -> None:
        """Write ``data`` at ``offset`` (at most the current size): MODIFY_FILE."""
        async with self._storage() as storage:
            await self._backend._step(
                "storage",
                storage.storage_modify_by_buffer(
                    None, self._server, data, offset, len(data), self._remote
                ),
            )

    async def truncate(self, size: int) -> None:
        async with self._storage() as storage:
            await self._backend._step(
                "storage", storage.storage_truncate_file(None, self._server, size, self._remote)
            )

    async def size_and_crc32(self) -> tuple[int, int]:
        """As the storage has it; for an appender file it computes the CRC-32 from the bytes."""
        async with self._storage() as storage:
            found: dict[str, Any] = await self._backend._step(
                "storage", storage.storage_query_file_info(self._server, self.ref.key)
            )
        return int(found["file_size"]), int(found["crc32"]) & 0xFFFFFFFF

    async def delete(self) -> None:
        await self._backend.delete(self.ref)
