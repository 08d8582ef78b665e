"""Many files at once: list a folder, summarize it, delete many ids or a whole folder, zip a folder,
copy or move a file within or across backends (docs/api.md, "Folders and many files").

Like ``FileService``, every method takes the caller first and checks its scope and places before
any backend is asked. Listings stream page by page: no operation holds more than one page of
keys (at most 1000) in memory, however large the folder.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

import anyio

from app.access import Principal, Scope
from app.errors import (
    FilegateError,
    FileTooLarge,
    InvalidArgument,
    MovedMeanwhile,
    StorageError,
)
from app.storage.base import (
    BatchDeleter,
    CopyNotPossible,
    Lister,
    ObjectInfo,
    ObjectRef,
    ServerCopier,
)
from app.storage.fusion import StorageMode, Target
from app.storage.ids import BackendName, FileId, is_valid_bucket_name, parse_file_id
from app.storage.service import FileService, UploadRequest, calling
from app.storage.stored import StoredFile, content_type_for
from app.storage.zip import Compression, ZipRequest, ZipStream
from app.text import check_text, refuse

log = logging.getLogger(__name__)

PAGE = 1000
"""Keys per backend request when a whole folder is walked (S3's own maximum)."""
SUMMARY_LIMIT = 1_000_000
"""A summary counts at most this many files, then says it stopped (``complete: false``)."""
DELETE_CONCURRENCY = 8
"""Deletes in flight at once on backends that delete one file per request."""
_GENERATED = re.compile(r"[0-9a-f]{16}_(.+)")


@dataclass(frozen=True, slots=True)
class Prefix:
    """A folder (or any key prefix) inside one bucket, in file-id form: ``s3:files/reports/``."""

    backend: BackendName
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{self.backend}:{self.bucket}/{self.key}"

    def file_id(self, key: str) -> FileId:
        return FileId(self.backend, ObjectRef(self.bucket, key))


@dataclass(slots=True)
class Page:
    files: list[StoredFile]
    folders: list[str]
    next_cursor: str | None


@dataclass(slots=True)
class Summary:
    prefix: str
    file_count: int = 0
    total_size: int = 0
    complete: bool = True


@dataclass(slots=True)
class BatchResult:
    deleted: list[str] = field(default_factory=list)
    errors: list[tuple[str, str, str]] = field(default_factory=list)
    """(file id, code, detail) of each file that could not be deleted."""


def parse_prefix(raw: str) -> Prefix:
    """``s3:<bucket>/<key prefix>`` or ``local:…``; FastDFS ids cannot name a folder."""
    backend: BackendName | None = None
    for name in ("s3", "local", "memory"):
        if raw.startswith(f"{name}:"):
            backend = name
    if backend is None:
        raise InvalidArgument(
            "A prefix is s3:<bucket>/<folder>/ or local:<bucket>/<folder>/; FastDFS cannot list."
        )
    bucket, _, key = raw.split(":", 1)[1].partition("/")
    if not is_valid_bucket_name(bucket):
        raise InvalidArgument("Malformed bucket name in the prefix.")
    if key:
        parse_file_id(f"{backend}:{bucket}/{key.rstrip('/') or 'x'}")  # the same key rules
        if "//" in key:
            raise InvalidArgument("A prefix must not contain empty segments.")
    return Prefix(backend, bucket, key)


def name_in_key(key: str) -> str:
    """The original name a generated key carries (``<16 hex>_<name>``), else the last segment."""
    leaf = key.rsplit("/", 1)[-1]
    match = _GENERATED.fullmatch(leaf)
    return match.group(1) if match else leaf


class BulkService:
    """Operations on many files; routers reach storage through it and ``FileService`` only."""

    def __init__(self, files: FileService, mode: StorageMode) -> None:
        self.files = files
        self.routes = files.routes
        self.mode = mode

    def _target(self, principal: Principal, scope: Scope, prefix: Prefix) -> Target:
        """The caller may ``scope`` everything under ``prefix``, and this mode serves it."""
        principal.check(scope, prefix.file_id(prefix.key))
        return self.routes.target(prefix.file_id(prefix.key or "x"), deleting=scope == "delete")

    def _lister(self, target: Target, prefix: Prefix) -> Lister:
        if not isinstance(target.backend, Lister):
            raise InvalidArgument(f"{target.backend.name} cannot list files.")
        return target.backend

    # listing

    async def list_files(
        self,
        principal: Principal,
        prefix: Prefix,
        *,
        delimiter: str,
        limit: int,
        cursor: str | None,
    ) -> Page:
        """One page of files (and folders, with a delimiter) under ``prefix`` (read scope)."""
        target = self._target(principal, "read", prefix)
        lister = self._lister(target, prefix)
        token = check_cursor(cursor)
        async with calling(target, None, self.files.timeout):
            page = await lister.list_page(
                prefix.bucket, prefix.key, delimiter=delimiter, limit=limit, token=token
            )
        files = [StoredFile(prefix.file_id(info.ref.key), _named(info)) for info in page.objects]
        folders = [str(prefix.file_id(folder)) for folder in page.folders]
        return Page(files, folders, page.next_token)

    async def _walk(self, target: Target, prefix: Prefix) -> AsyncIterator[list[ObjectInfo]]:
        """Every object under ``prefix``, a page at a time."""
        lister = self._lister(target, prefix)
        token: str | None = None
        while True:
            async with calling(target, None, self.files.timeout):
                page = await lister.list_page(
                    prefix.bucket, prefix.key, delimiter="", limit=PAGE, token=token
                )
            if page.objects:
                yield page.objects
            if page.next_token is None:
                return
            token = page.next_token

    async def summarize(self, principal: Principal, prefix: Prefix) -> Summary:
        """How many files, and how many bytes, lie under ``prefix`` (read scope); it stops after
        ``SUMMARY_LIMIT`` files and says so."""
        target = self._target(principal, "read", prefix)
        summary = Summary(str(prefix))
        async for objects in self._walk(target, prefix):
            summary.file_count += len(objects)
            summary.total_size += sum(info.size for info in objects)
            if summary.file_count >= SUMMARY_LIMIT:
                summary.complete = False
                break
        return summary

    # deleting

    async def batch_delete(self, principal: Principal, file_ids: Sequence[FileId]) -> BatchResult:
        """Delete many files (delete scope on each). Every id is checked before any is deleted;
        one refusal refuses the request. Missing files count as deleted."""
        if not file_ids:
            raise InvalidArgument("The list of files is empty.")
        groups: dict[tuple[str, str], list[FileId]] = {}
        asked: dict[str, str] = {}  # a moved FastDFS file is deleted where it is now
        for file_id in file_ids:
            principal.check("delete", file_id)
            where = await self.files.locate(file_id)
            self.routes.target(where, deleting=True)
            asked[str(where)] = str(file_id)
            groups.setdefault((where.backend, where.ref.bucket), []).append(where)
        result = BatchResult()
        for ids in groups.values():
            target = self.routes.target(ids[0], deleting=True)
            await self._delete(target, ids, result)
        result.deleted = [asked.get(raw, raw) for raw in result.deleted]
        result.errors = [(asked.get(raw, raw), code, detail) for raw, code, detail in result.errors]
        return result

    async def _delete(self, target: Target, ids: list[FileId], result: BatchResult) -> None:
        backend = target.backend
        if isinstance(backend, BatchDeleter):
            for start in range(0, len(ids), PAGE):
                chunk = ids[start : start + PAGE]
                try:
                    async with calling(target, None, self.files.timeout):
                        failed = await backend.delete_many(
                            chunk[0].ref.bucket, [i.ref.key for i in chunk]
                        )
                except FilegateError as exc:
                    result.errors += [(str(i), exc.code, exc.detail) for i in chunk]
                    continue
                for file_id in chunk:
                    reason = failed.get(file_id.ref.key)
                    if reason is None:
                        result.deleted.append(str(file_id))
                    else:
                        result.errors.append((str(file_id), "storage_error", reason))
            return
        slots = asyncio.Semaphore(DELETE_CONCURRENCY)

        async def one(file_id: FileId) -> None:
            async with slots:
                try:
                    async with calling(target, file_id, self.files.timeout):
                        await backend.delete(file_id.ref)
                except FilegateError as exc:
                    result.errors.append((str(file_id), exc.code, exc.detail))
                else:
                    result.deleted.append(str(file_id))

        await asyncio.gather(*(one(file_id) for file_id in ids))
        order = {str(file_id): n for n, file_id in enumerate(ids)}
        result.deleted.sort(key=lambda raw: order.get(raw, 0))

    async def delete_prefix(
        self, principal: Principal, prefix: Prefix, *, dry_run: bool
    ) -> tuple[int, bool]:
        """Delete every file under a folder (delete scope on it), page by page; never a bucket's
        root. With ``dry_run``, only count. The number of files, and whether all went."""
        if not prefix.key.endswith("/") or not prefix.key.strip("/"):
            raise InvalidArgument("The prefix must name a folder inside a bucket, ending in '/'.")
        target = self._target(principal, "delete", prefix)
        count = 0
        failures = 0
        async for objects in self._walk(target, prefix):
            count += len(objects)
            if dry_run:
                continue
            result = BatchResult()
            await self._delete(target, [prefix.file_id(info.ref.key) for info in objects], result)
            failures += len(result.errors)
            for file_id, code, detail in result.errors[:3]:
                log.warning("delete-prefix %s: %s: %s (%s)", prefix, file_id, code, detail)
        if failures:
            raise StorageError(
                f"{failures} of {count} files under {prefix} could not be deleted; "
                "the rest are gone. Try again.",
                backend=target.backend.name,
            )
        return count, not dry_run

    # zip

    async def zip_prefix(
        self, principal: Principal, prefix: Prefix, compression: Compression
    ) -> ZipStream:
        """Everything under ``prefix`` as one zip; entries are named by their folders below the
        prefix and their original names (read scope)."""
        target = self._target(principal, "read", prefix)
        limit = self.files.zip_limits.max_entries
        requests: list[ZipRequest] = []
        folder = prefix.key.rpartition("/")[0]
        async for objects in self._walk(target, prefix):
            for info in objects:
                below = info.ref.key[len(folder) :].lstrip("/")
                path, _, _ = below.rpartition("/")
                name = name_in_key(info.ref.key)
                requests.append(
                    ZipRequest(prefix.file_id(info.ref.key), f"{path}/{name}".lstrip("/"))
                )
            if len(requests) > limit:
                raise FileTooLarge(f"A zip holds at most {limit} files.")
        if not requests:
            raise InvalidArgument(f"There are no files under {prefix}.")
        return await self.files.zip(principal, requests, compression)

    # copy and move

    async def copy(
        self,
        principal: Principal,
        source: FileId,
        *,
        backend: BackendName | None,
        bucket: str | None,
        folder: str | None,
        file_name: str | None,
        move: bool,
    ) -> StoredFile:
        """Copy a file (read scope on it, write scope on the new place), or move it (delete scope
        on it too): the source is deleted only after the copy is stored, and if that fails the
        copy is removed again, so the file exists exactly once either way."""
        principal.check("read", source)
        if move:
            principal.check("delete", source)
            self.routes.target(await self.files.locate(source), deleting=True)
        destination = backend or self.routes.upload_to
        if destination not in self.routes.targets:
            raise InvalidArgument(f"{destination} is not enabled in {self.mode} mode.")
        stored = await self.files.info(principal, source)
        request = UploadRequest(
            file_name or stored.name,
            folder=folder,
            bucket=bucket,
            content_type=content_type_for(stored.name, stored.info.content_type),
            metadata=dict(stored.info.metadata),
            size=stored.info.size,
        )
        new_id, new = self.files.new_object(principal, request, backend=destination)
        target = self.routes.targets[destination]
        copier = target.backend
        copy: StoredFile | None = None
        if source.backend == destination and isinstance(copier, ServerCopier):
            try:
                async with calling(target, source, None):
                    info = await copier.copy_within(stored.info, new)
                copy = StoredFile(new_id, info)
            except CopyNotPossible as exc:
                log.info("server-side copy of %s not possible (%s): streaming it", source, exc)
                copy = None
        if copy is None:
            stream = await self.files.open(principal, stored, None)
            try:
                async with calling(target, None, None):
                    info = await target.backend.put(new, stream)
            finally:
                await stream.aclose()
            copy = StoredFile(FileId(destination, info.ref), info)
        leaving = source.backend == "fastdfs" and destination == "s3" and not stored.moved_from
        if move and leaving:
            await self._leave_fastdfs(principal, source, copy, target)
        elif move:
            try:
                await self.files.delete(principal, source)
            except BaseException:
                log.warning("move of %s: the source stayed; removing the copy", source)
                with anyio.CancelScope(shield=True):
                    await target.backend.delete(copy.file_id.ref)
                raise
        return copy

    async def _leave_fastdfs(
        self, principal: Principal, source: FileId, copy: StoredFile, target: Target
    ) -> None:
        """A FastDFS file moved to S3 keeps its id: the record of where it went is written
        before the source is deleted (docs/fastdfs.md, "Leaving FastDFS")."""
        assert self.files.aliases is not None
        try:
            async with calling(target, source, self.files.timeout):
                alias = await self.files.aliases.record(source, copy.file_id)
        except BaseException:
            log.warning("move of %s: its record was not written; removing the copy", source)
            with anyio.CancelScope(shield=True):
                await target.backend.delete(copy.file_id.ref)
            raise
        if alias.file_id != copy.file_id:  # moved meanwhile by another request: one copy stays
            with anyio.CancelScope(shield=True):
                await target.backend.delete(copy.file_id.ref)
            raise MovedMeanwhile(f"Moved meanwhile, to {alias.file_id}.", file_id=str(source))
        await self.files.delete_moved_source(principal, source)


def _named(info: ObjectInfo) -> ObjectInfo:
    if info.file_name is not None:
        return info
    return replace(info, file_name=name_in_key(info.ref.key))


MAX_CURSOR_CHARS = 1024
"""A cursor is a position (``check_cursor``), as long as the longest key."""


def check_cursor(cursor: str | None) -> str | None:
    """The key a page starts after: ``next_cursor`` of the previous page, or any text. Every
    string is a position in key order, so any cursor is served; it may not hold control
    characters, and at most ``MAX_CURSOR_CHARS`` characters (docs/api.md, "Folders")."""
    if not cursor:
        return None
    if len(cursor) > MAX_CURSOR_CHARS:
        raise refuse("cursor", f"is longer than {MAX_CURSOR_CHARS} characters")
    return check_text(cursor, "cursor", max_bytes=4 * MAX_CURSOR_CHARS)
