"""The S3 backend (AWS S3, MinIO, SeaweedFS) over aioboto3 clients that live for the process.

Writes and deletes go through the write client; every read (head, get) through the read client,
which is a separate least-privilege key pair when one is configured. Small bodies are sent with one
``put_object``; a body that reaches ``part_size`` becomes a multipart upload with a few parts in
flight, aborted on any failure so no pending upload is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
from botocore.exceptions import BotoCoreError, ClientError

from app.settings import Settings
from app.storage.base import ByteRange, NewObject, ObjectInfo, ObjectRef
from app.storage.s3 import metadata
from app.storage.s3.client import open_clients
from app.storage.s3.errors import error_code, translate_errors

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any

PART_SIZE = 8 * 1024 * 1024
PARTS_IN_FLIGHT = 2
READ_CHUNK = 256 * 1024


async def open_s3_backend(settings: Settings, stack: AsyncExitStack) -> S3Backend:
    """The S3 backend with its clients open until ``stack`` closes."""
    write, read = await open_clients(settings, stack)
    backend = S3Backend(write, read, probe_bucket=settings.s3_default_bucket)
    if settings.s3_create_bucket:
        await backend.ensure_bucket(settings.s3_default_bucket, settings.s3_region)
    return backend


class S3Stream:
    """The body of one GET, read chunk by chunk; closing it drops the connection."""

    def __init__(self, body: Any) -> None:
        self._body = body
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while True:
                with translate_errors():
                    chunk: bytes = await self._body.read(READ_CHUNK)
                if not chunk:
                    return
                yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._body.close()


class S3Backend:
    name = "s3"

    def __init__(
        self,
        write_client: S3Client,
        read_client: S3Client,
        *,
        part_size: int = PART_SIZE,
        parts_in_flight: int = PARTS_IN_FLIGHT,
        probe_bucket: str = "files",
    ) -> None:
        self._write = write_client
        self._read = read_client
        self._probe_bucket = probe_bucket
        self._part_size = part_size
        self._parts_in_flight = parts_in_flight

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

    async def put(self, obj: NewObject, body: AsyncIterable[bytes]) -> ObjectInfo:
        parts = _split(body, self._part_size)
        first = await anext(parts, bytearray())
        extra: dict[str, Any] = {"ContentType": obj.content_type, "Metadata": metadata.encode(obj)}
        crc32: int | None = None
        if len(first) < self._part_size:  # the whole body fitted in one part
            crc32 = await anyio.to_thread.run_sync(zlib.crc32, first)
            extra["Metadata"] = metadata.encode(obj, crc32)
            with translate_errors(writing=True):
                answer = await self._write.put_object(
                    Bucket=obj.ref.bucket, Key=obj.ref.key, Body=bytes(first), **extra
                )
            etag, size = answer["ETag"], len(first)
        else:
            chained = _prepend(first, parts)
            del first  # the chain owns it now, and drops it once it is sent
            etag, size = await self._multipart(obj.ref, chained, extra)
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

    async def _multipart(
        self, ref: ObjectRef, parts: AsyncIterator[bytearray], extra: dict[str, Any]
    ) -> tuple[str, int]:
        """Upload ``parts`` with a few in flight; return the ETag and the size stored."""
        with translate_errors(writing=True):
            created = await self._write.create_multipart_upload(
                Bucket=ref.bucket, Key=ref.key, **extra
            )
        upload_id = created["UploadId"]
        slots = asyncio.Semaphore(self._parts_in_flight)
        tasks: list[asyncio.Task[str]] = []
        size = 0

        async def send(number: int, data: bytes) -> str:
            try:
                with translate_errors(writing=True):
                    answer = await self._write.upload_part(
                        Bucket=ref.bucket,
                        Key=ref.key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=data,
                    )
                return answer["ETag"]
            finally:
                slots.release()

        try:
            while True:
                await slots.acquire()  # read on only when a part may be sent: backpressure
                for task in tasks:
                    if task.done():
                        task.result()  # a failed part stops the upload now
                data = await anext(parts, None)
                if not data:
                    slots.release()
                    break
                size += len(data)
                # bytes, not the bytearray: aiohttp sends bytes without slicing a copy
                tasks.append(asyncio.create_task(send(len(tasks) + 1, bytes(data))))
                del data
            etags = await asyncio.gather(*tasks)
            with translate_errors(writing=True):
                answer = await self._write.complete_multipart_upload(
                    Bucket=ref.bucket,
                    Key=ref.key,
                    UploadId=upload_id,
                    MultipartUpload={
                        "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]
                    },
                )
        except BaseException:
            for task in tasks:
                task.cancel()
            with anyio.CancelScope(shield=True):
                await self._abort(ref, upload_id, tasks)
            raise
        return answer.get("ETag", '""'), size

    async def _abort(self, ref: ObjectRef, upload_id: str, tasks: list[asyncio.Task[str]]) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        # Best effort: a bucket lifecycle rule for stale uploads is the backstop.
        with contextlib.suppress(ClientError, BotoCoreError, aiohttp.ClientError, OSError):
            await self._write.abort_multipart_upload(
                Bucket=ref.bucket, Key=ref.key, UploadId=upload_id
            )

    async def head(self, ref: ObjectRef) -> ObjectInfo:
        with translate_errors():
            answer = await self._read.head_object(Bucket=ref.bucket, Key=ref.key)
        return metadata.object_info(ref, answer, answer["ContentLength"])

    async def open(self, ref: ObjectRef, byte_range: ByteRange | None = None) -> S3Stream:
        extra: dict[str, Any] = {}
        if byte_range is not None:
            extra["Range"] = f"bytes={byte_range.start}-{byte_range.end}"
        with translate_errors():
            answer = await self._read.get_object(Bucket=ref.bucket, Key=ref.key, **extra)
        return S3Stream(answer["Body"])

    async def fetch(self, ref: ObjectRef) -> tuple[ObjectInfo, S3Stream]:
        """One GET instead of HEAD + GET: a GET answer carries everything a HEAD does."""
        with translate_errors():
            answer = await self._read.get_object(Bucket=ref.bucket, Key=ref.key)
        return metadata.object_info(ref, answer, answer["ContentLength"]), S3Stream(answer["Body"])

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
        with translate_errors(writing=True):
            await self._write.delete_object(Bucket=ref.bucket, Key=ref.key)

    async def check(self) -> None:
        """``head_bucket`` on the default bucket, with the read pair."""
        with translate_errors():
            await self._read.head_bucket(Bucket=self._probe_bucket)


async def _split(body: AsyncIterable[bytes], size: int) -> AsyncIterator[bytearray]:
    """Re-cut a stream of chunks into parts of exactly ``size`` bytes (the last one shorter).

    The first part grows as bytes arrive, so a small file never pays for zeroing a whole part
    (that was most of the CPU time of a 4 KiB upload); later parts are filled in place in a buffer
    allocated once at full size. Parts are handed over without another copy.
    """
    part, filled = bytearray(), 0
    async for chunk in body:
        view = memoryview(chunk)
        while view:
            taken = min(size - filled, len(view))
            if filled == len(part):
                part += view[:taken]
            else:
                part[filled : filled + taken] = view[:taken]
            filled += taken
            view = view[taken:]
            if filled == size:
                yield part
                part, filled = bytearray(size), 0
    del part[filled:]
    yield part


async def _prepend(first: bytearray, rest: AsyncIterator[bytearray]) -> AsyncIterator[bytearray]:
    yield first
    del first
    async for part in rest:
        yield part
