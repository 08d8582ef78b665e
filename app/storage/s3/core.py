"""The S3 backend's shared core: its clients, its deadline, and what every concern uses
(docs/architecture.md, "Backends"). The concerns build on it: ``multipart`` (uploads), ``copy``,
``listing``; ``backend`` puts them together with reading and deleting.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from app.errors import BackendUnavailable
from app.storage.base import NewObject, ObjectInfo, ObjectRef
from app.storage.budget import BufferPool
from app.storage.ids import RESERVED_FOLDERS
from app.storage.s3.errors import UNREACHABLE, S3Refusal, Trouble, refusal, translate_errors
from app.storage.s3.objects import ObjectClient

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
RESERVED = tuple(f"{folder}/" for folder in RESERVED_FOLDERS)
"""Never listed: filegate's own objects."""
PAST_FOLDER = "\U0010ffff"
"""Appended to a folder to start after everything in it: the last code point, a noncharacter that
no name or folder may hold (app.text)."""
MAX_PARTS = 10_000
"""S3's limit: with 8 MiB parts, one upload holds at most 78 GiB."""
SMALL_BODY = 256 * 1024
"""A body up to this size is sent as the chunks came, without a pooled part buffer."""
INLINE_READ = 256 * 1024
"""A GET answer this small is read whole before the response starts (served without a stream)."""


class S3Core:
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

    async def close(self) -> None:
        """At shutdown: stop cleaning up (a lifecycle rule for stale uploads is the backstop)."""
        for task in list(self._cleanup):
            task.cancel()

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

    async def check(self) -> None:
        """The first page of a listing of the default bucket, with the read pair, through
        obstore (a readiness probe never loads botocore's models: ``LazyClient``)."""
        await self._objects.check(self._probe_bucket)

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
            try:  # replicas starting together race to create it: another one may have won
                await self.probe_read(bucket, client=self._write)
            except S3Refusal:
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
