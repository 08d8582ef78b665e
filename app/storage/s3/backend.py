"""The S3 backend (AWS S3, MinIO, SeaweedFS).

Writes and deletes use the write key pair; every read (head, get, listing, presigning) the read
pair, which is a separate least-privilege pair when one is configured. Objects are read and small
bodies written through obstore (``objects``); a body that reaches ``part_size`` becomes a multipart
upload through aioboto3, with a few parts in flight, aborted on any failure so no pending upload is
left behind.

Every file filegate stores on S3 has a known CRC-32, so a zip can store it as it is: a one-part
upload keeps it in its metadata (``filegate-crc32``); a multipart upload sends each part's CRC-32
and asks S3 for a full-object CRC-32 checksum (``ChecksumType=FULL_OBJECT``), which S3 derives
from the parts, verifies and keeps with the object.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import zlib
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
from botocore.exceptions import BotoCoreError, ClientError

from app.errors import FileTooLarge
from app.settings import Settings, reveal
from app.storage.base import (
    ByteRange,
    Chunk,
    Loaded,
    NewObject,
    ObjectInfo,
    ObjectRef,
    ObjectStream,
)
from app.storage.budget import Budget, BufferPool, Held
from app.storage.s3 import metadata
from app.storage.s3.client import botocore_session, open_clients
from app.storage.s3.errors import error_code, translate_errors
from app.storage.s3.objects import ObjectClient, chain_credentials, static_credentials

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any

PART_SIZE = 8 * 1024 * 1024
PARTS_IN_FLIGHT = 2
MAX_PARTS = 10_000
"""S3's limit: with 8 MiB parts, one upload holds at most 78 GiB."""
SMALL_BODY = 256 * 1024
"""A body up to this size is sent as the chunks came, without a pooled part buffer."""
INLINE_READ = 256 * 1024
"""A GET answer this small is read whole before the response starts (served without a stream)."""


async def open_s3_backend(settings: Settings, stack: AsyncExitStack, budget: Budget) -> S3Backend:
    """The S3 backend with its clients open until ``stack`` closes."""
    session = botocore_session()
    write, read = await open_clients(settings, stack, session)

    def credentials(key_id: str | None, secret: str | None) -> Any:
        if key_id and secret:
            return static_credentials(key_id, secret)
        return chain_credentials(session.get_credentials)

    write_credentials = credentials(
        settings.s3_access_key_id, reveal(settings.s3_secret_access_key)
    )
    read_credentials = write_credentials
    if settings.s3_read_access_key_id:
        read_credentials = credentials(
            settings.s3_read_access_key_id, reveal(settings.s3_read_secret_access_key)
        )
    objects = ObjectClient(
        endpoint=settings.s3_endpoint,
        region=settings.s3_region,
        addressing_style=settings.s3_addressing_style,
        buckets=settings.allowed_s3_buckets,
        write=write_credentials,
        read=read_credentials,
    )
    backend = S3Backend(
        write,
        read,
        objects,
        BufferPool(budget, PART_SIZE),
        probe_bucket=settings.s3_default_bucket,
        multipart_checksums=settings.s3_multipart_checksum == "crc32",
    )
    if settings.s3_create_bucket:
        await backend.ensure_bucket(settings.s3_default_bucket, settings.s3_region)
    return backend


