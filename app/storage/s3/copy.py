"""S3 copies within the store: ``CopyObject``, or ``UploadPartCopy`` in parts for large
objects; ``CopyNotPossible`` where the store will not copy (the service streams the bytes)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import ClientError

from app.storage.base import CopyNotPossible, NewObject, ObjectInfo
from app.storage.s3 import metadata
from app.storage.s3.core import COPY_PART, MAX_PARTS, PARTS_IN_FLIGHT, MiB, _stored
from app.storage.s3.errors import error_code, translate_errors
from app.storage.s3.multipart import S3Uploads

log = logging.getLogger(__name__)


class S3Copies(S3Uploads):
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
