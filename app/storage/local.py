"""The local-disk backend: the embedded default, so filegate runs with no other service.

Layout under ``LOCAL_ROOT``: ``<bucket>/<key>`` holds the bytes, and the file's extended
attribute ``user.filegate`` its record: the original name, content type, user metadata and CRC-32,
as JSON. On a file system without user extended attributes the record is a sidecar,
``.filegate-meta/<bucket>/<key>.json``; a record is read from there too when a file has no
attribute (files stored before records moved into attributes). docs/architecture.md, "Local disk".

An upload is written to a hidden temporary file in the target directory, given its record, fsynced
and renamed into place once complete, so a reader never sees a partial file, a failed upload leaves
nothing, and the record is stored with the bytes in the same inode and the same rename.

Every filesystem call runs in a worker thread, and each thread hop does as much as it can: a small
file is opened, checked, described and read in one hop; a small upload is written, fsynced and
renamed in one. Every path is confined below the root: after opening, the kernel's own record of
the opened file (``/proc/self/fd``) must lie inside it, so a symlink cannot lead out.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import stat
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread

from app.errors import FilegateError, FileNotFound, InvalidArgument, StorageError
from app.settings import Settings
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
from app.storage.budget import Budget, Held
from app.storage.crc import crc32

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


def _shorter() -> StorageError:
    return StorageError("The file became shorter while it was read.", backend="local")


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

    def __init__(self, root: Path, budget: Budget, *, xattrs: bool | None = None) -> None:
        """``xattrs``: whether records go into extended attributes (True) or sidecars (False);
        None finds out in ``check`` (``open_local_backend`` calls it), sidecars until then."""
        self._budget = budget
        self._root = str(root.resolve())
        self._inside = f"{self._root}{os.sep}"
        self._meta_root = os.path.join(self._root, META_DIR)
        self._xattrs = xattrs

    @property
    def xattrs(self) -> bool:
        return bool(self._xattrs)

    async def check(self) -> None:
        """Create the root if needed and check that it is a writable directory."""
        try:
            await _run(self.check_writable)
        except OSError as exc:
            raise StorageError(
                f"{self._root} is not a writable directory ({exc.strerror})", backend="local"
            ) from exc

    def check_writable(self) -> None:
        os.makedirs(self._root, exist_ok=True)
        with tempfile.TemporaryFile(dir=self._root, prefix=TMP_PREFIX) as probe:
            if self._xattrs is None:
                try:
                    os.setxattr(probe.fileno(), XATTR, b"{}")
                    self._xattrs = True
                except (AttributeError, OSError):  # not Linux, or not this file system
                    self._xattrs = False

    def _path(self, ref: ObjectRef) -> str:
        """The file's path, built lexically; ``_confine`` checks symlinks inside a worker thread."""
        segments = ref.key.split("/")
        if ref.bucket.startswith(".") or any(s in ("", ".", "..") or "\0" in s for s in segments):
            raise InvalidArgument("Malformed key.")
        if segments[-1].startswith(TMP_PREFIX):
            raise FileNotFound("No such file.")
        return f"{self._root}{os.sep}{ref.bucket}{os.sep}{ref.key}"

    def _meta_path(self, ref: ObjectRef) -> str:
        return f"{self._meta_root}{os.sep}{ref.bucket}{os.sep}{ref.key}.json"

    def _confine(self, fd: int, path: str) -> None:
        """Refuse an opened file that lies outside the root (a symlink led there)."""
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # no /proc: resolve the path instead
            real = os.path.realpath(path)
        if not real.startswith(self._inside):
            raise InvalidArgument("The key leads outside the storage root.")

    # reading

    async def head(self, ref: ObjectRef) -> ObjectInfo:
        path = self._path(ref)
        try:
            return await _run(self._head, path, ref)
        except OSError as exc:
            raise _translate(exc) from exc

    def _head(self, path: str, ref: ObjectRef) -> ObjectInfo:
        fd = os.open(path, _O_PATH | os.O_CLOEXEC)
        try:
            self._confine(fd, path)
            # An O_PATH descriptor takes no xattr calls; its /proc link does.
            where = f"/proc/self/fd/{fd}" if _PROC_FD else path
            return self._describe(os.fstat(fd), ref, where)
        finally:
            os.close(fd)

    def _describe(self, st: os.stat_result, ref: ObjectRef, where: int | str) -> ObjectInfo:
        """The file's info from its stat and its record (``where``: its descriptor or path)."""
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFound("No such file.")
        record = self._record(ref, where)
        crc = record.get("crc32")
        return ObjectInfo(
            ref=ref,
            size=st.st_size,
            etag=record.get("etag") or _etag(crc, st),
            last_modified=_mtime(st),
            file_name=record.get("file_name"),
            content_type=record.get("content_type"),
            metadata=record.get("metadata") or {},
            crc32=crc,
        )

    def _record(self, ref: ObjectRef, where: int | str) -> dict[str, Any]:
        """The file's record: its attribute, else its sidecar, else none."""
        data = None
        if self._xattrs:
            try:
                data = os.getxattr(where, XATTR)
            except OSError as exc:
                if exc.errno not in _NO_XATTR:
                    raise
        if data is None:
            try:
                with open(self._meta_path(ref), "rb") as file:
                    data = file.read()
            except (FileNotFoundError, NotADirectoryError):
                return {}
        try:
            record: dict[str, Any] = json.loads(data)
        except ValueError:
            return {}
        return record

    def keep_record(self, fd: int, ref: ObjectRef, record: bytes) -> None:
        """Store a file's record before the file is fsynced and moved into place: in its
        attribute, or in a sidecar that is in place (and durable) before the file is."""
        if self._xattrs:
            try:
                os.setxattr(fd, XATTR, record)
            except OSError as exc:  # ext4 says ENOSPC when an attribute does not fit its block
                if exc.errno in (errno.ENOSPC, errno.E2BIG, errno.ERANGE):
                    raise InvalidArgument(
                        f"The file's name, type and metadata ({len(record)} bytes) are too large "
                        "to keep with it on this file system."
                    ) from exc
                raise
            return
        meta_path = self._meta_path(ref)
        made = make_dirs(os.path.dirname(meta_path))
        write_atomically(meta_path, record)
        for directory in (os.path.dirname(meta_path), *made):
            fsync_dir(directory)

    def forget_record(self, ref: ObjectRef) -> None:
        """Remove a file's sidecar, if it has one, and the folders it leaves empty."""
        meta_path = self._meta_path(ref)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            os.unlink(meta_path)
            _prune(os.path.dirname(meta_path), f"{self._meta_root}{os.sep}{ref.bucket}")

    async def fetch(self, ref: ObjectRef) -> tuple[ObjectInfo, ObjectStream]:
        """``head`` and ``open`` of the whole file in one thread hop (a small one read too)."""
        path = self._path(ref)
        try:
            info, stream = await _run(self._open, path, ref, None)
        except OSError as exc:
            raise _translate(exc) from exc
        assert info is not None
        return info, stream

    async def open(self, ref: ObjectRef, byte_range: ByteRange | None = None) -> ObjectStream:
        path = self._path(ref)
        try:
            _, stream = await _run(self._open, path, None, byte_range)
        except OSError as exc:
            raise _translate(exc) from exc
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

    # listing

    async def list_page(
        self, bucket: str, prefix: str, *, delimiter: str, limit: int, token: str | None
    ) -> Listing:
        """Keys under ``prefix`` in S3's order, walked directory by directory and resumed after
        ``token`` (the last key of the previous page) without reading what lies before it."""
        if delimiter not in ("", "/"):
            raise InvalidArgument("The local disk lists with delimiter '/' or none.")
        try:
            return await _run(self._list, bucket, prefix, delimiter, limit, token)
        except OSError as exc:
            raise _translate(exc) from exc

    def _list(
        self, bucket: str, prefix: str, delimiter: str, limit: int, token: str | None
    ) -> Listing:
        base = self._path(ObjectRef(bucket, "x"))[:-2]  # the bucket's directory, checked
        folder, _, name_prefix = prefix.rpartition("/")
        directory = f"{base}{os.sep}{folder}" if folder else base
        if folder and os.path.realpath(directory) != os.path.normpath(directory):
            return Listing([], [], None)  # a symlinked folder: not followed
        objects: list[ObjectInfo] = []
        folders: list[str] = []
        key_prefix = f"{folder}/" if folder else ""
        found = _walk(directory, key_prefix, name_prefix, token, recursive=not delimiter)
        last: str | None = None
        for key, entry in found:
            if len(objects) + len(folders) == limit:
                return Listing(objects, folders, last)
            if entry is None:
                folders.append(key)
            else:
                try:
                    st = entry.stat(follow_symlinks=False)
                    objects.append(self._describe(st, ObjectRef(bucket, key), entry.path))
                except (FileNotFoundError, FileNotFound):  # deleted meanwhile
                    continue
            last = key
        return Listing(objects, folders, None)

    # writing

    @property
    def root(self) -> str:
        return self._root

    @property
    def budget(self) -> Budget:
        return self._budget

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
            self.keep_record(fd, obj.ref, _record(obj, crc32))
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
            etag=_etag(crc32, st),
            last_modified=_mtime(st),
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
                    return await _run(writer.whole, batch)
                await _run(writer.begin, batch)
            while True:
                async with self._budget.holding() as held:
                    batch, ended = await _gather(chunks, held)
                    if ended:
                        return await _run(writer.finish, batch)
                    await _run(writer.write, batch)
        except OSError as exc:
            raise _translate(exc) from exc
        finally:
            if writer.pending:
                with anyio.CancelScope(shield=True):
                    await _run(writer.discard)

    async def delete(self, ref: ObjectRef) -> None:
        path = self._path(ref)
        try:
            await _run(self._delete, path, ref)
        except OSError as exc:
            raise _translate(exc) from exc

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
            return await _run(self._delete_many, bucket, keys)
        except OSError as exc:
            raise _translate(exc) from exc

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
                failed[key] = _translate(exc).detail
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
            changed = _prune(os.path.dirname(path), f"{self._root}{os.sep}{ref.bucket}")
        self.forget_record(ref)
        return changed


