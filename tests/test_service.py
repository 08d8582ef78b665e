"""Authorization lives in the service: no route can reach a file without it.

Every public method of ``FileService`` is listed here with a call; a caller without the needed
scope, or outside its folders, is refused with 403 before any backend operation runs. A new
public method fails ``test_every_public_method_is_covered`` until it is added here, with proof
that it refuses such a caller.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.access import ALL_SCOPES, Principal, Scope
from app.errors import Forbidden
from app.storage.base import ByteRange, Chunk, NewObject, ObjectInfo, ObjectRef, ObjectStream
from app.storage.breaker import Breaker
from app.storage.budget import Budget
from app.storage.fusion import Routes, Target
from app.storage.ids import FileId
from app.storage.local import LocalBackend
from app.storage.service import FileService, UploadRequest
from app.storage.stored import StoredFile
from app.storage.validation import UploadPolicy
from app.storage.zip import ZipLimits, ZipRequest

OWNER = Principal("owner", ALL_SCOPES)
MiB = 1024 * 1024


class Recorder:
    """A real backend, with every operation written down (our own protocol, not an SDK)."""

    def __init__(self, inner: LocalBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[str] = []

    async def put(self, obj: NewObject, body: AsyncIterable[Chunk]) -> ObjectInfo:
        self.calls.append("put")
        return await self.inner.put(obj, body)

    async def head(self, ref: ObjectRef) -> ObjectInfo:
        self.calls.append("head")
        return await self.inner.head(ref)

    async def open(self, ref: ObjectRef, byte_range: ByteRange | None = None) -> ObjectStream:
        self.calls.append("open")
        return await self.inner.open(ref, byte_range)

    async def delete(self, ref: ObjectRef) -> None:
        self.calls.append("delete")
        await self.inner.delete(ref)

    async def check(self) -> None:
        self.calls.append("check")
        await self.inner.check()


@dataclass
class World:
    service: FileService
    backend: Recorder
    stored: StoredFile


async def body(data: bytes = b"new") -> AsyncIterator[bytes]:
    yield data


async def add_one(service: FileService, principal: Principal) -> StoredFile:
    """A form upload: the scope is checked on entry, each file's place when it arrives."""
    async with service.uploads(principal, single=False) as uploads:
        return await uploads.add(UploadRequest("x.txt"), body())


Call = Callable[[World, Principal], Awaitable[object] | object]
CALLS: dict[str, tuple[Scope, Call]] = {
    "info": ("read", lambda w, p: w.service.info(p, w.stored.file_id)),
    "open": ("read", lambda w, p: w.service.open(p, w.stored, None)),
    "fetch": ("read", lambda w, p: w.service.fetch(p, w.stored.file_id)),
    "presign": (
        "read",
        lambda w, p: w.service.presign(
            p, w.stored, 60, content_disposition="attachment", content_type="text/plain"
        ),
    ),
    "delete": ("delete", lambda w, p: w.service.delete(p, w.stored.file_id)),
    "upload": ("write", lambda w, p: w.service.upload(p, UploadRequest("x.txt"), body())),
    "new_object": ("write", lambda w, p: w.service.new_object(p, UploadRequest("x.txt"))),
    "uploads": ("write", lambda w, p: add_one(w.service, p)),
    "zip": ("read", lambda w, p: w.service.zip(p, [ZipRequest(w.stored.file_id)], "stored")),
    "head_where": ("read", lambda w, p: w.service.head_where(p, w.stored.file_id)),
    "delete_moved_source": (
        "delete",
        lambda w, p: w.service.delete_moved_source(p, w.stored.file_id),
    ),
}
UNGUARDED = {
    "readiness": "operational: it reads no file and names none",
    "locate": "says where an id lives now (a record lookup); reads and changes no file",
    "check_route": "routing only: refuses an id before anything of it is read",
}


@pytest.fixture
async def world(tmp_path: Path) -> World:
    backend = Recorder(LocalBackend(tmp_path / "data", Budget(64 * MiB, 1)))
    breaker = Breaker("local", failures=5, backoff=5)
    routes = Routes({"local": Target(backend, frozenset({"files"}), "files", breaker)}, "local")
    service = FileService(routes, UploadPolicy(), ZipLimits())
    stored = await service.upload(OWNER, UploadRequest("kept.txt", folder="team"), body(b"kept"))
    backend.calls.clear()
    return World(service, backend, stored)


async def attempt(call: Call, world: World, principal: Principal) -> Any:
    result = call(world, principal)
    return await result if inspect.isawaitable(result) else result


def test_every_public_method_is_covered() -> None:
    public = {
        name
        for name, member in inspect.getmembers(FileService, inspect.isfunction)
        if not name.startswith("_")
    }
    assert public == set(CALLS) | set(UNGUARDED)


@pytest.mark.parametrize("method", list(CALLS))
async def test_a_caller_without_the_scope_is_refused_before_any_backend_call(
    world: World, method: str
) -> None:
    needed, call = CALLS[method]
    for principal in (
        Principal("no-scope", frozenset()),
        Principal("other-scopes", ALL_SCOPES - {needed}),
        Principal("other-folder", ALL_SCOPES, folders=("elsewhere",)),
        Principal("other-bucket", ALL_SCOPES, buckets=frozenset({"archive"})),
        Principal.for_link(FileId("local", ObjectRef("files", "team/another"))),
    ):
        with pytest.raises(Forbidden):
            await attempt(call, world, principal)
    assert world.backend.calls == []


@pytest.mark.parametrize("method", [m for m in CALLS if m != "presign"])
async def test_the_owner_gets_through(world: World, method: str) -> None:
    """The refusals above are about the caller: the same calls succeed for the owner."""
    _, call = CALLS[method]
    result = await attempt(call, world, OWNER)
    if method == "new_object":  # decides the new file's id; stores nothing yet
        file_id, new = result
        assert new.file_name == "x.txt" and file_id.ref == new.ref
        return
    if isinstance(result, tuple):  # fetch: (file, stream)
        result = result[1]
    if hasattr(result, "aclose"):
        await result.aclose()
    assert world.backend.calls


async def test_a_signed_link_reads_its_own_file() -> None:
    """Signed links are principals too, limited to one file."""
    file_id = FileId("local", ObjectRef("files", "team/kept.txt"))
    Principal.for_link(file_id).check("read", file_id)
    with pytest.raises(Forbidden):
        Principal.for_link(file_id).check("delete", file_id)