class S3Backend:
    name = "s3"

    def __init__(
        self,
        write_client: S3Client,
        read_client: S3Client,
        objects: ObjectClient,
        pool: BufferPool,
        *,
        parts_in_flight: int = PARTS_IN_FLIGHT,
        probe_bucket: str = "files",
        multipart_checksums: bool = True,
    ) -> None:
        self._write = write_client
        self._read = read_client
        self._objects = objects
        self._pool = pool
        self._budget = pool.budget
        self._probe_bucket = probe_bucket
        self._parts_in_flight = parts_in_flight
        self._checksums = multipart_checksums

    async def ensure_bucket(self, bucket: str, region: str) -> None:
        """Create ``bucket`` if ``head_bucket`` says it is missing; any other answer is an error."""
        try:
            await self._write.head_bucket(Bucket=bucket)
            return
        except ClientError as exc:
            if error_code(exc) not in {"404", "NoSuchBucket"}:
                with translate_errors(writing=True):
                    raise
        with translate_errors(writing=True):
            if region == "us-east-1":
                await self._write.create_bucket(Bucket=bucket)
            else:
                await self._write.create_bucket(
                    Bucket=bucket,
                    CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
                )

    async def put(self, obj: NewObject, body: AsyncIterable[Chunk]) -> ObjectInfo:
        chunks = aiter(body)
        async with self._budget.holding() as held:
            pieces, crc, ended = await _collect(chunks, SMALL_BODY, held)
            if ended:  # small: one PUT of the chunks as they came
                data = b"".join(pieces)
                etag = await self._objects.put(
                    obj.ref, data, obj.content_type, metadata.encode(obj, crc)
                )
                return _stored(obj, len(data), etag, crc)
            parts = _Parts(self._pool, chunks, pieces)
        try:
            first = await parts.next()
            assert first is not None
            if first.length < self._pool.size:  # the whole body fitted in one part
                etag = await self._objects.put(
                    obj.ref, first.view, obj.content_type, metadata.encode(obj, first.crc)
                )
                return _stored(obj, first.length, etag, first.crc)
            etag, size, crc32 = await self._multipart(obj, first, parts)
            return _stored(obj, size, etag, crc32)
        finally:
            parts.close()

    async def _multipart(
        self, obj: NewObject, first: _Part, parts: _Parts
    ) -> tuple[str, int, int | None]:
        """Upload the parts with a few in flight; return the ETag, size and CRC-32 stored.

        A part is sent straight from its pooled buffer (botocore and aiohttp take a memoryview
        as it is) and the buffer goes back to the pool once S3 has it."""
        ref = obj.ref
        extra: dict[str, Any] = {"ContentType": obj.content_type, "Metadata": metadata.encode(obj)}
        if self._checksums:
            extra |= {"ChecksumAlgorithm": "CRC32", "ChecksumType": "FULL_OBJECT"}
        with translate_errors(writing=True):
            created = await self._write.create_multipart_upload(
                Bucket=ref.bucket, Key=ref.key, **extra
            )
        upload_id = created["UploadId"]
        slots = asyncio.Semaphore(self._parts_in_flight)
        tasks: list[asyncio.Task[dict[str, Any]]] = []
        size = 0

        async def send(number: int, part: _Part) -> dict[str, Any]:
            try:
                checksum = {"ChecksumCRC32": _b64crc(part.crc)} if self._checksums else {}
                with translate_errors(writing=True):
                    answer = await self._write.upload_part(
                        Bucket=ref.bucket,
                        Key=ref.key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=part.view,
                        **checksum,  # type: ignore[arg-type]
                    )
                return {"PartNumber": number, "ETag": answer["ETag"], **checksum}
            finally:
                parts.give(part)
                slots.release()

        part: _Part | None = first
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
            checksum = {"ChecksumType": "FULL_OBJECT"} if self._checksums else {}
            with translate_errors(writing=True):
                answer = await self._write.complete_multipart_upload(
                    Bucket=ref.bucket,
                    Key=ref.key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": done},  # type: ignore[typeddict-item]
                    **checksum,  # type: ignore[arg-type]
                )
        except BaseException:
            for task in tasks:
                task.cancel()
            with anyio.CancelScope(shield=True):
                await self._abort(ref, upload_id, tasks)
            raise
        return answer.get("ETag", '""'), size, _crc_of(answer.get("ChecksumCRC32"))

    async def _abort(
        self, ref: ObjectRef, upload_id: str, tasks: list[asyncio.Task[dict[str, Any]]]
    ) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        # Best effort: a bucket lifecycle rule for stale uploads is the backstop.
        with contextlib.suppress(ClientError, BotoCoreError, aiohttp.ClientError, OSError):
            await self._write.abort_multipart_upload(
                Bucket=ref.bucket, Key=ref.key, UploadId=upload_id
            )

    async def head(self, ref: ObjectRef) -> ObjectInfo:
        return await self._objects.head(ref)

    async def stored_crc32(self, ref: ObjectRef) -> int | None:
        """The full-object CRC-32 S3 keeps for a multipart upload (one more request)."""
        with translate_errors():
            answer = await self._read.head_object(
                Bucket=ref.bucket, Key=ref.key, ChecksumMode="ENABLED"
            )
        if answer.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
            return None
        return _crc_of(answer.get("ChecksumCRC32"))

    async def open(self, ref: ObjectRef, byte_range: ByteRange | None = None) -> ObjectStream:
        _, stream = await self._get(ref, byte_range)
        return stream

    async def fetch(self, ref: ObjectRef) -> tuple[ObjectInfo, ObjectStream]:
        """One GET instead of HEAD + GET: a GET answer carries everything a HEAD does."""
        return await self._get(ref, None)

    async def _get(
        self, ref: ObjectRef, byte_range: ByteRange | None
    ) -> tuple[ObjectInfo, ObjectStream]:
        info, body = await self._objects.get(ref, byte_range, whole_below=INLINE_READ)
        return info, Loaded(body) if isinstance(body, bytes) else body

    async def presign(
        self, ref: ObjectRef, expires_in: int, *, content_disposition: str, content_type: str
    ) -> str:
        """Signed with the read pair, so the URL can do no more than that pair may."""
        params = {
            "Bucket": ref.bucket,
            "Key": ref.key,
            "ResponseContentDisposition": content_disposition,
            "ResponseContentType": content_type,
        }
        with translate_errors():
            url: str = await self._read.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires_in
            )
        return url

    async def delete(self, ref: ObjectRef) -> None:
        await self._objects.delete(ref)

    async def check(self) -> None:
        """``head_bucket`` on the default bucket, with the read pair."""
        with translate_errors():
            await self._read.head_bucket(Bucket=self._probe_bucket)


def _stored(obj: NewObject, size: int, etag: str, crc32: int | None) -> ObjectInfo:
    return ObjectInfo(
        ref=obj.ref,
        size=size,
        etag=etag,
        last_modified=datetime.now(UTC),
        file_name=obj.file_name,
        content_type=obj.content_type,
        storage_class="STANDARD",
        metadata=obj.metadata,
        crc32=crc32,
    )


def _b64crc(crc: int) -> str:
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


def _crc_of(value: str | None) -> int | None:
    if not value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error:
        return None
    return int.from_bytes(raw, "big") if len(raw) == 4 else None


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
        crc = zlib.crc32(chunk, crc)
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
            crc = zlib.crc32(piece, crc)
            filled += taken
            if taken < len(view):
                self._pending.appendleft(view[taken:])
        if not filled:
            self.give(_Part(buffer, 0, 0))
            return None
        return _Part(buffer, filled, crc)

    def give(self, part: _Part) -> None:
        """The part was sent (or abandoned): its buffer goes back to the pool."""
        if part.buffer in self._held:
            self._held.remove(part.buffer)
            self._pool.give(part.buffer)

    def close(self) -> None:
        for buffer in self._held:
            self._pool.give(buffer)
        self._held.clear()
