"""S3 uploads: one PUT for a small body, a multipart upload with a few parts in flight for a
larger one, and the clean-up that leaves nothing behind when an upload fails. The steps of a
multipart upload are also what resumable uploads use (``app.storage.tus.s3``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
from botocore.exceptions import BotoCoreError, ClientError, UnseekableStreamError

from app.errors import BackendUnavailable, FilegateError, FileTooLarge
from app.storage.base import Chunk, NewObject, ObjectInfo, ObjectRef
from app.storage.budget import BufferPool, Held
from app.storage.crc import crc32
from app.storage.s3 import metadata
from app.storage.s3.client import MAX_ATTEMPTS
from app.storage.s3.core import (
    CLEANUP_AGAIN,
    CLEANUP_RETRIES,
    MAX_PARTS,
    PART_SIZE,
    SMALL_BODY,
    MiB,
    S3Core,
    _b64crc,
    _crc_of,
    _stored,
)
from app.storage.s3.errors import error_code, translate_errors

log = logging.getLogger(__name__)


class S3Uploads(S3Core):
    async def put(self, obj: NewObject, body: AsyncIterable[Chunk]) -> ObjectInfo:
        chunks = aiter(body)
        async with self._budget.holding() as held:
            pieces, crc, ended = await _collect(chunks, SMALL_BODY, held)
            if ended:  # small: one PUT of the chunks as they came
                data = b"".join(pieces)
                etag = await self.put_whole(obj, data, crc)
                return _stored(obj, len(data), etag, crc)
            parts = _Parts(self._pool, chunks, pieces)
        try:
            first = await parts.next()
            assert first is not None
            if first.length < self._pool.size:  # the whole body fitted in one part
                etag = await self.put_whole(obj, first.view, first.crc)
                return _stored(obj, first.length, etag, first.crc)
            etag, size, crc32 = await self._multipart(obj, first, parts)
            return _stored(obj, size, etag, crc32)
        finally:
            parts.close()

    async def put_whole(self, obj: NewObject, data: Chunk, crc: int) -> str:
        """One PUT; if it fails for any reason but a refusal, S3 may still store it: forget it."""
        try:
            async with self.bounded(len(data) / MiB):
                return await self._objects.put(
                    obj.ref, data, obj.content_type, metadata.encode(obj, crc)
                )
        except BaseException as exc:
            if not isinstance(exc, FilegateError) or exc.status_code >= 500:
                await self._forget(obj.ref, None, exc, uncertain=True)  # S3 may still store it
            raise

    async def _multipart(
        self, obj: NewObject, first: _Part, parts: _Parts
    ) -> tuple[str, int, int | None]:
        """Upload the parts with a few in flight; return the ETag, size and CRC-32 stored.

        A part is sent straight from its pooled buffer and the buffer goes back to the pool once
        S3 has it."""
        ref = obj.ref
        upload_id = await self.start_multipart(obj)
        slots = asyncio.Semaphore(self._parts_in_flight)
        tasks: list[asyncio.Task[dict[str, Any]]] = []
        size = 0

        async def send(number: int, part: _Part) -> dict[str, Any]:
            try:
                return await self.send_part(ref, upload_id, number, part.body, part.crc)
            finally:
                parts.give(part)
                slots.release()

        part: _Part | None = first
        completing = False
        try:
            while part is not None:
                await slots.acquire()  # read on only when a part may be sent: backpressure
                for task in tasks:
                    if task.done():
                        task.result()  # a failed part stops the upload now
                if len(tasks) == MAX_PARTS:
                    raise FileTooLarge(
                        f"S3 takes at most {MAX_PARTS} parts of {PART_SIZE // 2**20} MiB "
                        "in one upload."
                    )
                size += part.length
                tasks.append(asyncio.create_task(send(len(tasks) + 1, part)))
                part = None
                part = await parts.next()
            done = await asyncio.gather(*tasks)
            completing = True
            etag, crc32 = await self.complete(ref, upload_id, done)
        except BaseException as failure:
            await self._abort(ref, upload_id, tasks, failure, uncertain=completing)
            raise
        return etag, size, crc32

    # the steps of a multipart upload, also used by resumable uploads (app.storage.tus.s3)

    async def start_multipart(self, obj: NewObject) -> str:
        """Create a multipart upload for ``obj`` (with a full-object CRC-32); its upload id."""
        ref = obj.ref
        extra: dict[str, Any] = {"ContentType": obj.content_type, "Metadata": metadata.encode(obj)}
        if self._checksums:
            extra |= {"ChecksumAlgorithm": "CRC32", "ChecksumType": "FULL_OBJECT"}
        async with self.bounded():
            with translate_errors(writing=True):
                created = await self._write.create_multipart_upload(
                    Bucket=ref.bucket, Key=ref.key, **extra
                )
        upload_id: str = created["UploadId"]
        return upload_id

    async def send_part(
        self,
        ref: ObjectRef,
        upload_id: str,
        number: int,
        body: bytes | bytearray | memoryview,
        crc: int,
    ) -> dict[str, Any]:
        """Upload one part; what ``complete`` needs of it.

        The part goes out as a ``memoryview``, so aiohttp sends the buffer itself instead of a
        copy (docs/performance.md, "Upload parts without a copy"). botocore cannot rewind a
        memoryview to retry; when it would, it raises ``UnseekableStreamError`` after its retry
        delay, and the part is sent again here, as often as botocore would have."""
        checksum = {"ChecksumCRC32": _b64crc(crc)} if self._checksums else {}
        # a part takes longer on a slow link: the deadline allows 1 MiB/s on top
        async with self.bounded(len(body) / MiB):
            with translate_errors(writing=True):
                for attempt in range(1, MAX_ATTEMPTS + 1):
                    try:
                        answer = await self._write.upload_part(
                            Bucket=ref.bucket,
                            Key=ref.key,
                            UploadId=upload_id,
                            PartNumber=number,
                            Body=memoryview(body),
                            **checksum,  # type: ignore[arg-type]
                        )
                        break
                    except UnseekableStreamError as exc:  # botocore's retry is ours to make
                        if attempt == MAX_ATTEMPTS:
                            raise BackendUnavailable(
                                "S3 failed this part every time; try again later.", backend="s3"
                            ) from exc
        return {"PartNumber": number, "ETag": answer["ETag"], **checksum}

    async def complete(
        self,
        ref: ObjectRef,
        upload_id: str,
        parts: list[dict[str, Any]],
        *,
        checksums: bool | None = None,
    ) -> tuple[str, int | None]:
        """Complete a multipart upload; the ETag and the full-object CRC-32 S3 derived (when
        the upload was created with checksums: by default, as ``S3_MULTIPART_CHECKSUM`` says)."""
        with_checksum = self._checksums if checksums is None else checksums
        checksum = {"ChecksumType": "FULL_OBJECT"} if with_checksum else {}
        async with self.bounded():
            with translate_errors(writing=True):
                answer = await self._write.complete_multipart_upload(
                    Bucket=ref.bucket,
                    Key=ref.key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                    **checksum,  # type: ignore[arg-type]
                )
        etag, crc = answer.get("ETag", '""'), _crc_of(answer.get("ChecksumCRC32"))
        self._crcs.remember(ref, etag, crc)
        return etag, crc

    async def abort_multipart(self, ref: ObjectRef, upload_id: str) -> None:
        """Abort a multipart upload; one that is gone already is not an error."""
        async with self.bounded():
            with translate_errors(writing=True):
                try:
                    await self._write.abort_multipart_upload(
                        Bucket=ref.bucket, Key=ref.key, UploadId=upload_id
                    )
                except ClientError as exc:
                    if error_code(exc) != "NoSuchUpload":
                        raise

    async def _abort(
        self,
        ref: ObjectRef,
        upload_id: str,
        tasks: list[asyncio.Task[dict[str, Any]]],
        failure: BaseException,
        *,
        uncertain: bool,
    ) -> None:
        """A failed multipart upload: stop its parts in flight, abort it and make sure its key
        holds nothing, shielded from the cancellation that may have caused the failure."""
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._forget(ref, upload_id, failure, uncertain=uncertain)

    async def _forget(
        self,
        ref: ObjectRef,
        upload_id: str | None,
        failure: BaseException,
        *,
        uncertain: bool,
    ) -> None:
        """Make sure a failed upload leaves nothing at ``ref``: abort its multipart upload and
        delete the key now (shielded, within ``BACKEND_TIMEOUT``), unless the failure was S3
        being unreachable (not the source of a copy: then S3 is well and cleans up at once).
        Then, if that did not work, or a request S3 may still store was in flight
        (``uncertain``: a PUT or the completion), go on in the background until S3 answers, and
        once more a little later. Keys are never reused, so nothing else is hit."""
        cleaned = False
        s3_down = isinstance(failure, BackendUnavailable) and failure.backend in ("s3", None)
        if not s3_down:
            with anyio.CancelScope(shield=True):
                cleaned = await self._try_clean(ref, upload_id)
        if cleaned and not uncertain:
            return
        task = asyncio.create_task(self._clean(ref, upload_id, again=cleaned))
        self._cleanup.add(task)
        task.add_done_callback(self._cleanup.discard)

    async def _clean(self, ref: ObjectRef, upload_id: str | None, *, again: bool) -> None:
        if not again:
            for delay in CLEANUP_RETRIES:
                await asyncio.sleep(delay)
                if await self._try_clean(ref, upload_id):
                    break
            else:
                log.warning(
                    "could not clean up failed upload s3:%s/%s (multipart %s): a bucket "
                    "lifecycle rule for incomplete multipart uploads is the backstop",
                    ref.bucket,
                    ref.key,
                    upload_id,
                )
                return
        await asyncio.sleep(CLEANUP_AGAIN)  # a delayed request may land after the first one
        await self._try_clean(ref, upload_id)

    async def _try_clean(self, ref: ObjectRef, upload_id: str | None) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                if upload_id is not None:
                    try:
                        await self._write.abort_multipart_upload(
                            Bucket=ref.bucket, Key=ref.key, UploadId=upload_id
                        )
                    except ClientError as exc:
                        if error_code(exc) != "NoSuchUpload":  # gone, or completed after all
                            raise
                await self._write.delete_object(Bucket=ref.bucket, Key=ref.key)
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError):
            return False
        return True


async def _collect(
    chunks: AsyncIterator[Chunk], limit: int, held: Held
) -> tuple[list[Chunk], int, bool]:
    """The first chunks, up to ``limit`` bytes (each counted in the budget), their CRC-32, and
    whether the body ended there."""
    pieces: list[Chunk] = []
    size = crc = 0
    while size < limit:
        chunk = await anext(chunks, None)
        if chunk is None:
            return pieces, crc, True
        await held.take(len(chunk))
        pieces.append(chunk)
        size += len(chunk)
        crc = crc32(chunk, crc)
    return pieces, crc, False


@dataclass(slots=True)
class _Part:
    """One part, filled in place in a pooled buffer."""

    buffer: bytearray
    length: int
    crc: int

    @property
    def view(self) -> memoryview:
        return memoryview(self.buffer)[: self.length]

    @property
    def body(self) -> memoryview:
        """What is sent: the part in its pooled buffer, not a copy (``S3Backend.send_part``)."""
        return self.view


class _Parts:
    """Cuts the rest of a body into parts of exactly the pool's buffer size (the last one
    shorter), each filled as the chunks arrive, with its CRC-32 computed chunk by chunk."""

    def __init__(
        self, pool: BufferPool, chunks: AsyncIterator[Chunk], pending: list[Chunk]
    ) -> None:
        self._pool = pool
        self._chunks = chunks
        self._pending: deque[memoryview] = deque(memoryview(c) for c in pending)
        self._ended = False
        self._held: list[bytearray] = []

    async def next(self) -> _Part | None:
        if self._ended and not self._pending:
            return None
        buffer = await self._pool.take()
        self._held.append(buffer)
        size, filled, crc = len(buffer), 0, 0
        while filled < size:
            if not self._pending:
                chunk = await anext(self._chunks, None)
                if chunk is None:
                    self._ended = True
                    break
                self._pending.append(memoryview(chunk))
            view = self._pending.popleft()
            taken = min(size - filled, len(view))
            piece = view[:taken]
            buffer[filled : filled + taken] = piece
            crc = crc32(piece, crc)
            filled += taken
            if taken < len(view):
                self._pending.appendleft(view[taken:])
        if not filled:
            self.give(_Part(buffer, 0, 0))
            return None
        return _Part(buffer, filled, crc)

    def give(self, part: _Part) -> None:
        """The part was sent (or abandoned): its buffer goes back to the pool, once.

        Buffers are found by identity: ``in`` and ``remove`` compare a ``bytearray``'s contents,
        and a pooled buffer may still hold what another part holds now (the same file uploaded
        twice at once, or repeated bytes). Then the wrong buffer was taken off the list, given
        back twice, and two parts were filled in one buffer at once."""
        for index, held in enumerate(self._held):
            if held is part.buffer:
                del self._held[index]
                self._pool.give(held)
                return

    def close(self) -> None:
        for buffer in self._held:
            self._pool.give(buffer)
        self._held.clear()
