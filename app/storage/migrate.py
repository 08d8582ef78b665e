"""Move one FastDFS file to S3 so that its id keeps working: the step ``filegate-client migrate``
repeats for every id of a list (docs/fastdfs.md, "Leaving FastDFS").

It is safe to repeat, and repeating it never copies a file twice:

1. A file with a record of where it went is done: only its FastDFS copy is deleted, if asked and
   still there.
2. The copy's key is derived from the FastDFS id (``<folder>/<16 hex of SHA-256(id)>_<name>``),
   so a repeat after a crash finds the copy it made. A copy there with the source's size and
   CRC-32 is kept, not made again.
3. Otherwise the bytes stream from FastDFS to S3, and S3's CRC-32 of what it stored must equal
   the CRC-32 FastDFS recorded for the file. A mismatch removes the copy, keeps the source and
   answers ``422 source_corrupt``.
4. The record is written (``If-None-Match: *``), and only then is the source deleted.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace

import anyio

from app.access import Principal
from app.errors import FileNotFound, InvalidArgument, SourceCorrupt
from app.storage.base import ChecksumReader, ObjectInfo, ObjectRef
from app.storage.ids import FileId
from app.storage.service import FileService, UploadRequest, calling
from app.storage.stored import content_type_for

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Migrated:
    file_id: FileId
    moved_from: FileId
    size: int
    crc32: int | None
    copied: bool
    """False when an earlier run had already copied (or moved) it."""
    source_deleted: bool


def migrated_key(source: FileId, folder: str, name: str) -> str:
    leaf = f"{hashlib.sha256(str(source).encode()).hexdigest()[:16]}_{name}"
    return f"{folder}/{leaf}" if folder else leaf


async def migrate(
    files: FileService,
    principal: Principal,
    source: FileId,
    *,
    bucket: str | None,
    folder: str | None,
    delete_source: bool,
) -> Migrated:
    """Copy ``source`` (a FastDFS id) to S3, verified, record where it went, and delete it from
    FastDFS if ``delete_source``; a repeat does what is left and nothing twice."""
    if source.backend != "fastdfs":
        raise InvalidArgument("Only FastDFS files are migrated.", file_id=str(source))
    if files.aliases is None or "s3" not in files.routes.targets:
        raise InvalidArgument("Migration goes to S3: use hybrid mode.", file_id=str(source))
    principal.check("read", source)
    if delete_source:
        principal.check("delete", source)
        files.routes.target(source, deleting=True)  # FASTDFS_DELETE_ENABLED, before any copy
    s3 = files.routes.targets["s3"]
    async with calling(s3, source, files.timeout):
        alias = await files.aliases.lookup(source)
    if alias is not None:
        head = await _head(files, alias.file_id)
        deleted = delete_source and await _delete_source(files, principal, source)
        size = head.size if head else 0
        return Migrated(alias.file_id, source, size, head.crc32 if head else None, False, deleted)

    original = await files.head_where(principal, source)  # on FastDFS: it has no record
    request = UploadRequest(
        original.name,
        folder=folder,
        bucket=bucket,
        content_type=content_type_for(original.name, original.info.content_type),
        metadata=dict(original.info.metadata),
        size=original.info.size,
    )
    planned, new = files.new_object(principal, request, backend="s3")
    key = migrated_key(source, planned.ref.key.rpartition("/")[0], new.file_name)
    destination = FileId("s3", ObjectRef(planned.ref.bucket, key))
    new = replace(new, ref=destination.ref)
    existing = await _head(files, destination)
    copied = not _same(existing, original.info)
    if copied:
        stream = await files.open(principal, original, None)
        try:
            async with calling(s3, None, None):
                stored = await s3.backend.put(new, stream)
        finally:
            await stream.aclose()
        if not _same(stored, original.info):
            with anyio.CancelScope(shield=True):
                await s3.backend.delete(destination.ref)
            log.error("migration of %s: the bytes read do not match its CRC-32", source)
            raise SourceCorrupt(
                f"The bytes read ({stored.size} bytes, CRC-32 {stored.crc32 or 0:08x}) do not "
                f"match what FastDFS recorded ({original.info.size} bytes, CRC-32 "
                f"{original.info.crc32 or 0:08x}): the source is kept and nothing was copied.",
                file_id=str(source),
            )
        existing = stored
    assert existing is not None
    async with calling(s3, source, files.timeout):
        alias = await files.aliases.record(source, destination)
    deleted = delete_source and await _delete_source(files, principal, source)
    return Migrated(alias.file_id, source, existing.size, existing.crc32, copied, deleted)


def _same(copy: ObjectInfo | None, original: ObjectInfo) -> bool:
    """The copy has the source's size and the CRC-32 FastDFS recorded for it."""
    if copy is None or copy.size != original.size:
        return False
    return original.crc32 is None or copy.crc32 == original.crc32


async def _head(files: FileService, file_id: FileId) -> ObjectInfo | None:
    """What S3 holds at ``file_id``, with its CRC-32 (a multipart upload's needs one more
    request), or None."""
    target = files.routes.target(file_id)
    backend = target.backend
    try:
        async with calling(target, file_id, files.timeout):
            info = await backend.head(file_id.ref)
            if info.crc32 is None and isinstance(backend, ChecksumReader):
                info = replace(info, crc32=await backend.stored_crc32(file_id.ref, info.etag))
            return info
    except FileNotFound:
        return None


async def _delete_source(files: FileService, principal: Principal, source: FileId) -> bool:
    await files.delete_moved_source(principal, source)
    return True
