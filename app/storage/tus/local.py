"""Resumable uploads on the local disk (docs/tus.md, "Local disk").

Under ``LOCAL_ROOT/.filegate-tus/``: ``<id>.data``, the bytes received so far, and ``<id>.json``,
the state (the sidecar), replaced atomically. The sidecar is the truth: a PATCH first cuts the
data file back to the sidecar's offset, so bytes written but never committed (a crash) count for
nothing. The directory starts with a dot, so no bucket, listing or download ever shows it; the
file appears under its id only when complete, by a rename.

PATCHes of one upload are serialized by an exclusive ``flock`` on the data file, taken without
waiting: the loser gets ``423``. The kernel drops the lock when its process dies, so a crash
never leaves an upload locked. Every replica on the same disk sees the same locks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.to_thread

from app.errors import OffsetMismatch, UploadLocked, UploadNotFound
from app.storage.base import Chunk
from app.storage.crc import crc32
from app.storage.local import LocalBackend, fsync_dir, make_dirs, write_atomically
from app.storage.tus.engine import Body, TusState, hex_id, keeps_partial

TUS_DIR = ".filegate-tus"
WRITE_BATCH = 1024 * 1024


async def _run[T](func: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(func, *args)


class LocalTusStore:
    check_id = staticmethod(hex_id)

    def __init__(self, backend: LocalBackend) -> None:
        self._backend = backend
        self._dir = os.path.join(backend.root, TUS_DIR)

    def _paths(self, upload_id: str) -> tuple[str, str]:
        base = os.path.join(self._dir, upload_id)
        return f"{base}.json", f"{base}.data"

    async def create(self, state: TusState) -> None:
        await _run(self._create, state)

    def _create(self, state: TusState) -> None:
        made = make_dirs(self._dir)
        state_path, data_path = self._paths(state.id)
        state.store = {"crc32": 0}
        os.close(os.open(data_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        write_atomically(state_path, state.dump())
        for directory in (self._dir, *made):
            fsync_dir(directory)

    async def load(self, upload_id: str) -> TusState:
        return await _run(self._load, upload_id)

    def _load(self, upload_id: str) -> TusState:
        try:
            with open(self._paths(upload_id)[0], "rb") as file:
                return TusState.load(file.read())
        except FileNotFoundError as exc:
            raise UploadNotFound("No such upload.") from exc

    async def append(self, state: TusState, body: Body) -> TusState:
        fd = await _run(self._lock, state)
        writer = _Appender(fd, state)
        try:
            try:
                async with self._backend.budget.holding() as held:
                    batch: list[Chunk] = []
                    size = 0
                    async for chunk in body:
                        await held.take(len(chunk))
                        batch.append(chunk)
                        size += len(chunk)
                        if size >= WRITE_BATCH:
                            await _run(writer.write, batch)
                            batch, size = [], 0
                            held.release()
                            held.amount = 0
                    await _run(writer.write, batch)
            except BaseException as failure:
                if keeps_partial(body, failure) and writer.written:
                    with anyio.CancelScope(shield=True):
                        await _run(self._commit, writer, state)
                raise
            with anyio.CancelScope(shield=True):
                state = await _run(self._commit, writer, state)
            return state
        finally:
            os.close(fd)  # drops the lock

    def _lock(self, state: TusState) -> int:
        """Open and lock the data file, then check that the state did not move meanwhile."""
        data_path = self._paths(state.id)[1]
        try:
            fd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise UploadNotFound("No such upload.") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise UploadLocked("Another PATCH of this upload is in progress.") from exc
            current = self._load(state.id)
            if current.offset != state.offset or current.done:
                raise OffsetMismatch(
                    f"The upload is at {current.offset} now (another PATCH won): HEAD, then resume."
                )
            os.ftruncate(fd, state.offset)  # what a crash left beyond the last commit
            os.lseek(fd, state.offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _commit(self, writer: _Appender, state: TusState) -> TusState:
        os.fsync(writer.fd)
        state.offset += writer.written
        state.store = {"crc32": writer.crc32}
        state_path, data_path = self._paths(state.id)
        if state.length is not None and state.offset == state.length:
            self._backend.adopt(data_path, state.new_object(), writer.crc32)
            state.done = True
        write_atomically(state_path, state.dump())
        return state

    async def terminate(self, state: TusState) -> None:
        await _run(self._terminate, state.id)

    def _terminate(self, upload_id: str) -> None:
        state_path, data_path = self._paths(upload_id)
        try:
            fd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
        try:
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError as exc:
                    raise UploadLocked("A PATCH of this upload is in progress.") from exc
                os.unlink(data_path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(state_path)
        finally:
            if fd >= 0:
                os.close(fd)

    async def forget(self, state: TusState) -> None:
        await _run(self._terminate, state.id)

    async def ids(self) -> AsyncIterator[str]:
        try:
            names = await _run(os.listdir, self._dir)
        except FileNotFoundError:
            return
        for name in sorted(names):
            if name.endswith(".json"):
                yield name.removesuffix(".json")


class _Appender:
    """One PATCH's writes to the locked data file (worker threads only)."""

    def __init__(self, fd: int, state: TusState) -> None:
        self.fd = fd
        self.written = 0
        self.crc32: int = state.store.get("crc32", 0)

    def write(self, batch: list[Chunk]) -> None:
        for chunk in batch:
            view = memoryview(chunk)
            while view:
                try:
                    done = os.write(self.fd, view)
                except InterruptedError:
                    continue
                except OSError as exc:
                    if exc.errno == errno.EINTR:
                        continue
                    raise
                self.crc32 = crc32(view[:done], self.crc32)
                self.written += done
                view = view[done:]
