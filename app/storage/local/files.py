"""The local disk's file-system steps, each safe against a crash or a power loss: temporary
files, atomic replacement, directory fsyncs, empty-folder pruning, and how an OS error becomes
filegate's (docs/architecture.md, "Local disk")."""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.to_thread

from app.errors import FilegateError, FileNotFound, InvalidArgument, StorageError
from app.storage.base import NewObject

TMP_PREFIX = ".filegate-tmp-"
META_DIR = ".filegate-meta"
XATTR = "user.filegate"
_NO_XATTR = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA)
_PROC_FD = os.path.isdir("/proc/self/fd")
READ_CHUNK = 1024 * 1024
INLINE_READ = 256 * 1024
"""Files (or ranges) up to this size are read in the same thread hop that opens them."""
WRITE_BATCH = 1024 * 1024
"""Uploaded chunks are gathered up to this many bytes per thread hop."""
_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)
_O_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


async def run[T](func: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(func, *args)


def translate(exc: OSError) -> FilegateError:
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


def prune(directory: str, top: str) -> str:
    """Remove ``directory`` and its parents below ``top`` while they are empty (a folder
    exists only while it holds files, as on S3); returns the first one left, which lost an
    entry. An upload into a folder removed meanwhile creates it again (``_create_temp``)."""
    while directory.startswith(f"{top}{os.sep}"):
        try:
            os.rmdir(directory)
        except OSError:  # not empty (or gone): stop
            return directory
        directory = os.path.dirname(directory)
    return directory


def record_of(obj: NewObject, crc32: int) -> bytes:
    record = {
        "file_name": obj.file_name,
        "content_type": obj.content_type,
        "metadata": dict(obj.metadata),
        "crc32": crc32,
    }
    return json.dumps(record, ensure_ascii=False).encode()


def etag_of(crc32: int | None, st: os.stat_result) -> str:
    """Files are never rewritten in place (every upload gets a new key): the content's CRC-32
    and size tell versions apart. Files without a recorded CRC use size and mtime."""
    if crc32 is None:
        return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
    return f'"{crc32:08x}-{st.st_size:x}"'


_temp_names = itertools.count()


def create_temp(directory: str) -> tuple[int, str, list[str]]:
    """A new hidden temporary file in ``directory`` (created with its parents if missing), and
    the directories ``make_dirs`` changed on the way."""
    made: list[str] = []
    while True:
        name = f"{directory}{os.sep}{TMP_PREFIX}{os.getpid()}-{next(_temp_names)}"
        try:
            return os.open(name, _O_TEMP, 0o600), name, made
        except FileNotFoundError:  # rare: the first file in a new folder
            made += make_dirs(directory)
        except FileExistsError:  # left by a crashed process that had our pid
            continue


def make_dirs(directory: str) -> list[str]:
    """Create ``directory`` with its missing parents; returns the directories that gained an
    entry (the parent of each one created). A file in a new folder is durable only once these
    are fsynced too: the folder's own entry must survive a power loss as well."""
    missing: list[str] = []
    current = directory
    while not os.path.isdir(current) and os.path.dirname(current) != current:
        missing.append(current)
        current = os.path.dirname(current)
    os.makedirs(directory, exist_ok=True)
    return [os.path.dirname(created) for created in missing]


def write_atomically(path: str, data: bytes) -> None:
    fd, name, _ = create_temp(os.path.dirname(path))
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


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mtime_of(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime, tz=UTC)
