"""Resumable uploads on FastDFS: appender files (docs/tus.md, "FastDFS").

- **Bytes.** Creation makes an empty appender file; it is the file once complete (an ordinary
  FastDFS file, readable by every client). A PATCH writes its body in pieces of ``PIECE`` bytes with
  ``MODIFY_FILE`` at the offset, not ``APPEND_FILE``: a PATCH sent twice writes the same bytes
  twice instead of twice the bytes, and bytes a crash left beyond the last commit are overwritten.
  A checksum mismatch, or a failure that keeps nothing, cuts the file back (``TRUNCATE_FILE``).
- **State.** In the appender's own metadata: the ``TusState`` as JSON, split over records of at
  most 256 bytes (``FilegateTusState000``…), next to the file's own records (name, type,
  metadata). The upload id is the appender's file id (base64url), so any replica finds the state.
- **Serializing PATCHes.** FastDFS has no conditional write. A PATCH takes a lease
  (``FilegateTusLock``: a token and a deadline, merged in, then read back): a live lease of
  another PATCH is ``423``. Before every piece the holder reads the lease again and writes only
  if it still names it (else ``409``), renewing it once a third of its span has passed; the commit
  checks it once more. Of two PATCHes that took the lease at the same instant, only one still sees
  its token at its first piece. For the few milliseconds left, the commit that completes the
  upload compares the CRC-32 the storage computes over the bytes with the one the commits added
  up, and on a difference starts the upload again at 0 (``409``): a completed file is never one
  whose bytes differ from what was acknowledged.
- **The sweep.** FastDFS cannot list, and nothing else is shared between replicas, so each replica
  indexes the uploads it has seen as empty files under ``LOCAL_ROOT/.filegate-tus-fastdfs/``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path

import anyio
import anyio.to_thread

from app.errors import (
    FileNotFound,
    InvalidArgument,
    OffsetMismatch,
    StorageError,
    UploadLocked,
    UploadNotFound,
)
from app.storage.base import NewObject, ObjectRef
from app.storage.crc import crc32
from app.storage.fastdfs.appender import Appender
from app.storage.fastdfs.backend import FastDFSBackend
from app.storage.fastdfs.records import (
    TUS_KEY,
    records_for,
    upload_state,
    upload_state_records,
)
from app.storage.ids import parse_file_id
from app.storage.tus.engine import Body, TusState, keeps_partial

MiB = 1024 * 1024
PIECE = 4 * MiB
"""Bytes per MODIFY_FILE: a cut PATCH keeps what reached the storage in whole pieces, and the one
being filled is written before the commit."""
LOCK_KEY = f"{TUS_KEY}Lock"
INDEX_DIR = ".filegate-tus-fastdfs"


def upload_id_of(file_id: str) -> str:
    return base64.urlsafe_b64encode(file_id.encode()).decode().rstrip("=")


def file_id_of(upload_id: str) -> str:
    """The appender's file id, if ``upload_id`` is one; else ``UploadNotFound``."""
    try:
        raw = base64.urlsafe_b64decode(upload_id + "=" * (-len(upload_id) % 4)).decode()
        file_id = parse_file_id(raw)
    except (binascii.Error, UnicodeDecodeError, InvalidArgument, ValueError) as exc:
        raise UploadNotFound("No such upload.") from exc
    if file_id.backend != "fastdfs" or upload_id_of(raw) != upload_id:
        raise UploadNotFound("No such upload.")
    return raw


def _state_records(state: TusState) -> dict[str, str]:
    return upload_state_records(asdict(state))


def _split(records: dict[str, str]) -> tuple[TusState | None, dict[str, str], str | None]:
    """The state, the file's own records, and the lease, from an appender's metadata."""
    found = upload_state(records)
    own = {k: v for k, v in records.items() if not k.startswith(TUS_KEY)}
    return (None if found is None else TusState(**found)), own, records.get(LOCK_KEY)


