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
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from app.errors import FileNotFound, InvalidArgument, StorageError
from app.storage.base import ObjectInfo, ObjectRef
from app.storage.budget import Budget
from app.storage.local.files import (
    _NO_XATTR,
    META_DIR,
    TMP_PREFIX,
    XATTR,
    etag_of,
    fsync_dir,
    make_dirs,
    mtime_of,
    prune,
    run,
    write_atomically,
)


class LocalCore:
    """The root, the confinement of every path below it, and each file's record (in its
    extended attribute, or in a sidecar)."""

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
            await run(self.check_writable)
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

    def _describe(self, st: os.stat_result, ref: ObjectRef, where: int | str) -> ObjectInfo:
        """The file's info from its stat and its record (``where``: its descriptor or path)."""
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFound("No such file.")
        record = self._record(ref, where)
        crc = record.get("crc32")
        return ObjectInfo(
            ref=ref,
            size=st.st_size,
            etag=record.get("etag") or etag_of(crc, st),
            last_modified=mtime_of(st),
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
            prune(os.path.dirname(meta_path), f"{self._meta_root}{os.sep}{ref.bucket}")

    @property
    def root(self) -> str:
        return self._root

    @property
    def budget(self) -> Budget:
        return self._budget
