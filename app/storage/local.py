"""The local-disk backend: the embedded default, so filegate runs with no other service.

Layout under ``LOCAL_ROOT``: ``<bucket>/<key>`` holds the bytes, and
``.filegate-meta/<bucket>/<key>.json`` the original name, content type, user metadata and MD5.
An upload is written to a hidden temporary file in the target directory and renamed into place
once complete, so a reader never sees a partial file and a failed upload leaves nothing. Every
filesystem call runs in a worker thread; every path is confined below the root.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import tempfile
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread

from app.errors import FilegateError, FileNotFound, InvalidArgument, StorageError
from app.settings import Settings
from app.storage.base import ByteRange, NewObject, ObjectInfo, ObjectRef
from app.storage.diskio import write_in_batches

TMP_PREFIX = ".filegate-tmp-"
META_DIR = ".filegate-meta"
READ_CHUNK = 256 * 1024


async def _run[T](func: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(func, *args)


def _translate(exc: OSError) -> FilegateError:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
        return FileNotFound("No such file.")
    if exc.errno == errno.ENAMETOOLONG:
        return InvalidArgument("The name is too long for the file system.")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError("The local disk is full.", backend="local")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError("The local storage directory is not writable.", backend="local")
    name = errno.errorcode.get(exc.errno or 0, "error")
    return StorageError(f"Local storage failed ({name}).", backend="local")


async def open_local_backend(settings: Settings) -> LocalBackend:
    """The backend under ``LOCAL_ROOT``, which must be (or become) a writable directory."""
    backend = LocalBackend(settings.local_root)
    await backend.check()
    return backend


class LocalStream:
    """Reads a byte span of an open file, one worker-thread call per chunk."""

    def __init__(self, file: IO[bytes], remaining: int) -> None:
        self._file = file
        self._remaining = remaining

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while self._remaining > 0:
                chunk = await _run(self._file.read, min(READ_CHUNK, self._remaining))
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


class LocalBackend:
    name = "local"

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()

    async def check(self) -> None:
        """Create the root if needed and check that it is a writable directory."""
        try:
            await _run(self.check_writable)
        except OSError as exc:
            raise _translate(exc) from exc

    def check_writable(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self._root, prefix=TMP_PREFIX):
            pass

    def _path(self, ref: ObjectRef) -> Path:
        """The file's path, built lexically; ``_confine`` checks symlinks inside a worker thread."""
        segments = ref.key.split("/")
        if ref.bucket.startswith(".") or any(s in ("", ".", "..") or "\0" in s for s in segments):
            raise InvalidArgument("Malformed key.")
        if segments[-1].startswith(TMP_PREFIX):
            raise FileNotFound("No such file.")
        return self._root.joinpath(ref.bucket, *segments)

    def _meta_path(self, ref: ObjectRef) -> Path:
        return self._root.joinpath(META_DIR, ref.bucket, f"{ref.key}.json")

    async def put(self, obj: NewObject, body: AsyncIterable[bytes]) -> ObjectInfo:
        path = self._path(obj.ref)
        meta_path = self._meta_path(obj.ref)
        try:
            file, temp = await _run(self._create_temp, path)
        except OSError as exc:
            raise _translate(exc) from exc
        digest = _Digest()
        try:
            await write_in_batches(body, file, digest.update)
            record = {
                "file_name": obj.file_name,
                "content_type": obj.content_type,
                "metadata": dict(obj.metadata),
                "etag": f'"{digest.md5.hexdigest()}"',
                "crc32": digest.crc32,
            }
            return await _run(self._commit, file, temp, path, meta_path, record, obj.ref)
        except OSError as exc:
            raise _translate(exc) from exc
        finally:
            with anyio.CancelScope(shield=True):
                await _run(_discard, file, temp)

    def _create_temp(self, path: Path) -> tuple[IO[bytes], str]:
        directory = _confine(self._root, path).parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX)
        return open(fd, "wb"), temp

    def _commit(
        self,
        file: IO[bytes],
        temp: str,
        path: Path,
        meta_path: Path,
        record: dict[str, Any],
        ref: ObjectRef,
    ) -> ObjectInfo:
        file.flush()
        os.fsync(file.fileno())
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(meta_path, json.dumps(record, ensure_ascii=False).encode())
        os.replace(temp, path)
        file.close()
        _fsync_dir(path.parent)
        st = path.stat()
        return ObjectInfo(
            ref=ref,
            size=st.st_size,
            etag=record["etag"],
            last_modified=_mtime(st),
            file_name=record["file_name"],
            content_type=record["content_type"],
            metadata=record["metadata"],
            crc32=record["crc32"],
        )

    async def head(self, ref: ObjectRef) -> ObjectInfo:
        path = self._path(ref)
        try:
            return await _run(self._head, path, ref)
        except OSError as exc:
            raise _translate(exc) from exc

    def _head(self, path: Path, ref: ObjectRef) -> ObjectInfo:
        st = _confine(self._root, path).stat()
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFound("No such file.")
        try:
            record = json.loads(self._meta_path(ref).read_bytes())
        except (FileNotFoundError, ValueError):
            record = {}
        return ObjectInfo(
            ref=ref,
            size=st.st_size,
            etag=record.get("etag") or f'"{st.st_size:x}-{st.st_mtime_ns:x}"',
            last_modified=_mtime(st),
            file_name=record.get("file_name"),
            content_type=record.get("content_type"),
            metadata=record.get("metadata") or {},
            crc32=record.get("crc32"),
        )

    async def open(self, ref: ObjectRef, byte_range: ByteRange | None = None) -> LocalStream:
        path = self._path(ref)
        try:
            return await _run(_open_span, self._root, path, byte_range)
        except OSError as exc:
            raise _translate(exc) from exc

    async def delete(self, ref: ObjectRef) -> None:
        path = self._path(ref)
        try:
            await _run(self._delete, path, ref)
        except OSError as exc:
            raise _translate(exc) from exc

    def _delete(self, path: Path, ref: ObjectRef) -> None:
        for target in (_confine(self._root, path), self._meta_path(ref)):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
                target.unlink()


class _Digest:
    """MD5 for the ETag and CRC-32 for zip entries, computed as the bytes are written."""

    def __init__(self) -> None:
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.crc32 = 0

    def update(self, chunk: bytes) -> None:
        self.md5.update(chunk)
        self.crc32 = zlib.crc32(chunk, self.crc32)


def _discard(file: IO[bytes], temp: str) -> None:
    """Close and remove the temporary file unless ``_commit`` already renamed it."""
    if file.closed:
        return
    file.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)


def _write_atomically(path: Path, data: bytes) -> None:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
    try:
        with open(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _confine(root: Path, path: Path) -> Path:
    """Refuse a path that a symlink inside the root leads out of it (blocking: call in a thread)."""
    if not os.path.realpath(path).startswith(f"{root}{os.sep}"):
        raise InvalidArgument("The key leads outside the storage root.")
    return path


def _open_span(root: Path, path: Path, byte_range: ByteRange | None) -> LocalStream:
    file = open(_confine(root, path), "rb")  # noqa: SIM115 - owned by the returned stream
    try:
        st = os.fstat(file.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFound("No such file.")
        if byte_range is None:
            return LocalStream(file, st.st_size)
        file.seek(byte_range.start)
        return LocalStream(file, min(byte_range.length, st.st_size - byte_range.start))
    except BaseException:
        file.close()
        raise


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime, tz=UTC)
