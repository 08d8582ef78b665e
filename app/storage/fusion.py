"""The fusion layer: one entry point over the enabled backends, routing by file id.

Routers call these services and nothing else of storage. They decide what a deployment allows
(storage mode, bucket allowlist, upload policy); backends only store bytes.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from app.storage.base import (
    Backend,
    ByteRange,
    EmptyStream,
    Fetcher,
    NewObject,
    ObjectInfo,
    ObjectRef,
    ObjectStream,
    Presigner,
)
from app.storage.errors import (
    BucketNotAllowed,
    DeleteNotSupported,
    FileTooLarge,
    InvalidArgument,
    RouteNotSupported,
    StorageError,
)
from app.storage.ids import BackendName, FileId, new_key, parse_file_id
from app.storage.validation import UploadPolicy, check_file_name, check_folder, check_metadata

GENERIC_TYPE = "application/octet-stream"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Target:
    """A backend together with the buckets it may touch and where uploads go by default."""

    backend: Backend
    buckets: frozenset[str]
    """The allowlist; empty means any (FastDFS groups are chosen by the tracker)."""
    default_bucket: str
    readable: bool = True
    deletable: bool = True


@dataclass(frozen=True, slots=True)
class StoredFile:
    file_id: FileId
    info: ObjectInfo

    @property
    def name(self) -> str:
        """The original name as uploaded, else the last segment of the key."""
        return self.info.file_name or self.file_id.ref.key.rsplit("/", 1)[-1]


def content_type_for(name: str, given: str | None) -> str:
    """The client's content type, else one guessed from the name, else a generic one."""
    if given and given.split(";")[0].strip().lower() != GENERIC_TYPE:
        return given
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or given or GENERIC_TYPE


