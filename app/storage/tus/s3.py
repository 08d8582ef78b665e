"""Resumable uploads on S3, with every bit of state in S3 itself (docs/tus.md, "S3").

In the default bucket, under ``.filegate-tus/`` (a prefix no file id can name):

- ``<id>.info``: the state (JSON): offset, length, the multipart upload at the file's final key
  and its recorded parts, the tail, and the lock;
- ``<id>.tail-<token>``: the tail, the bytes after the last full part (shorter than a part, since
  S3 wants at least 5 MiB in every part but the last). Each PATCH that leaves a tail writes it
  under a name of its own, and the state names the current one.

Every change of the state is a conditional write (``If-Match`` on the ETag read, ``If-None-Match:
*`` at creation): of two writers, S3 lets exactly one through. A PATCH first claims the upload by
writing a lock into the state; the loser of that write gets ``409``, and a PATCH that finds a live
lock ``423``. The holder renews the lock at least every ``STALE / 3`` seconds (each part's commit
renews it), and sends a part only within that span after a successful write; a part request is
bounded well below ``STALE``, so a lock is taken over only after its holder can no longer write a
part, and an abandoned lock (a crashed process) stops counting after ``STALE`` seconds.

Parts are recorded as they are sent (what a cut PATCH received stays received) unless the PATCH
carries a checksum: then its parts are recorded only once the whole body matched, and a mismatch
leaves the state as it was (the unrecorded parts are overwritten by the next PATCH, and never
part of the file). The final PATCH completes the multipart upload, or for a small file makes one
PUT, with its CRC-32 kept like any upload's.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from botocore.exceptions import ClientError

from app.errors import (
    FileNotFound,
    FileTooLarge,
    OffsetMismatch,
    StorageError,
    UploadLocked,
    UploadNotFound,
)
from app.storage.base import ObjectRef
from app.storage.crc import crc32
from app.storage.ids import RESERVED_FOLDER
from app.storage.s3.backend import MAX_PARTS, MiB, S3Backend
from app.storage.s3.errors import error_code, translate_errors
from app.storage.tus.engine import Body, TusState, hex_id, keeps_partial

log = logging.getLogger(__name__)
PREFIX = f"{RESERVED_FOLDER}/"
LOST = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")
"""What S3 answers a conditional write whose condition failed (or that raced another)."""


class Lost(OffsetMismatch):
    """A conditional write of the state failed: another writer changed it."""


class S3TusStore:
    check_id = staticmethod(hex_id)

    def __init__(self, backend: S3Backend, bucket: str) -> None:
        self._backend = backend
        self._s3 = backend.write_client
        self._reader = backend.read_client
        """Reads and listings use the read pair, like every read (docs/tus.md, "S3")."""
        self._bucket = bucket
        self._part = backend.pool.size
        self.stale = 3 * (backend.deadline + self._part / MiB)
        """Seconds after which a lock that was not renewed is abandoned: three times the longest
        a part request may take (54 s with the default ``BACKEND_TIMEOUT``)."""

    def _info(self, upload_id: str) -> str:
        return f"{PREFIX}{upload_id}.info"

    # state objects

    async def _read(self, upload_id: str) -> tuple[TusState, str]:
        try:
            async with self._backend.bounded():
                with translate_errors():
                    answer = await self._reader.get_object(
                        Bucket=self._bucket, Key=self._info(upload_id)
                    )
                    async with answer["Body"] as stream:
                        raw = await stream.read()
        except FileNotFound as exc:
            raise UploadNotFound("No such upload.") from exc
        return TusState.load(raw), answer["ETag"]

    async def _write(self, state: TusState, etag: str | None) -> str:
        """Replace the state if it is still ``etag`` (create it if ``None``); ``Lost`` if not."""
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        async with self._backend.bounded():
            with translate_errors(writing=True):
                try:
                    answer = await self._s3.put_object(
                        Bucket=self._bucket,
                        Key=self._info(state.id),
                        Body=state.dump(),
                        ContentType="application/json",
                        **condition,  # type: ignore[arg-type]
                    )
                except ClientError as exc:
                    if error_code(exc) in LOST:
                        raise Lost(
                            "Another request changed the upload meanwhile: HEAD, then resume."
                        ) from exc
                    raise
        etag_out: str = answer["ETag"]
        return etag_out

    async def _delete(self, key: str) -> None:
        async with self._backend.bounded():
            with translate_errors(writing=True):
                await self._s3.delete_object(Bucket=self._bucket, Key=key)

    async def _keys(self, prefix: str) -> AsyncIterator[str]:
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            async with self._backend.bounded():
                with translate_errors():
                    page = await self._reader.list_objects_v2(
                        Bucket=self._bucket,
                        Prefix=prefix,
                        **extra,  # type: ignore[arg-type]
                    )
            for item in page.get("Contents", []):
                yield item["Key"]
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    # the store

    async def create(self, state: TusState) -> None:
        if state.length is not None and state.length > MAX_PARTS * self._part:
            raise FileTooLarge(
                f"S3 takes at most {MAX_PARTS} parts of {self._part // MiB} MiB in one upload."
            )
        state.store = {"multipart": None, "parts": [], "tail": None, "lock": None}
        await self._write(state, None)

    async def load(self, upload_id: str) -> TusState:
        state, _ = await self._read(upload_id)
        return state

    async def _claim(self, state: TusState, token: str) -> tuple[TusState, str]:
        """Take the upload's lock for one PATCH (or a termination)."""
        current, etag = await self._read(state.id)
        if current.done or current.offset != state.offset:
            raise OffsetMismatch(
                f"The upload is at {current.offset} now (another PATCH won): HEAD, then resume."
            )
        lock = current.store.get("lock")
        if lock and time.time() - lock["at"] < self.stale:
            raise UploadLocked("Another PATCH of this upload is in progress.")
        current.length, current.expires = state.length, state.expires
        current.store["lock"] = {"token": token, "at": time.time()}
        return current, await self._write(current, etag)

    async def append(self, state: TusState, body: Body) -> TusState:
        token = secrets.token_hex(8)
        current, etag = await self._claim(state, token)
        patch = _Patch(self, current, etag, token, await self._backend.pool.take())
        try:
            try:
                await patch.load_tail()
                async for chunk in body:
                    await patch.add(chunk, verified=body.verified)
            except BaseException as failure:
                with anyio.CancelScope(shield=True):
                    if keeps_partial(body, failure):
                        await patch.commit(verified=False)
                    else:
                        await patch.release()
                raise
            with anyio.CancelScope(shield=True):
                state = await patch.commit(verified=body.verified)
            return state
        finally:
            self._backend.pool.give(patch.buffer)

    async def terminate(self, state: TusState) -> None:
        current, _ = await self._claim(state, "terminate")
        multipart = current.store.get("multipart")
        if multipart:
            await self._backend.abort_multipart(current.ref, multipart)
        await self.forget(current)

    async def forget(self, state: TusState) -> None:
        """The state and every tail of the upload (its own prefix); the state last, so a
        failure midway leaves something the next sweep finds."""
        info = self._info(state.id)
        async for key in self._keys(f"{PREFIX}{state.id}."):
            if key != info:
                await self._delete(key)
        await self._delete(info)

    async def ids(self) -> AsyncIterator[str]:
        async for key in self._keys(PREFIX):
            if key.endswith(".info"):
                yield key.removeprefix(PREFIX).removesuffix(".info")


