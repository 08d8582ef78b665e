"""Where moved FastDFS files live now: one small record per moved id, in S3 itself
(docs/fastdfs.md, "Leaving FastDFS").

In the default S3 bucket, ``.filegate-moved/<group>/<remote file name>`` holds JSON
``{"file_id": "s3:…", "moved_from": "group1/M00/…", "moved_at": …}``. A record is written once,
with ``If-None-Match: *``, before the FastDFS copy is deleted, and never changed or removed: a
deleted file's record points at an S3 object that is gone, so its old id answers ``404`` and
never falls back to FastDFS. Every replica reads the same records, and they outlive restarts.

A record found is kept in the process (records never change). A FastDFS id without one costs
one small S3 GET per request.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass

from botocore.exceptions import ClientError

from app.errors import FileNotFound
from app.storage.base import ObjectRef
from app.storage.ids import ALIAS_FOLDER, FileId, parse_file_id
from app.storage.s3.backend import S3Backend
from app.storage.s3.errors import error_code, translate_errors

KEPT = 100_000
"""Records kept in the process, most recently used first (about 30 MB at most)."""
_TAKEN = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


@dataclass(frozen=True, slots=True)
class Alias:
    file_id: FileId
    """Where the file lives now."""
    moved_from: FileId
    moved_at: float


class Aliases:
    def __init__(self, backend: S3Backend, bucket: str) -> None:
        self._backend = backend
        self._bucket = bucket
        self._known: OrderedDict[FileId, Alias] = OrderedDict()

    @staticmethod
    def key(old: FileId) -> str:
        return f"{ALIAS_FOLDER}/{old.ref.bucket}/{old.ref.key}"

    async def lookup(self, old: FileId) -> Alias | None:
        """The record of ``old``, or None if it was never moved."""
        known = self._known.get(old)
        if known is not None:
            self._known.move_to_end(old)
            return known
        try:  # through obstore, as every small GET: a third of aiobotocore's CPU
            _, stream = await self._backend.fetch(ObjectRef(self._bucket, self.key(old)))
        except FileNotFound:
            return None
        raw = b"".join([bytes(chunk) async for chunk in stream])
        return self._keep(old, raw)

    async def record(self, old: FileId, new: FileId) -> Alias:
        """Record that ``old`` now lives at ``new``; the record already there if another
        request recorded it first (then it names where that one put the file)."""
        body = json.dumps(
            {"file_id": str(new), "moved_from": str(old), "moved_at": time.time()},
            ensure_ascii=False,
        ).encode()
        async with self._backend.bounded():
            with translate_errors(writing=True):
                try:
                    await self._backend.write_client.put_object(
                        Bucket=self._bucket,
                        Key=self.key(old),
                        Body=body,
                        ContentType="application/json",
                        IfNoneMatch="*",
                    )
                except ClientError as exc:
                    if error_code(exc) not in _TAKEN:
                        raise
                    existing = await self.lookup(old)
                    assert existing is not None, "a record that exists and is not found"
                    return existing
        return self._keep(old, body)

    def _keep(self, old: FileId, raw: bytes) -> Alias:
        record = json.loads(raw)
        alias = Alias(parse_file_id(record["file_id"]), old, float(record["moved_at"]))
        self._known[old] = alias
        if len(self._known) > KEPT:
            self._known.popitem(last=False)
        return alias
