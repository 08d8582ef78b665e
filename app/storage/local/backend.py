"""The local-disk backend: the embedded default, so filegate runs with no other service.

Reading and deleting here; the root, paths and records in ``core``, uploads in ``writing``,
listing in ``listing``, the file-system steps in ``files`` (docs/architecture.md, "Local disk").
Every filesystem call runs in a worker thread, and each thread hop does as much as it can: a small
file is opened, checked, described and read in one hop.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import AsyncIterator
from typing import IO

from app.errors import FilegateError, FileNotFound, StorageError
from app.settings import Settings
from app.storage.base import ByteRange, Loaded, ObjectInfo, ObjectRef, ObjectStream
from app.storage.budget import Budget
from app.storage.local.files import (
    _O_PATH,
    _PROC_FD,
    INLINE_READ,
    READ_CHUNK,
    fsync_dir,
    prune,
    run,
    translate,
)
from app.storage.local.listing import LocalListing
from app.storage.local.writing import LocalWriting


async def open_local_backend(settings: Settings, budget: Budget) -> LocalBackend:
    """The backend under ``LOCAL_ROOT``, which must be (or become) a writable directory; records
    go into extended attributes when its file system takes them."""
    backend = LocalBackend(settings.local_root, budget)
    await backend.check()
    return backend


class LocalStream:
    """A byte span of an open file, one thread hop per chunk."""

    def __init__(self, file: IO[bytes], remaining: int) -> None:
        self._file = file
        self._remaining = remaining

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while self._remaining > 0:
                chunk = await run(self._file.read, min(READ_CHUNK, self._remaining))
                if not chunk:
                    raise StorageError(
                        "The file became shorter while it was read.", backend="local"
                    )
                self._remaining -= len(chunk)
                yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if not self._file.closed:
            self._file.close()


class LocalBackend(LocalWriting, LocalListing):
    async def head(self, ref: ObjectRef) -> ObjectInfo:
        path = self._path(ref)
        try:
            return await run(self._head, path, ref)
        except OSError as exc:
            raise translate(exc) from exc

    def _head(self, path: str, ref: ObjectRef) -> ObjectInfo:
        fd = os.open(path, _O_PATH | os.O_CLOEXEC)
        try:
            self._confine(fd, path)
            # An O_PATH descriptor takes no xattr calls; its /proc link does.
            where = f"/proc/self/fd/{fd}" if _PROC_FD else path
            return self._describe(os.fstat(fd), ref, where)
        finally:
            os.close(fd)

    async def fetch(self, ref: ObjectRef) -> tuple[ObjectInfo, ObjectStream]:
        """``head`` and ``open`` of the whole file in one thread hop (a small one read too)."""
        path = self._path(ref)
        try:
            info, stream = await run(self._open, path, ref, None)
        except OSError as exc:
            raise translate(exc) from exc
        assert info is not None
        return info, stream

    async def open(self, ref: ObjectRef, byte_range: ByteRange | None = None) -> ObjectStream:
        path = self._path(ref)
        try:
            _, stream = await run(self._open, path, None, byte_range)
        except OSError as exc:
            raise translate(exc) from exc
        return stream

    def _open(
        self, path: str, describe: ObjectRef | None, byte_range: ByteRange | None
    ) -> tuple[ObjectInfo | None, ObjectStream]:
        file = open(path, "rb", buffering=0)  # noqa: SIM115 - owned by the returned stream
        try:
            self._confine(file.fileno(), path)
            st = os.fstat(file.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise FileNotFound("No such file.")
            info = self._describe(st, describe, file.fileno()) if describe is not None else None
            start, length = 0, st.st_size
            if byte_range is not None:
                start = byte_range.start
                length = min(byte_range.length, st.st_size - byte_range.start)
                file.seek(start)
            if length <= INLINE_READ:
                data = file.read(length)
                file.close()
                if len(data) != length:
                    raise StorageError(
                        "The file became shorter while it was read.", backend="local"
                    )
                return info, Loaded(data)
            return info, LocalStream(file, length)
        except BaseException:
            file.close()
            raise

    async def delete(self, ref: ObjectRef) -> None:
        path = self._path(ref)
        try:
            await run(self._delete, path, ref)
        except OSError as exc:
            raise translate(exc) from exc

    def _delete(self, path: str, ref: ObjectRef) -> None:
        changed = self._unlink(path, ref)
        if changed is not None:
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile by another delete
                fsync_dir(changed)

    async def delete_many(self, bucket: str, keys: list[str]) -> dict[str, str]:
        """Delete many files in one thread hop, then fsync each directory that lost entries
        once: a folder's worth of deletes costs a few fsyncs, not one per file. Returns the
        keys that failed, with the reason."""
        try:
            return await run(self._delete_many, bucket, keys)
        except OSError as exc:
            raise translate(exc) from exc

    def _delete_many(self, bucket: str, keys: list[str]) -> dict[str, str]:
        failed: dict[str, str] = {}
        changed: set[str] = set()
        for key in keys:
            ref = ObjectRef(bucket, key)
            try:
                directory = self._unlink(self._path(ref), ref)
            except FileNotFound:  # a temporary file's name: nothing to delete
                continue
            except FilegateError as exc:
                failed[key] = exc.detail
                continue
            except OSError as exc:
                failed[key] = translate(exc).detail
                continue
            if directory is not None:
                changed.add(directory)
        for directory in changed:
            with contextlib.suppress(FileNotFoundError):  # removed for a later key, whose
                fsync_dir(directory)  # parent is in ``changed`` then
        return failed

    def _unlink(self, path: str, ref: ObjectRef) -> str | None:
        """Remove the file, its record and the folders it leaves empty. Returns the directory
        that lost an entry (the file's, or the parent of the last folder removed), which must be
        fsynced for the delete to hold after a power loss; None when there was no file."""
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            fd = os.open(path, _O_PATH | os.O_CLOEXEC)
            try:
                self._confine(fd, path)
            finally:
                os.close(fd)
        changed = None
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            os.unlink(path)
            changed = prune(os.path.dirname(path), f"{self._root}{os.sep}{ref.bucket}")
        self.forget_record(ref)
        return changed
