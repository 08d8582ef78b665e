"""The service: every file operation, authorized, routed and held to the deployment's rules.

Routers call these methods and nothing else of storage. Each method takes the caller (a
``Principal``) and parsed ``FileId`` values, checks the caller's scope and places first, then the
route (storage mode, bucket allowlist, switches), then the upload policy, and only then touches a
backend. So a route cannot skip authorization: it has no other way to reach a file.
(docs/architecture.md, "The service".)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from types import TracebackType

import anyio

from app.access import Principal
from app.errors import (
    BackendUnavailable,
    FilegateError,
    FileNotFound,
    InvalidArgument,
    StorageError,
)
from app.storage.aliases import Aliases
from app.storage.base import (
    ByteRange,
    ChecksumReader,
    Chunk,
    Fetcher,
    Loaded,
    NewObject,
    ObjectRef,
    ObjectStream,
    Presigner,
)
from app.storage.breaker import State
from app.storage.fusion import Routes, Target
from app.storage.ids import BackendName, FileId, new_key
from app.storage.stored import StoredFile, content_type_for
from app.storage.validation import UploadPolicy, check_file_name, check_folder, check_metadata
from app.storage.zip import Compression, ZipLimits, ZipRequest, ZipStream, check_count, plan
from app.text import check_content_type

log = logging.getLogger(__name__)


@contextmanager
def concerning(file_id: FileId | None) -> Iterator[None]:
    """Name ``file_id`` on an error that does not name a file yet (a backend knows only keys)."""
    try:
        yield
    except FilegateError as exc:
        if exc.file_id is None and file_id is not None:
            exc.file_id = str(file_id)
        raise


@asynccontextmanager
async def calling(
    target: Target, file_id: FileId | None, deadline: float | None
) -> AsyncIterator[None]:
    """Around one backend operation: fail fast while its breaker is open, give up after
    ``deadline`` seconds (retries included; None for work that streams a client's body), and
    name the file on the error."""
    with concerning(file_id):
        async with target.breaker.guard():
            if deadline is None:
                yield
                return
            try:
                async with asyncio.timeout(deadline):
                    yield
            except TimeoutError as exc:
                name = target.backend.name
                raise BackendUnavailable(
                    f"{name} did not answer within {deadline:g} s; try again later.",
                    backend=name,
                ) from exc


@dataclass(frozen=True, slots=True)
class Health:
    """One backend's readiness."""

    ok: bool
    latency_ms: float
    problem: str | None
    breaker: State


@dataclass(frozen=True, slots=True)
class UploadRequest:
    """What a client asks to store, before any of it is checked."""

    file_name: str
    folder: str | None = None
    bucket: str | None = None
    content_type: str | None = None
    metadata: Mapping[str, object] = field(default_factory=dict)
    size: int | None = None
    """The body's length when the client declared it."""


class FileService:
    """Authorizes, routes and checks every file operation (the routers' only dependency)."""

    def __init__(
        self,
        routes: Routes,
        policy: UploadPolicy,
        zip_limits: ZipLimits,
        *,
        timeout: float = 10,
        aliases: Aliases | None = None,
    ) -> None:
        self.routes = routes
        self.policy = policy
        self.zip_limits = zip_limits
        self.timeout = timeout
        """``BACKEND_TIMEOUT``: seconds a backend operation that streams no body may take."""
        self.aliases = aliases
        """Where moved FastDFS files went (with S3 enabled; ``app.storage.aliases``)."""

    async def locate(self, file_id: FileId) -> FileId:
        """Where ``file_id`` lives: a moved FastDFS file's new id, else ``file_id`` itself.
        A moved file is read where it is now, and FastDFS is not asked at all."""
        if file_id.backend != "fastdfs" or self.aliases is None:
            return file_id
        async with calling(self.routes.targets["s3"], file_id, self.timeout):
            alias = await self.aliases.lookup(file_id)
        return file_id if alias is None else alias.file_id

    async def _reading(self, file_id: FileId) -> tuple[FileId, StorageError | None]:
        """Where to read ``file_id``; with S3 failing, a FastDFS id is read on FastDFS as before
        moves existed (its outage must not stop legacy reads), and the failure is returned: if
        FastDFS then has no such file, it may have moved, so the answer is that failure, never
        a 404 (docs/fastdfs.md, "Leaving FastDFS")."""
        try:
            return await self.locate(file_id), None
        except StorageError as failure:
            if file_id.backend != "fastdfs":
                raise
            return file_id, failure

    async def delete_moved_source(self, principal: Principal, source: FileId) -> None:
        """Delete a FastDFS file whose record of where it went is written (its id now names the
        new copy, so ``delete`` would delete that)."""
        principal.check("delete", source)
        target = self.routes.target(source, deleting=True)
        async with calling(target, source, self.timeout):
            await target.backend.delete(source.ref)

    async def check_route(self, file_id: FileId) -> None:
        """``routes.target`` for the id's present home (403 before anything is read)."""
        self.routes.target((await self._reading(file_id))[0])

    async def info(
        self, principal: Principal, file_id: FileId, *, with_crc32: bool = False
    ) -> StoredFile:
        """What is known of a file (read scope). ``with_crc32``: also its CRC-32 where the
        backend keeps it apart from ``head`` (an S3 multipart upload: one more request)."""
        principal.check("read", file_id)
        where, unsure = await self._reading(file_id)
        try:
            return await self._head(file_id, where, with_crc32)
        except FileNotFound:
            if unsure is not None:
                raise unsure from None
            raise

    async def head_where(self, principal: Principal, file_id: FileId) -> StoredFile:
        """``info`` of the file at ``file_id`` itself, whether or not it was moved."""
        principal.check("read", file_id)
        return await self._head(file_id, file_id, False)

    async def _head(self, file_id: FileId, where: FileId, with_crc32: bool) -> StoredFile:
        target = self.routes.target(where)
        async with calling(target, file_id, self.timeout):
            info = await target.backend.head(where.ref)
            backend = target.backend
            if with_crc32 and info.crc32 is None and isinstance(backend, ChecksumReader):
                info = replace(info, crc32=await backend.stored_crc32(where.ref, info.etag))
        return StoredFile(where, info, file_id if where != file_id else None)

    async def open(
        self, principal: Principal, stored: StoredFile, byte_range: ByteRange | None
    ) -> ObjectStream:
        """Start reading a file found by ``info``; an empty file needs no backend."""
        principal.check("read", stored.asked_for)
        target = self.routes.target(stored.file_id)
        if stored.info.size == 0:
            return Loaded()
        async with calling(target, stored.file_id, self.timeout):
            return await target.backend.open(stored.file_id.ref, byte_range)

    async def fetch(self, principal: Principal, file_id: FileId) -> tuple[StoredFile, ObjectStream]:
        """``info`` and ``open`` of the whole file, in one backend round trip where it can."""
        principal.check("read", file_id)
        where, unsure = await self._reading(file_id)
        target = self.routes.target(where)
        backend = target.backend
        try:
            if not isinstance(backend, Fetcher):
                stored = await self._head(file_id, where, False)
                return stored, await self.open(principal, stored, None)
            async with calling(target, file_id, self.timeout):
                info, stream = await backend.fetch(where.ref)
        except FileNotFound:
            if unsure is not None:
                raise unsure from None
            raise
        return StoredFile(where, info, file_id if where != file_id else None), stream

    async def presign(
        self,
        principal: Principal,
        stored: StoredFile,
        expires_in: int,
        *,
        content_disposition: str,
        content_type: str,
    ) -> str:
        """A URL the file's own storage serves; ``InvalidArgument`` where there is none."""
        principal.check("read", stored.asked_for)
        target = self.routes.target(stored.file_id)
        backend = target.backend
        if not isinstance(backend, Presigner):
            raise InvalidArgument(
                f"Direct links exist for S3 files only, not {backend.name}.",
                file_id=str(stored.file_id),
            )
        async with calling(target, stored.file_id, self.timeout):
            return await backend.presign(
                stored.file_id.ref,
                expires_in,
                content_disposition=content_disposition,
                content_type=content_type,
            )

    async def delete(self, principal: Principal, file_id: FileId) -> None:
        """Delete a file (delete scope); one that is already gone is not an error."""
        principal.check("delete", file_id)
        where = await self.locate(file_id)
        target = self.routes.target(where, deleting=True)
        async with calling(target, file_id, self.timeout):
            await target.backend.delete(where.ref)

    def new_object(
        self, principal: Principal, request: UploadRequest, *, backend: BackendName | None = None
    ) -> tuple[FileId, NewObject]:
        """Check everything known before the first byte and choose the new file's id, on the
        upload backend unless ``backend`` is named (a copy)."""
        principal.require("write")
        name = check_file_name(request.file_name)
        self.policy.check_type(name)
        self.policy.check_declared_size(request.size)
        folder = check_folder(request.folder)
        backend_name = backend or self.routes.upload_to
        target = self.routes.targets[backend_name]
        if request.bucket and not target.buckets:
            raise InvalidArgument(f"{backend_name} chooses where files go: omit 'bucket'.")
        bucket = request.bucket or target.default_bucket
        file_id = FileId(backend_name, ObjectRef(bucket, new_key(folder, name)))
        principal.check("write", file_id)
        self.routes.target(file_id)  # the bucket allowlist
        new = NewObject(
            ref=file_id.ref,
            file_name=name,
            content_type=content_type_for(
                name, request.content_type and check_content_type(request.content_type)
            ),
            metadata=check_metadata(request.metadata),
            size=request.size,
        )
        return file_id, new

    async def upload(
        self, principal: Principal, request: UploadRequest, body: AsyncIterable[Chunk]
    ) -> StoredFile:
        """Store one file (write scope): everything is checked before the first byte is read,
        and the body is stored completely or not at all."""
        file_id, new = self.new_object(principal, request)
        target = self.routes.targets[file_id.backend]
        async with calling(target, None, None):  # the backend bounds each of its own requests
            info = await target.backend.put(new, self.policy.limit(body))
        # FastDFS names the file itself; the other backends store it where they were asked.
        return StoredFile(FileId(file_id.backend, info.ref), info)

    def uploads(
        self, principal: Principal, *, single: bool, form_length: int | None = None
    ) -> Uploads:
        """Several uploads in one request, all stored or none (``async with``)."""
        principal.require("write")
        if single:
            self.policy.check_declared_form(form_length)
        return Uploads(self, principal, single)

    async def zip(
        self, principal: Principal, requests: Sequence[ZipRequest], compression: Compression
    ) -> ZipStream:
        """Check every file of a zip before its first byte (read scope on each)."""
        check_count(len(requests), self.zip_limits)
        for request in requests:  # 403 for any of them before any file is read
            principal.check("read", request.file_id)
            await self.check_route(request.file_id)

        async def describe(file_id: FileId) -> StoredFile:
            return await self.info(principal, file_id, with_crc32=True)

        async def open_whole(stored: StoredFile) -> ObjectStream:
            return await self.open(principal, stored, None)

        entries = await plan(requests, describe, self.zip_limits)
        return ZipStream(open_whole, entries, compression)

    async def readiness(self, seconds_each: float) -> dict[str, Health]:
        """Check every enabled backend at once, each within ``seconds_each``; a backend whose
        breaker is open is not ready, whatever its check says.

        Operational, not a file operation: it needs no principal and reads no file.
        """

        async def probe(target: Target) -> Health:
            started = time.perf_counter()
            problem: str | None = None
            try:
                async with asyncio.timeout(seconds_each):
                    await target.backend.check()
            except StorageError as exc:
                problem = exc.detail
            except TimeoutError:
                problem = "no answer in time"
            state = target.breaker.state
            if problem is None and state == "open":
                problem = "it kept failing: requests are refused for a short while"
            latency = (time.perf_counter() - started) * 1000
            return Health(problem is None, latency, problem, state)

        names = list(self.routes.targets)
        results = await asyncio.gather(*(probe(self.routes.targets[n]) for n in names))
        return dict(zip(names, results, strict=True))


class Uploads:
    """Files stored by one request; if the request fails, they are deleted again."""

    def __init__(self, service: FileService, principal: Principal, single: bool) -> None:
        self._service = service
        self._principal = principal
        self._single = single
        self.stored: list[StoredFile] = []

    async def add(self, request: UploadRequest, body: AsyncIterable[Chunk]) -> StoredFile:
        if self.stored and self._single:
            raise InvalidArgument("One file per request: use /files/batch-upload.")
        self._service.policy.check_batch_count(len(self.stored) + 1)
        stored = await self._service.upload(self._principal, request, body)
        self.stored.append(stored)
        return stored

    async def __aenter__(self) -> Uploads:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            return
        with anyio.CancelScope(shield=True):
            for item in self.stored:
                backend = self._service.routes.targets[item.file_id.backend].backend
                try:
                    await backend.delete(item.file_id.ref)
                except StorageError as error:
                    log.error("batch rollback could not delete %s: %s", item.file_id, error)