class _Patch:
    """One PATCH on S3: a part-sized buffer that holds the old tail, then the body; each full
    buffer becomes a part."""

    def __init__(
        self, store: S3TusStore, state: TusState, etag: str, token: str, buffer: bytearray
    ) -> None:
        self.store = store
        self.state = state
        """The committed state (pending parts and bytes are not in it)."""
        self.etag = etag
        self.token = token
        self.buffer = buffer
        self.filled = 0
        self.crc = 0
        self.taken = 0
        """Bytes of this PATCH's body in ``pending`` parts and the buffer."""
        self.pending: list[dict[str, Any]] = []
        self.tail_used = False
        self.written_at = time.monotonic()

    @property
    def ref(self) -> ObjectRef:
        return self.state.ref

    async def load_tail(self) -> None:
        tail = self.state.store.get("tail")
        if not tail:
            return
        async with self.store._backend.bounded():
            with translate_errors():
                answer = await self.store._reader.get_object(
                    Bucket=self.store._bucket, Key=tail["key"]
                )
                async with answer["Body"] as stream:
                    data = await stream.read()
        if len(data) != tail["size"]:
            raise StorageError("The upload's stored tail is damaged.", backend="s3")
        self.buffer[: len(data)] = data
        self.filled = len(data)
        self.crc = crc32(data)

    async def add(self, chunk: bytes | memoryview, *, verified: bool) -> None:
        view = memoryview(chunk)
        while view:
            room = len(self.buffer) - self.filled
            piece = view[:room]
            self.buffer[self.filled : self.filled + len(piece)] = piece
            self.crc = crc32(piece, self.crc)
            self.filled += len(piece)
            self.taken += len(piece)
            view = view[len(piece) :]
            if self.filled == len(self.buffer):
                await self._send(self.buffer)
                if not verified:
                    await self._commit_parts()

    async def _ensure_multipart(self) -> str:
        multipart: str | None = self.state.store.get("multipart")
        if multipart is None:
            multipart = await self.store._backend.start_multipart(self.state.new_object())
            self.state.store["multipart"] = multipart
            await self._save()
        return multipart

    async def _send(self, body: bytearray | bytes) -> None:
        """Send the buffer as the next part (renewing the lock first if it is getting old)."""
        parts = self.state.store["parts"]
        number = len(parts) + len(self.pending) + 1
        if number > MAX_PARTS:
            raise FileTooLarge(f"S3 takes at most {MAX_PARTS} parts in one upload.")
        multipart = await self._ensure_multipart()
        if time.monotonic() - self.written_at > self.store.stale / 3:
            await self._save()
        part = await self.store._backend.send_part(self.ref, multipart, number, body, self.crc)
        self.pending.append({**part, "Size": len(body)})
        self.tail_used = True
        self.filled = 0
        self.crc = 0

    async def _commit_parts(self) -> None:
        """Record the pending parts and the body bytes in them."""
        in_parts = self.taken - self.filled
        self.state.store["parts"].extend(self.pending)
        self.pending.clear()
        self.state.offset += in_parts
        self.taken -= in_parts
        old_tail = self.state.store.get("tail") if self.tail_used else None
        if old_tail:
            self.state.store["tail"] = None
        await self._save()
        if old_tail:
            await self._drop(old_tail["key"])

    async def _save(self) -> None:
        self.state.store["lock"] = {"token": self.token, "at": time.time()}
        self.etag = await self.store._write(self.state, self.etag)
        self.written_at = time.monotonic()

    async def _drop(self, key: str) -> None:
        try:
            await self.store._delete(key)
        except StorageError as exc:  # the sweep removes it with the upload
            log.info("could not delete an old tail %s: %s", key, exc.detail)

    async def commit(self, *, verified: bool) -> TusState:
        """The body ended (or was cut, keeping what came): record everything, store the file if
        the upload is complete, and release the lock."""
        if self.pending:
            await self._commit_parts()
        state = self.state
        old_tail = state.store.get("tail")
        offset = state.offset + self.taken
        if state.length is not None and offset == state.length:
            await self._finish()
            state.offset, state.done = offset, True
            state.store = {"lock": None, "tail": None, "multipart": None, "parts": []}
        elif self.taken:
            tail_key = f"{PREFIX}{state.id}.tail-{self.token}"
            await self._put_tail(tail_key)
            state.offset = offset
            state.store["tail"] = {"key": tail_key, "size": self.filled}
        state.store["lock"] = None
        self.etag = await self.store._write(state, self.etag)
        if old_tail and state.store.get("tail") != old_tail:
            await self._drop(old_tail["key"])
        return state

    async def _put_tail(self, key: str) -> None:
        async with self.store._backend.bounded(self.filled / MiB):
            with translate_errors(writing=True):
                await self.store._s3.put_object(
                    Bucket=self.store._bucket,
                    Key=key,
                    Body=bytes(memoryview(self.buffer)[: self.filled]),
                )

    async def _finish(self) -> None:
        backend = self.store._backend
        multipart = self.state.store.get("multipart")
        view = memoryview(self.buffer)[: self.filled]
        if multipart is None:
            await backend.put_whole(self.state.new_object(), view, self.crc)
            return
        parts = self.state.store["parts"]
        if self.filled:
            part = await backend.send_part(self.ref, multipart, len(parts) + 1, view, self.crc)
            parts.append({**part, "Size": self.filled})
        listed = [{k: v for k, v in p.items() if k != "Size"} for p in parts]
        await backend.complete(self.ref, multipart, listed)

    async def release(self) -> None:
        """A failed PATCH that keeps nothing: drop the lock, record nothing."""
        try:
            self.state.store["lock"] = None
            await self.store._write(self.state, self.etag)
        except Exception as exc:  # the lock goes stale by itself
            log.info("could not release the lock of upload %s: %s", self.state.id, exc)
