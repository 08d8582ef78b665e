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
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
from botocore.exceptions import BotoCoreError, ClientError, UnseekableStreamError

from app.errors import BackendUnavailable, FilegateError, FileTooLarge
from app.settings import Settings, reveal
from app.storage.base import (
    ByteRange,
    Chunk,
    CopyNotPossible,
    Listing,
    Loaded,
    NewObject,
    ObjectInfo,
    ObjectRef,
    ObjectStream,
)
from app.storage.budget import Budget, BufferPool, Held
from app.storage.crc import crc32
from app.storage.ids import RESERVED_FOLDER
from app.storage.s3 import metadata
from app.storage.s3.client import (
    MAX_ATTEMPTS,
    botocore_session,
    open_clients,
    parts_are_copied,
)
from app.storage.s3.errors import (
    UNREACHABLE,
    S3Refusal,
    Trouble,
    error_code,
    refusal,
    translate_errors,
)
from app.storage.s3.objects import ObjectClient, chain_credentials, static_credentials

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any

MiB = 1024 * 1024
PART_SIZE = 8 * MiB
PARTS_IN_FLIGHT = 2
CLEANUP_RETRIES = (1, 2, 4, 8, 15, 30, 60, 60, 60)
"""Seconds between attempts to clean up a failed upload while S3 is unreachable (about 4 min)."""
CLEANUP_AGAIN = 10
"""Seconds after a successful clean-up before it is repeated once."""
COPY_PART = 1024 * MiB
"""The part size of a copy in parts (``UploadPartCopy``), at most ``S3_COPY_MAX_SIZE``."""
RESERVED = f"{RESERVED_FOLDER}/"
PAST_FOLDER = "\U0010ffff"
"""Appended to a folder to start after everything in it: the last code point, a noncharacter that
no name or folder may hold (app.text)."""
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
        timeout=settings.backend_timeout,
        idle_timeout=settings.backend_idle_timeout,
    )
    backend = S3Backend(
        write,
        read,
        objects,
        BufferPool(budget, PART_SIZE, copies=2 if parts_are_copied() else 1),
        probe_bucket=settings.s3_default_bucket,
        multipart_checksums=settings.s3_multipart_checksum == "crc32",
        timeout=settings.backend_timeout,
        copy_max=settings.s3_copy_max_size,
    )
    stack.push_async_callback(backend.close)
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
        timeout: float = 10,
        copy_max: int = 5 * 1024 * MiB,
    ) -> None:
        self._timeout = timeout
        self._copy_max = copy_max
        self._cleanup: set[asyncio.Task[None]] = set()
        self._write = write_client
        self._read = read_client
        self._objects = objects
        self._pool = pool
        self._budget = pool.budget
        self._probe_bucket = probe_bucket
        self._parts_in_flight = parts_in_flight
        self._checksums = multipart_checksums
        self._crcs = KnownCrcs()

    async def ensure_bucket(self, bucket: str, region: str) -> None:
        """Create ``bucket`` if it does not exist (with the write pair); ``S3Refusal`` if S3
        cannot be asked, or refuses."""
        try:
            await self.probe_read(bucket, client=self._write)
            return
        except S3Refusal as exc:
            if exc.kind != Trouble.NO_BUCKET:
                raise
        config = {} if region == "us-east-1" else {"LocationConstraint": region}
        try:
            async with asyncio.timeout(self._timeout):
                await self._write.create_bucket(
                    Bucket=bucket,
                    **({"CreateBucketConfiguration": config} if config else {}),  # type: ignore[arg-type]
                )
        except (ClientError, BotoCoreError, *UNREACHABLE) as exc:
            raise refusal(exc, reading=False) from exc

    async def probe_read(self, bucket: str, *, client: S3Client | None = None) -> None:
        """List one key of ``bucket`` (the read pair by default); ``S3Refusal`` if that fails.
        The answer must be S3's XML, so an endpoint that is not S3 cannot pass."""
        try:
            async with asyncio.timeout(self._timeout):
                await (client or self._read).list_objects_v2(Bucket=bucket, MaxKeys=1)
        except (ClientError, BotoCoreError, *UNREACHABLE) as exc:
            raise refusal(exc, reading=client is None) from exc

    async def probe_write(self, bucket: str, key: str) -> None:
        """Start a multipart upload at ``key`` with the write pair and abort it at once: it
        proves the pair may write there, and leaves nothing behind."""
        try:
            async with asyncio.timeout(self._timeout):
                created = await self._write.create_multipart_upload(Bucket=bucket, Key=key)
                await self._write.abort_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=created["UploadId"]
                )
        except (ClientError, BotoCoreError, *UNREACHABLE) as exc:
            raise refusal(exc, reading=False) from exc

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

    @property
    def write_client(self) -> S3Client:
        """The write pair's client (resumable uploads keep their state with it)."""
        return self._write

    @property
    def read_client(self) -> S3Client:
        """The read pair's client."""
        return self._read

    @property
    def pool(self) -> BufferPool:
        return self._pool

    @property
    def deadline(self) -> float:
        """``BACKEND_TIMEOUT``."""
        return self._timeout

    @asynccontextmanager
    async def bounded(self, extra: float = 0) -> AsyncIterator[None]:
        """``BACKEND_TIMEOUT`` (plus ``extra`` seconds) for one request made while an upload
        streams, where the service cannot bound the whole operation."""
        try:
            async with asyncio.timeout(self._timeout + extra):
                yield
        except TimeoutError as exc:
            raise BackendUnavailable(
                "S3 did not answer in time; try again later.", backend="s3"
            ) from exc

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

    async def close(self) -> None:
        """At shutdown: stop cleaning up (a lifecycle rule for stale uploads is the backstop)."""
        for task in list(self._cleanup):
            task.cancel()

    async def head(self, ref: ObjectRef) -> ObjectInfo:
        return await self._objects.head(ref)

    async def stored_crc32(self, ref: ObjectRef, etag: str | None = None) -> int | None:
        """The full-object CRC-32 S3 keeps for a multipart upload: remembered for the object
        with this ``etag`` if this process completed or asked for it before (``KnownCrcs``),
        else one more request."""
        known = self._crcs.recall(ref, etag)
        if known is not None:
            return known
        with translate_errors():
            answer = await self._read.head_object(
                Bucket=ref.bucket, Key=ref.key, ChecksumMode="ENABLED"
            )
        if answer.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
            return None
        crc = _crc_of(answer.get("ChecksumCRC32"))
        self._crcs.remember(ref, answer.get("ETag"), crc)
        return crc

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

    async def list_page(
        self, bucket: str, prefix: str, *, delimiter: str, limit: int, token: str | None
    ) -> Listing:
        """``ListObjectsV2`` with the read pair. The state of resumable uploads (a reserved
        prefix at the bucket's root) is never listed."""
        extra: dict[str, Any] = {}
        if delimiter:
            extra["Delimiter"] = delimiter
        if token:  # a folder's contents all sort before its name and U+10FFFF (app.text)
            extra["StartAfter"] = (
                token + PAST_FOLDER if token.endswith(delimiter or "\0") else token
            )
        async with self.bounded():
            with translate_errors():
                page = await self._read.list_objects_v2(
                    Bucket=bucket, Prefix=prefix, MaxKeys=limit, **extra
                )
        objects = [
            ObjectInfo(
                ref=ObjectRef(bucket, item["Key"]),
                size=item["Size"],
                etag=item["ETag"],
                last_modified=item["LastModified"],
                storage_class=item.get("StorageClass"),
            )
            for item in page.get("Contents", [])
            if not item["Key"].startswith(RESERVED)
        ]
        folders = [
            item["Prefix"]
            for item in page.get("CommonPrefixes", [])
            if not item["Prefix"].startswith(RESERVED)
        ]
        last = max(
            [item["Key"] for item in page.get("Contents", [])[-1:]]
            + [item["Prefix"] for item in page.get("CommonPrefixes", [])[-1:]],
            default=None,
        )
        return Listing(objects, folders, last if page.get("IsTruncated") else None)

    async def delete_many(self, bucket: str, keys: list[str]) -> dict[str, str]:
        """``DeleteObjects`` (at most 1000 keys) with the write pair; what S3 could not delete."""
        async with self.bounded():
            with translate_errors(writing=True):
                answer = await self._write.delete_objects(
                    Bucket=bucket,
                    Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
                )
        return {
            error["Key"]: f"{error.get('Code', 'Error')}: {error.get('Message', '')}".strip()
            for error in answer.get("Errors", [])
        }

    async def copy_within(self, source: ObjectInfo, new: NewObject) -> ObjectInfo:
        """S3 copies the bytes itself, with the write pair: ``CopyObject`` up to
        ``S3_COPY_MAX_SIZE`` (5 GiB, S3's limit), ``UploadPartCopy`` in parts above it. The copy
        gets ``new``'s name, type and metadata, and keeps the source's CRC-32 in its metadata
        (the bytes are the same). Where the store will not copy (a write pair that may not
        read, or no copy support), ``CopyNotPossible``: the service streams the bytes."""
        crc = source.crc32
        if crc is None:
            crc = await self.stored_crc32(source.ref, source.etag)
        if source.size > self._copy_max:
            etag = await self._copy_in_parts(source, new, crc)
        else:
            etag = await self._copy_whole(source, new, crc)
        log.debug(
            "copied s3:%s/%s to %s server-side", source.ref.bucket, source.ref.key, new.ref.key
        )
        return _stored(new, source.size, etag, crc)

    async def _copy_whole(self, source: ObjectInfo, new: NewObject, crc: int | None) -> str:
        ref = new.ref
        async with self.bounded(source.size / (64 * MiB)):
            with translate_errors(writing=True), _copy_refused():
                answer = await self._write.copy_object(
                    Bucket=ref.bucket,
                    Key=ref.key,
                    CopySource={"Bucket": source.ref.bucket, "Key": source.ref.key},
                    MetadataDirective="REPLACE",
                    ContentType=new.content_type,
                    Metadata=metadata.encode(new, crc),
                )
        return str(answer.get("CopyObjectResult", {}).get("ETag", source.etag))

    async def _copy_in_parts(self, source: ObjectInfo, new: NewObject, crc: int | None) -> str:
        """A multipart upload whose parts S3 copies from ranges of the source, a few at a time;
        aborted (and its key checked empty) on any failure, so no partial copy is left."""
        ref = new.ref
        part_size = max(min(self._copy_max, COPY_PART), -(-source.size // MAX_PARTS))
        async with self.bounded():
            with translate_errors(writing=True):
                created = await self._write.create_multipart_upload(
                    Bucket=ref.bucket,
                    Key=ref.key,
                    ContentType=new.content_type,
                    Metadata=metadata.encode(new, crc),
                )
        upload_id: str = created["UploadId"]
        slots = asyncio.Semaphore(PARTS_IN_FLIGHT)

        async def copy_part(number: int, start: int) -> dict[str, Any]:
            end = min(start + part_size, source.size) - 1
            async with slots, self.bounded((end + 1 - start) / (64 * MiB)):
                with translate_errors(writing=True), _copy_refused():
                    answer = await self._write.upload_part_copy(
                        Bucket=ref.bucket,
                        Key=ref.key,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource={"Bucket": source.ref.bucket, "Key": source.ref.key},
                        CopySourceRange=f"bytes={start}-{end}",
                    )
            return {"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]}

        starts = range(0, source.size, part_size)
        tasks = [asyncio.create_task(copy_part(n, start)) for n, start in enumerate(starts, 1)]
        completing = False
        try:
            done = await asyncio.gather(*tasks)
            completing = True
            etag, _ = await self.complete(ref, upload_id, done, checksums=False)
        except BaseException as failure:
            await self._abort(ref, upload_id, tasks, failure, uncertain=completing)
            raise
        return etag

    async def check(self) -> None:
        """``head_bucket`` on the default bucket, with the read pair."""
        with translate_errors():
            await self._read.head_bucket(Bucket=self._probe_bucket)


@contextmanager
def _copy_refused() -> Iterator[None]:
    """A copy S3 will not make: it reads the source with the write pair, which a write-only pair
    may not, and some S3-compatible stores do not copy at all."""
    try:
        yield
    except ClientError as exc:
        if error_code(exc) in ("AccessDenied", "NotImplemented"):
            raise CopyNotPossible(error_code(exc)) from exc
        raise


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


class KnownCrcs:
    """The full-object CRC-32s of multipart objects this process completed or looked up, by
    bucket, key and ETag (docs/performance.md, "Zips").

    S3 gives a multipart object's CRC-32 only to a HEAD or GET that asks for it, and obstore,
    which makes filegate's other object requests, cannot ask; so a zip or an info of such a file
    cost one more (aiobotocore) request, about 1 CPU-ms. An object's bytes never change without
    its ETag changing (a new upload to the same key is a new object with a new ETag), so a CRC
    known for one ETag is that object's for good. The oldest entries are forgotten first."""

    def __init__(self, size: int = 16_384) -> None:
        self._size = size
        self._known: OrderedDict[tuple[str, str, str], int] = OrderedDict()

    def remember(self, ref: ObjectRef, etag: str | None, crc: int | None) -> None:
        if not etag or crc is None:
            return
        self._known[(ref.bucket, ref.key, etag.strip('"'))] = crc
        if len(self._known) > self._size:
            self._known.popitem(last=False)

    def recall(self, ref: ObjectRef, etag: str | None) -> int | None:
        if not etag:
            return None
        key = (ref.bucket, ref.key, etag.strip('"'))
        crc = self._known.get(key)
        if crc is not None:
            self._known.move_to_end(key)
        return crc


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
        """The part was sent (or abandoned): its buffer goes back to the pool."""
        if part.buffer in self._held:
            self._held.remove(part.buffer)
            self._pool.give(part.buffer)

    def close(self) -> None:
        for buffer in self._held:
            self._pool.give(buffer)
        self._held.clear()
