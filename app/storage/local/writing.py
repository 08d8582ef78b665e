"""Writing to the local disk: an upload goes to a hidden temporary file, gets its record, is
fsynced and renamed into place once complete, so nothing partial is ever seen and a failure
leaves nothing (docs/architecture.md, "Local disk")."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterable, AsyncIterator
from typing import IO

import anyio

from app.storage.base import Chunk, NewObject, ObjectInfo
from app.storage.budget import Held
from app.storage.crc import crc32
from app.storage.local.core import LocalCore
from app.storage.local.files import (
    _O_PATH,
    WRITE_BATCH,
    create_temp,
    etag_of,
    fsync_dir,
    make_dirs,
    mtime_of,
    record_of,
    run,
    translate,
)


class LocalWriting(LocalCore):
    def adopt(self, source: str, obj: NewObject, crc32: int) -> ObjectInfo:
        """Move a complete, fsynced file from elsewhere under the root into place as ``obj``
        (a finished resumable upload); runs in a worker thread."""
        path = self._path(obj.ref)
        directory = os.path.dirname(path)
        made = make_dirs(directory)
        fd = os.open(directory, _O_PATH | os.O_CLOEXEC)
        try:
            self._confine(fd, directory)
        finally:
            os.close(fd)
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.keep_record(fd, obj.ref, record_of(obj, crc32))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(source, path)
        for changed in (directory, *made):
            fsync_dir(changed)
        st = os.stat(path)
        return ObjectInfo(
            ref=obj.ref,
            size=st.st_size,
            etag=etag_of(crc32, st),
            last_modified=mtime_of(st),
            file_name=obj.file_name,
            content_type=obj.content_type,
            metadata=obj.metadata,
            crc32=crc32,
        )

    async def put(self, obj: NewObject, body: AsyncIterable[Chunk]) -> ObjectInfo:
        path = self._path(obj.ref)
        writer = _Writer(self, path, obj)
        chunks = aiter(body)
        try:
            async with self._budget.holding() as held:
                batch, ended = await _gather(chunks, held)
                if ended:  # the whole body in one hop: create, write, fsync, rename
                    return await run(writer.whole, batch)
                await run(writer.begin, batch)
            while True:
                async with self._budget.holding() as held:
                    batch, ended = await _gather(chunks, held)
                    if ended:
                        return await run(writer.finish, batch)
                    await run(writer.write, batch)
        except OSError as exc:
            raise translate(exc) from exc
        finally:
            if writer.pending:
                with anyio.CancelScope(shield=True):
                    await run(writer.discard)


class _Writer:
    """One upload's temporary file, CRC and commit; every method runs in a worker thread."""

    def __init__(self, backend: LocalCore, path: str, obj: NewObject) -> None:
        self._backend = backend
        self._path = path
        self._obj = obj
        self._file: IO[bytes] | None = None
        self._temp = ""
        self._made: list[str] = []
        """Directories whose entries this upload changed by creating folders in them."""
        self.crc32 = 0
        self.pending = False
        """A temporary file exists that is not in place yet."""

    def begin(self, batch: list[bytes]) -> None:
        directory = os.path.dirname(self._path)
        fd, self._temp, self._made = create_temp(directory)
        self.pending = True
        self._file = open(fd, "wb", buffering=0)  # noqa: SIM115 - closed by commit or discard
        self._backend._confine(fd, directory)
        self.write(batch)

    def write(self, batch: list[bytes]) -> None:
        assert self._file is not None
        for chunk in batch:
            self._file.write(chunk)
            self.crc32 = crc32(chunk, self.crc32)

    def whole(self, batch: list[bytes]) -> ObjectInfo:
        self.begin(batch)
        return self._commit()

    def finish(self, batch: list[bytes]) -> ObjectInfo:
        self.write(batch)
        return self._commit()

    def _commit(self) -> ObjectInfo:
        assert self._file is not None
        fd = self._file.fileno()
        self._backend.keep_record(fd, self._obj.ref, record_of(self._obj, self.crc32))
        os.fsync(fd)
        st = os.fstat(fd)
        os.replace(self._temp, self._path)
        self.pending = False
        self._file.close()
        for directory in (os.path.dirname(self._path), *self._made):
            fsync_dir(directory)
        return ObjectInfo(
            ref=self._obj.ref,
            size=st.st_size,
            etag=etag_of(self.crc32, st),
            last_modified=mtime_of(st),
            file_name=self._obj.file_name,
            content_type=self._obj.content_type,
            metadata=self._obj.metadata,
            crc32=self.crc32,
        )

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)
        if not self._backend.xattrs:  # a sidecar may be in place already (keys are never reused)
            self._backend.forget_record(self._obj.ref)
        self.pending = False


async def _gather(chunks: AsyncIterator[Chunk], held: Held) -> tuple[list[Chunk], bool]:
    """The next chunks, up to ``WRITE_BATCH`` bytes (each counted in the upload budget); and
    whether the body ended."""
    batch: list[Chunk] = []
    size = 0
    while size < WRITE_BATCH:
        chunk = await anext(chunks, None)
        if chunk is None:
            return batch, True
        await held.take(len(chunk))
        batch.append(chunk)
        size += len(chunk)
    return batch, False
