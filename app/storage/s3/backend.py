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

from contextlib import AsyncExitStack
from typing import Any

from app.settings import Settings, reveal
from app.storage.base import ByteRange, Loaded, ObjectInfo, ObjectRef, ObjectStream
from app.storage.budget import Budget, BufferPool
from app.storage.s3.client import botocore_session, open_clients, parts_are_copied
from app.storage.s3.copy import S3Copies
from app.storage.s3.core import INLINE_READ, MAX_PARTS, PART_SIZE, MiB
from app.storage.s3.errors import translate_errors
from app.storage.s3.listing import S3Listing
from app.storage.s3.objects import ObjectClient, chain_credentials, static_credentials

__all__ = ["MAX_PARTS", "MiB", "S3Backend", "open_s3_backend"]


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


class S3Backend(S3Copies, S3Listing):
    """Every S3 concern together: uploads (``multipart``), copies (``copy``), listing and batch
    deletes (``listing``), and here reading, presigning and deleting (through ``objects``)."""

    async def head(self, ref: ObjectRef) -> ObjectInfo:
        return await self._objects.head(ref)

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