class FileService:
    """Routes ids to backends and applies the deployment's rules; the routers' only dependency."""

    def __init__(
        self,
        targets: Mapping[BackendName, Target],
        upload_to: BackendName,
        policy: UploadPolicy,
    ) -> None:
        self._targets = dict(targets)
        self._upload_to = upload_to
        self.policy = policy

    def resolve(self, raw_id: str, *, deleting: bool = False) -> tuple[FileId, Backend]:
        """Parse an id and check that this deployment may read (or delete) it."""
        file_id = parse_file_id(raw_id)
        target = self._targets.get(file_id.backend)
        if target is None or not (target.readable or deleting):
            raise RouteNotSupported(
                f"Files on {file_id.backend} are not served in this storage mode.", file_id=raw_id
            )
        if deleting and not target.deletable:
            raise DeleteNotSupported(
                f"Deleting files on {file_id.backend} is disabled.", file_id=raw_id
            )
        if target.buckets and file_id.ref.bucket not in target.buckets:
            raise BucketNotAllowed(f"Bucket {file_id.ref.bucket!r} is not allowed.", file_id=raw_id)
        return file_id, target.backend

    async def info(self, raw_id: str) -> StoredFile:
        file_id, backend = self.resolve(raw_id)
        return StoredFile(file_id, await _attributed(backend.head(file_id.ref), raw_id, backend))

    async def open(self, stored: StoredFile, byte_range: ByteRange | None) -> ObjectStream:
        """Start reading a file found by ``info``; an empty file is served without the backend."""
        if stored.info.size == 0:
            return EmptyStream()
        backend = self._targets[stored.file_id.backend].backend
        ref = stored.file_id.ref
        return await _attributed(backend.open(ref, byte_range), str(stored.file_id), backend)

    async def fetch(self, raw_id: str) -> tuple[StoredFile, ObjectStream]:
        """``info`` and ``open`` of the whole file, in one backend round trip where it can."""
        file_id, backend = self.resolve(raw_id)
        if not isinstance(backend, Fetcher):
            stored = await self.info(raw_id)
            return stored, await self.open(stored, None)
        info, stream = await _attributed(backend.fetch(file_id.ref), raw_id, backend)
        return StoredFile(file_id, info), stream

    async def presign(
        self, stored: StoredFile, expires_in: int, *, content_disposition: str, content_type: str
    ) -> str:
        """A URL the file's own storage serves; ``InvalidArgument`` where there is none (not S3)."""
        backend = self._targets[stored.file_id.backend].backend
        if not isinstance(backend, Presigner):
            raise InvalidArgument(
                f"Direct links exist for S3 files only, not {backend.name}.",
                file_id=str(stored.file_id),
            )
        signing = backend.presign(
            stored.file_id.ref,
            expires_in,
            content_disposition=content_disposition,
            content_type=content_type,
        )
        return await _attributed(signing, str(stored.file_id), backend)

    async def delete(self, raw_id: str) -> FileId:
        file_id, backend = self.resolve(raw_id, deleting=True)
        await _attributed(backend.delete(file_id.ref), raw_id, backend)
        return file_id

    def prepare_upload(
        self,
        file_name: str,
        *,
        folder: str | None = None,
        bucket: str | None = None,
        content_type: str | None = None,
        metadata: Mapping[str, object] | None = None,
        size: int | None = None,
    ) -> tuple[FileId, NewObject]:
        """Validate everything known before the first byte, and choose the new file's id."""
        name = check_file_name(file_name)
        self.policy.check_type(name)
        clean_folder = check_folder(folder)
        target = self._targets[self._upload_to]
        if bucket and not target.buckets:
            raise InvalidArgument(f"{self._upload_to} chooses where files go: omit 'bucket'.")
        chosen = bucket or target.default_bucket
        if target.buckets and chosen not in target.buckets:
            raise BucketNotAllowed(f"Bucket {chosen!r} is not allowed.")
        ref = ObjectRef(chosen, new_key(clean_folder, name))
        new = NewObject(
            ref=ref,
            file_name=name,
            content_type=content_type_for(name, content_type),
            metadata=check_metadata(metadata or {}),
            size=size,
        )
        return FileId(self._upload_to, ref), new

    async def store(
        self, file_id: FileId, new: NewObject, body: AsyncIterable[bytes]
    ) -> StoredFile:
        """Stream ``body`` to the backend under the size limit; all of it or nothing."""
        backend = self._targets[file_id.backend].backend
        info = await _attributed(backend.put(new, self.policy.limit(body)), None, backend)
        # FastDFS names the file itself; the other backends store it where they were asked.
        return StoredFile(FileId(file_id.backend, info.ref), info)

    async def readiness(self, seconds_each: float) -> dict[str, tuple[bool, float, str | None]]:
        """Check every configured backend at once: name -> (ok, latency in ms, problem)."""

        async def probe(backend: Backend) -> tuple[bool, float, str | None]:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(seconds_each):
                    await backend.check()
            except (StorageError, TimeoutError) as exc:
                problem = exc.detail if isinstance(exc, StorageError) else "no answer in time"
                return False, (time.perf_counter() - started) * 1000, problem
            return True, (time.perf_counter() - started) * 1000, None

        names = list(self._targets)
        results = await asyncio.gather(*(probe(self._targets[n].backend) for n in names))
        return dict(zip(names, results, strict=True))

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[list[StoredFile]]:
        """Collect stored files; if the block fails, delete them again before re-raising."""
        stored: list[StoredFile] = []
        try:
            yield stored
        except BaseException:
            with anyio.CancelScope(shield=True):
                for item in stored:
                    backend = self._targets[item.file_id.backend].backend
                    try:
                        await backend.delete(item.file_id.ref)
                    except StorageError as exc:
                        log.error("batch rollback could not delete %s: %s", item.file_id, exc)
            raise


async def _attributed[T](operation: Awaitable[T], raw_id: str | None, backend: Backend) -> T:
    """Await a backend call, naming the file id and the backend on any error it raises."""
    try:
        return await operation
    except StorageError as exc:
        if exc.file_id is None:
            exc.file_id = raw_id
        if not isinstance(exc, FileTooLarge | InvalidArgument):  # the client's, not the backend's
            exc.backend = backend.name
        raise
