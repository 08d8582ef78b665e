"""Where aiofdfs's failures become filegate's errors, by the stage (tracker or storage) that
raised them: errno 2 from a storage means the file is missing, from the tracker that no storage is
alive (docs/fastdfs.md, "Errors")."""

from __future__ import annotations

import re
import struct
from typing import Literal

from aiofdfs.async_connection import AsyncConnectionError
from aiofdfs.exceptions import DataError, FDFSError

from app.errors import BackendUnavailable, FilegateError, FileNotFound, StorageError

AIOFDFS_ERRORS = (FDFSError, AsyncConnectionError, OSError, struct.error, TimeoutError, EOFError)
"""Everything aiofdfs raises: its own errors, a connection error type outside that hierarchy,
builtin socket errors, and struct.error from a short header."""
_ERRNO = re.compile(r"Error:\s*(\d+)")

Stage = Literal["tracker", "storage"]


def _errno(exc: DataError) -> int | None:
    match = _ERRNO.search(str(exc))
    return int(match.group(1)) if match else None


def translate(exc: Exception, stage: Stage) -> FilegateError:
    """Map what aiofdfs raised (one of ``AIOFDFS_ERRORS``), and at which stage, to ours."""
    if isinstance(exc, DataError):
        code = _errno(exc)
        if code == 2 and stage == "storage":
            return FileNotFound("No such file.")
        if code == 2:  # the tracker: no ACTIVE storage in the group, or no such group
            return BackendUnavailable(
                "FastDFS has no storage server available for this group.", backend="fastdfs"
            )
        if code == 28:
            return StorageError("FastDFS storage is full.", backend="fastdfs")
        if code is None:  # aiofdfs wraps socket errors met while streaming as DataError
            return BackendUnavailable(
                "FastDFS connection failed; try again later.", backend="fastdfs"
            )
        return StorageError(f"FastDFS refused the request (errno {code}).", backend="fastdfs")
    return BackendUnavailable("FastDFS is unreachable; try again later.", backend="fastdfs")
