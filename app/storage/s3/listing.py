"""S3 listing (``ListObjectsV2``, read pair) and batch deletes (``DeleteObjects``, write pair)."""

from __future__ import annotations

from typing import Any

from app.storage.base import Listing, ObjectInfo, ObjectRef
from app.storage.s3.core import PAST_FOLDER, RESERVED, S3Core
from app.storage.s3.errors import translate_errors


class S3Listing(S3Core):
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