class FastDFSTusStore:
    def __init__(self, backend: FastDFSBackend, index_root: Path) -> None:
        self._backend = backend
        self._index = index_root / INDEX_DIR
        self.stale = 3 * (backend.deadline + PIECE / MiB)
        """Seconds after which a lease that was not renewed is abandoned: three times the
        longest a piece may take (42 s with the default ``BACKEND_TIMEOUT``)."""

    def check_id(self, upload_id: str) -> str:
        file_id_of(upload_id)
        return upload_id

    async def _remember(self, upload_id: str) -> None:
        def touch() -> None:
            self._index.mkdir(parents=True, exist_ok=True)
            (self._index / upload_id).touch()

        await anyio.to_thread.run_sync(touch)

    async def _drop(self, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await anyio.to_thread.run_sync(os.unlink, self._index / upload_id)

    async def create(self, state: TusState) -> None:
        # FastDFS names the file: the id chosen at creation is no more than a placeholder
        obj = NewObject(ObjectRef("", ""), state.file_name, state.content_type, state.metadata)
        records = records_for(obj)  # what FastDFS cannot keep is refused before anything exists
        file = await self._backend.create_appender(obj, records)
        state.file_id = f"{file.ref.bucket}/{file.ref.key}"
        state.id = upload_id_of(state.file_id)
        state.store = {"crc32": 0}
        try:
            await file.set_records({**records, **_state_records(state)})
            await self._remember(state.id)
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await file.delete()
            raise

    async def _read(self, file: Appender) -> tuple[TusState, dict[str, str], str | None]:
        state, own, lease = _split(await file.records())
        if state is None:
            raise UploadNotFound("No such upload.")
        return state, own, lease

    async def load(self, upload_id: str) -> TusState:
        file = await self._backend.appender(parse_file_id(file_id_of(upload_id)).ref)
        try:
            state, _, _ = await self._read(file)
        except UploadNotFound:
            await self._drop(upload_id)  # the sweep's index forgets what is gone
            raise
        return state

    async def _claim(
        self, state: TusState, token: str
    ) -> tuple[Appender, TusState, dict[str, str]]:
        """Take the lease on the upload, if its state is still ``state``'s."""
        file = await self._backend.appender(state.ref)
        current, own, lease = await self._read(file)
        _check_moved(current, state)
        if _live(lease, time.time()):
            raise UploadLocked("Another PATCH of this upload is in progress.")
        await file.set_records({LOCK_KEY: f"{token} {time.time() + self.stale:.3f}"}, merge=True)
        current, own, lease = await self._read(file)
        _check_moved(current, state)
        if not _names(lease, token):
            raise UploadLocked("Another PATCH of this upload is in progress.")
        return file, current, own

    async def append(self, state: TusState, body: Body) -> TusState:
        token = secrets.token_hex(8)
        await self._remember(state.id)
        budget = self._backend.budget
        held = await budget.acquire(PIECE)  # before the lease: a busy server holds no lease
        try:
            file, current, own = await self._claim(state, token)
            current.length, current.expires = state.length, state.expires
            patch = _Patch(self, file, current, own, token)
            try:
                async for chunk in body:
                    await patch.add(chunk)
            except BaseException as failure:
                with anyio.CancelScope(shield=True):
                    if keeps_partial(body, failure):
                        with contextlib.suppress(Exception):  # then only whole pieces count
                            await patch.flush()
                        await patch.commit()
                    else:
                        await patch.undo()
                raise
            with anyio.CancelScope(shield=True):
                await patch.flush()
                state = await patch.commit()
            return state
        finally:
            budget.release(held)

    async def terminate(self, state: TusState) -> None:
        file, _, _ = await self._claim(state, "terminate")
        await file.delete()
        await self._drop(state.id)

    async def forget(self, state: TusState) -> None:
        """Drop the state from a finished upload's file: the file keeps its own records."""
        file = await self._backend.appender(state.ref)
        with contextlib.suppress(FileNotFound):
            _, own, _ = _split(await file.records())
            await file.set_records(own)
        await self._drop(state.id)

    async def ids(self) -> AsyncIterator[str]:
        try:
            names = await anyio.to_thread.run_sync(os.listdir, self._index)
        except FileNotFoundError:
            return
        for name in sorted(names):
            yield name


def _names(lease: str | None, token: str) -> bool:
    return lease is not None and lease.split(" ")[0] == token


def _live(lease: str | None, now: float) -> bool:
    if not lease:
        return False
    _, _, deadline = lease.partition(" ")
    try:
        return float(deadline) > now
    except ValueError:
        return False


def _check_moved(current: TusState, state: TusState) -> None:
    if current.done or current.offset != state.offset:
        raise OffsetMismatch(
            f"The upload is at {current.offset} now (another PATCH won): HEAD, then resume."
        )


class _Patch:
    """One PATCH on FastDFS: a piece-sized buffer, written at the offset each time it fills."""

    def __init__(
        self,
        store: FastDFSTusStore,
        file: Appender,
        state: TusState,
        own: dict[str, str],
        token: str,
    ) -> None:
        self.store = store
        self.file = file
        self.state = state
        """The committed state (what this PATCH wrote is not in it yet)."""
        self.own = own
        self.token = token
        self.buffer = bytearray()
        self.written = 0
        self.crc = int(state.store.get("crc32", 0))
        self.renewed = time.time()
        """When the lease was last written (by the claim, then by ``_hold``)."""

    async def add(self, chunk: bytes | bytearray | memoryview) -> None:
        self.buffer += chunk
        if len(self.buffer) >= PIECE:
            await self.flush()
        elif time.time() - self.renewed > self.store.stale / 3:
            await self._hold()  # a slow body: keep the lease alive between pieces

    async def flush(self) -> None:
        """Write the buffer at the offset, if the lease still names this PATCH."""
        if not self.buffer:
            return
        await self._hold()
        view = memoryview(self.buffer)
        await self.file.write(self.state.offset + self.written, view)
        self.crc = crc32(view, self.crc)
        self.written += len(view)
        self.buffer = bytearray()

    async def _holds(self) -> bool:
        current, _, lease = await self.store._read(self.file)
        _check_moved(current, self.state)
        return _names(lease, self.token)

    async def _hold(self) -> None:
        """Check that the lease is still this PATCH's (before every piece), and renew it once a
        third of its span has passed."""
        if not await self._holds():
            raise OffsetMismatch("Another PATCH took this upload over: HEAD, then resume.")
        now = time.time()
        if now - self.renewed > self.store.stale / 3:
            await self.file.set_records(
                {LOCK_KEY: f"{self.token} {now + self.store.stale:.3f}"}, merge=True
            )
            self.renewed = now

    async def undo(self) -> None:
        """Nothing of this PATCH is kept: while it still holds the lease, cut the file back and
        give the lease up. A failure here is harmless: the next PATCH writes over what is left,
        and completion cuts off what lies beyond the end."""
        with contextlib.suppress(Exception):
            if not await self._holds():
                return
            if self.written:
                await self.file.truncate(self.state.offset)
            await self.file.set_records({**self.own, **_state_records(self.state)})

    async def commit(self) -> TusState:
        if not await self._holds():
            raise OffsetMismatch("Another PATCH took this upload over: HEAD, then resume.")
        state = self.state
        state.offset += self.written
        state.store = {"crc32": self.crc}
        if state.length is not None and state.offset == state.length:
            await self._complete(state)
        await self.file.set_records({**self.own, **_state_records(state)})
        return state

    async def _complete(self, state: TusState) -> None:
        """Check the bytes the storage holds against the commits, then mark the upload done."""
        size, crc = await self.file.size_and_crc32()
        if size > state.offset:  # a crash left bytes beyond the end
            await self.file.truncate(state.offset)
            size, crc = await self.file.size_and_crc32()
        if size != state.offset:
            raise StorageError(
                f"FastDFS holds {size} bytes of an upload at {state.offset}.", backend="fastdfs"
            )
        if crc != state.store["crc32"]:
            await self.file.truncate(0)
            state.offset, state.store = 0, {"crc32": 0}
            await self.file.set_records({**self.own, **_state_records(state)})
            raise OffsetMismatch(
                "The stored bytes differ from the ones acknowledged (two PATCHes raced); "
                "the upload starts again at 0: HEAD, then resume."
            )
        state.done = True