class _Writer:
    """One upload's temporary file, CRC and commit; every method runs in a worker thread."""

    def __init__(self, backend: LocalBackend, path: str, obj: NewObject) -> None:
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
        fd, self._temp, self._made = _create_temp(directory)
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
        self._backend.keep_record(fd, self._obj.ref, _record(self._obj, self.crc32))
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
            etag=_etag(self.crc32, st),
            last_modified=_mtime(st),
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


def _prune(directory: str, top: str) -> str:
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


def _walk(
    directory: str, key_prefix: str, name_prefix: str, after: str | None, *, recursive: bool
) -> Iterator[tuple[str, os.DirEntry[str] | None]]:
    """``(key, entry)`` in S3's key order (code point order, which is UTF-8 byte order), only
    keys after ``after``: files with their entry, and (not recursive) folders as ``key/`` with
    None. A folder sorts as its name plus ``/``, as its keys do. Folders wholly before ``after``
    are not opened; symlinks and temporary files are skipped."""
    try:
        with os.scandir(directory) as scan:
            entries = [e for e in scan if e.name.startswith(name_prefix)]
    except (FileNotFoundError, NotADirectoryError):
        return
    items: list[tuple[str, os.DirEntry[str], bool]] = []
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX) or entry.is_symlink():
            continue
        if entry.is_dir(follow_symlinks=False):
            items.append((f"{key_prefix}{entry.name}/", entry, True))
        elif entry.is_file(follow_symlinks=False):
            items.append((f"{key_prefix}{entry.name}", entry, False))
    items.sort(key=lambda item: item[0])
    for key, entry, is_dir in items:
        if not is_dir:
            if after is None or key > after:
                yield key, entry
        elif not recursive:
            if after is None or key > after:
                yield key, None
        elif after is None or key > after or after.startswith(key):
            yield from _walk(entry.path, key, "", after, recursive=True)


def _record(obj: NewObject, crc32: int) -> bytes:
    record = {
        "file_name": obj.file_name,
        "content_type": obj.content_type,
        "metadata": dict(obj.metadata),
        "crc32": crc32,
    }
    return json.dumps(record, ensure_ascii=False).encode()


def _etag(crc32: int | None, st: os.stat_result) -> str:
    """Files are never rewritten in place (every upload gets a new key): the content's CRC-32
    and size tell versions apart. Files without a recorded CRC use size and mtime."""
    if crc32 is None:
        return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
    return f'"{crc32:08x}-{st.st_size:x}"'


_temp_names = itertools.count()


def _create_temp(directory: str) -> tuple[int, str, list[str]]:
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
    fd, name, _ = _create_temp(os.path.dirname(path))
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


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime, tz=UTC)
