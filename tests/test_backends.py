"""The backend contract: every backend, through the same protocol tests (``app.storage.base``).

Local disk, S3 (real SeaweedFS, write-only writer plus read-only reader), FastDFS (the emulator,
spoken to by aiofdfs over sockets), memory, and S3 and FastDFS behind the read-through cache each
run every test here; a capability's tests run for the backends that have it (``CAN``).
"""

from __future__ import annotations

import asyncio
import json
import os
import zlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from itertools import chain
from pathlib import Path

import pytest

import tests.conftest
from app.errors import FilegateError, FileNotFound, FileTooLarge
from app.settings import Settings
from app.storage.base import (
    Backend,
    BatchDeleter,
    ByteRange,
    ChecksumReader,
    CopyNotPossible,
    Fetcher,
    Lister,
    NewObject,
    ObjectRef,
    Presigner,
    ServerCopier,
)
from app.storage.budget import Budget
from app.storage.cache import CacheStore, cached
from app.storage.fastdfs import open_fastdfs_backend
from app.storage.local import LocalBackend, open_local_backend
from app.storage.memory import MemoryBackend
from app.storage.s3 import open_s3_backend
from tests.conftest import Storage, fastdfs_settings, make_storage, s3_settings

MiB = 1024 * 1024


CAN: dict[str, set[type]] = {
    "local": {Lister, BatchDeleter, Fetcher},
    "local-sidecar": {Lister, BatchDeleter, Fetcher},
    "s3": {Lister, BatchDeleter, Fetcher, ServerCopier, Presigner, ChecksumReader},
    "fastdfs": set(),  # FastDFS cannot list, batch, copy or sign: the API's answers are tested
    "memory": {Lister, BatchDeleter, Fetcher, ServerCopier},
    "s3-cached": {Lister, BatchDeleter, Fetcher, ServerCopier, Presigner, ChecksumReader},
    "fastdfs-cached": {Fetcher},  # the cache answers head and open in one, from its entry
}
"""What each backend can do beyond ``Backend``, in one place: the tests of a capability run for
the backends that have it (``able``), and ``test_capabilities_are_as_stated`` holds each
backend to its row. What FastDFS cannot do is answered by the API (tests/test_files.py,
tests/test_folders.py: 400 for listing a FastDFS prefix, copies streamed)."""
BACKENDS = list(CAN)


def able(capability: type) -> list[str]:
    return [name for name, can in CAN.items() if capability in can]


@pytest.fixture(params=BACKENDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each backend once (hybrid mode is the S3 backend again); the local disk also with its
    records in sidecars, as on a file system without extended attributes; S3 and FastDFS also
    behind the read-through cache."""
    mode = request.param.removesuffix("-sidecar").removesuffix("-cached")
    return await make_storage(mode, request, tmp_path)


@pytest.fixture
async def backend(
    storage: Storage, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Backend]:
    budget = Budget(64 * MiB, 5)
    name = request.node.callspec.params["storage"]
    async with AsyncExitStack() as stack:
        opened: Backend
        if storage.mode == "memory":
            memory = MemoryBackend(256 * MiB)
            tests.conftest._MEMORY[:] = [memory]
            opened = memory
        elif storage.mode == "local":
            assert storage.root is not None
            if name == "local-sidecar":
                opened = LocalBackend(storage.root, budget, xattrs=False)
                await opened.check()
            else:
                settings = Settings(_env_file=None, local_root=storage.root)
                opened = await open_local_backend(settings, budget)
                assert isinstance(opened, LocalBackend) and opened.xattrs
        elif storage.backend == "fastdfs":
            assert storage.fastdfs is not None
            values = fastdfs_settings(storage.fastdfs, storage_mode="fastdfs")
            opened = await open_fastdfs_backend(Settings(_env_file=None, **values), stack, budget)
        else:
            assert storage.endpoint is not None
            settings = s3_settings(storage.endpoint, storage.bucket)
            opened = await open_s3_backend(settings, stack, budget)
        if name.endswith("-cached"):
            store = CacheStore.open(
                tmp_path / "cache", max_size=64 * MiB, max_file_size=16 * MiB, ttl=60
            )
            assert store is not None
            stack.callback(store.close)
            opened = cached(opened, store)
        yield opened


async def test_capabilities_are_as_stated(backend: Backend, request: pytest.FixtureRequest) -> None:
    name = request.node.callspec.params["storage"]
    everything = (Lister, BatchDeleter, Fetcher, ServerCopier, Presigner, ChecksumReader)
    assert {c for c in everything if isinstance(backend, c)} == CAN[name]


def new(storage: Storage, name: str = "a.bin", size: int | None = None) -> NewObject:
    return NewObject(
        ref=ObjectRef(storage.bucket, f"0123456789abcdef_{name}"),
        file_name=name,
        content_type="application/x-test",
        metadata={"author": "Jöhn"},
        size=size,
    )


async def chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(backend: Backend, ref: ObjectRef, byte_range: ByteRange | None = None) -> bytes:
    stream = await backend.open(ref, byte_range)
    try:
        return b"".join([chunk async for chunk in stream])
    finally:
        await stream.aclose()


@pytest.mark.parametrize("size", [1, 1000, 9 * MiB], ids=["1B", "1KB", "9MiB"])
async def test_put_head_open_round_trip(backend: Backend, storage: Storage, size: int) -> None:
    data = os.urandom(size)
    info = await backend.put(new(storage), chunks(data))
    assert info.size == size
    head = await backend.head(info.ref)
    assert (head.size, head.etag, head.file_name) == (size, info.etag, "a.bin")
    assert head.content_type == "application/x-test"
    assert dict(head.metadata) == {"author": "Jöhn"}
    # every backend knows the CRC-32 of what it stored (S3 multipart: as S3's own checksum)
    crc32 = head.crc32
    if crc32 is None and isinstance(backend, ChecksumReader):
        crc32 = await backend.stored_crc32(info.ref)
    assert crc32 == info.crc32 == zlib.crc32(data)
    assert await read_all(backend, info.ref) == data
    assert await read_all(backend, info.ref, ByteRange(0, 0)) == data[:1]
    assert await read_all(backend, info.ref, ByteRange(size - 1, size - 1)) == data[-1:]
    if size > 2:
        assert await read_all(backend, info.ref, ByteRange(1, size - 2)) == data[1:-1]


@pytest.mark.parametrize("storage", able(Fetcher), indirect=True)
async def test_fetch_is_head_and_open_in_one(backend: Backend, storage: Storage) -> None:
    """S3 answers a GET with everything a HEAD says, and the local disk opens, describes and
    (when small) reads a file in one thread hop; FastDFS is headed, then opened."""
    assert isinstance(backend, Fetcher)
    data = os.urandom(5000)
    info = await backend.put(new(storage), chunks(data))
    head, stream = await backend.fetch(info.ref)
    try:
        assert (head.size, head.etag, head.file_name) == (info.size, info.etag, "a.bin")
        assert b"".join([chunk async for chunk in stream]) == data
    finally:
        await stream.aclose()


async def test_missing_objects_fail_before_any_byte(backend: Backend, storage: Storage) -> None:
    if storage.backend == "fastdfs":
        missing = ObjectRef("group1", "M00/00/00/fwAAAWsFKtSATKktAAAADgWKGpg335.txt")
    else:
        missing = ObjectRef(storage.bucket, "0123456789abcdef_missing.txt")
    with pytest.raises(FileNotFound):
        await backend.head(missing)
    with pytest.raises(FileNotFound):
        await backend.open(missing)
    await backend.delete(missing)  # deleting a missing object is not an error


async def test_delete_removes_the_object(backend: Backend, storage: Storage) -> None:
    info = await backend.put(new(storage), chunks(b"gone soon"))
    await backend.delete(info.ref)
    with pytest.raises(FileNotFound):
        await backend.head(info.ref)
    await backend.delete(info.ref)
    assert await storage.keys() == []


@pytest.mark.parametrize("storage", able(BatchDeleter), indirect=True)
async def test_delete_many_removes_every_key(backend: Backend, storage: Storage) -> None:
    """Backends that delete many keys in one call (S3's DeleteObjects, the local disk's one
    thread hop; FastDFS deletes one file per request): every key goes, nested folders too, and
    a missing key is no failure."""
    assert isinstance(backend, BatchDeleter)
    keys = []
    for name in ("a.bin", "x/b.bin", "x/y/c.bin"):
        obj = new(storage, name.rsplit("/", 1)[-1])
        folder = name.rpartition("/")[0]
        ref = ObjectRef(storage.bucket, f"{folder}/{obj.ref.key}" if folder else obj.ref.key)
        keys.append((await backend.put(replace(obj, ref=ref), chunks(b"many"))).ref.key)
    failed = await backend.delete_many(storage.bucket, [*keys, "0123456789abcdef_missing.bin"])
    assert failed == {}
    assert await storage.keys() == []


@pytest.mark.parametrize("fail_after", [0, 3 * MiB, 12 * MiB])
async def test_a_failing_body_leaves_nothing(
    backend: Backend, storage: Storage, fail_after: int
) -> None:
    async def failing() -> AsyncIterator[bytes]:
        sent = 0
        while sent < fail_after:
            yield os.urandom(MiB)
            sent += MiB
        raise FileTooLarge("stop")

    with pytest.raises(FileTooLarge):
        await backend.put(new(storage, size=None), failing())
    assert await storage.keys() == []  # S3: no object and no pending multipart upload


async def test_an_empty_file(backend: Backend, storage: Storage) -> None:
    info = await backend.put(new(storage, "empty.txt"), chunks(b""))
    head = await backend.head(info.ref)
    assert (head.size, head.crc32 if head.crc32 is not None else 0) == (0, 0)


async def test_check_says_ready(backend: Backend) -> None:
    await backend.check()


async def test_a_local_files_record_lives_in_its_extended_attribute(tmp_path: Path) -> None:
    """Name, type, metadata and CRC-32 go into the file's own inode, written before the rename
    that publishes the file: no second file to create, fsync and lose."""
    root = tmp_path / "data"
    backend = await open_local_backend(Settings(_env_file=None, local_root=root), Budget(MiB, 1))
    storage = Storage("local", "local", "files", root=root)
    data = os.urandom(5000)
    info = await backend.put(new(storage, "ä.bin"), chunks(data))
    record = json.loads(os.getxattr(root / "files" / info.ref.key, "user.filegate"))
    assert record == {
        "file_name": "ä.bin",
        "content_type": "application/x-test",
        "metadata": {"author": "Jöhn"},
        "crc32": zlib.crc32(data),
    }
    assert not (root / ".filegate-meta").exists()
    assert await storage.keys() == [info.ref.key]


async def test_local_files_with_sidecars_keep_their_records(tmp_path: Path) -> None:
    """A root written where extended attributes are missing (or before records moved into them)
    is read by a backend that uses them: each file without an attribute falls back to its
    sidecar, and a delete removes the sidecar and its empty folders."""
    root = tmp_path / "data"
    storage = Storage("local", "local", "files", root=root)
    old = LocalBackend(root, Budget(MiB, 1), xattrs=False)
    await old.check()
    data = b"stored with a sidecar"
    ref = ObjectRef("files", "a/b/0123456789abcdef_old.txt")
    info = await old.put(NewObject(ref, "old.txt", "text/plain", {"k": "v"}, None), chunks(data))
    with pytest.raises(OSError):
        os.getxattr(root / "files" / ref.key, "user.filegate")
    assert await storage.keys() == [f"(record) {ref.key}.json", ref.key]

    new_backend = await open_local_backend(
        Settings(_env_file=None, local_root=root), Budget(MiB, 1)
    )
    assert isinstance(new_backend, LocalBackend) and new_backend.xattrs
    for seen in (await new_backend.head(ref), (await new_backend.fetch(ref))[0]):
        assert (seen.file_name, seen.content_type, seen.metadata, seen.crc32, seen.etag) == (
            "old.txt", "text/plain", {"k": "v"}, zlib.crc32(data), info.etag
        )  # fmt: skip
    listed = await new_backend.list_page("files", "a/b/", delimiter="/", limit=10, token=None)
    assert [(o.file_name, o.crc32) for o in listed.objects] == [("old.txt", zlib.crc32(data))]
    await new_backend.delete(ref)
    assert await storage.keys() == []
    assert list((root / ".filegate-meta" / "files").iterdir()) == []  # as the bucket keeps its own


async def test_a_local_upload_that_fails_at_its_rename_leaves_no_sidecar(tmp_path: Path) -> None:
    """With sidecars, the record is in place before the file's rename; if that rename fails
    (here: a folder already has the file's name), the upload fails and its sidecar goes too."""
    root = tmp_path / "data"
    storage = Storage("local", "local", "files", root=root)
    backend = LocalBackend(root, Budget(MiB, 1), xattrs=False)
    await backend.check()
    obj = new(storage, "taken.bin")
    (root / "files" / obj.ref.key).mkdir(parents=True)
    (root / "files" / obj.ref.key / "inside").write_bytes(b"in the way")
    with pytest.raises(FilegateError):
        await backend.put(obj, chunks(b"never stored"))
    assert await storage.keys() == [f"{obj.ref.key}/inside"]


async def put_at(backend: Backend, storage: Storage, key: str, data: bytes) -> ObjectRef:
    obj = new(storage, key.rsplit("/", 1)[-1])
    info = await backend.put(replace(obj, ref=ObjectRef(storage.bucket, key)), chunks(data))
    return info.ref


@pytest.mark.parametrize("storage", able(Lister), indirect=True)
async def test_listing_pages_through_keys_and_folders(backend: Backend, storage: Storage) -> None:
    """S3's order and paging: a page ends at ``limit`` entries; its token, or any key, starts
    the next one after it; a folder token skips the whole folder; one level or all of them."""
    assert isinstance(backend, Lister)
    keys = ["a/1_x", "a/2_x", "a/b/3_x", "b_x", "c/4_x", "d_x", "Отчёт/5_x"]
    for key in keys:
        await put_at(backend, storage, key, key.encode())

    async def pages(prefix: str, delimiter: str, limit: int) -> list[list[str]]:
        found, token = [], None
        while True:
            page = await backend.list_page(
                storage.bucket, prefix, delimiter=delimiter, limit=limit, token=token
            )
            found.append([o.ref.key for o in page.objects] + page.folders)
            if page.next_token is None:
                return found
            token = page.next_token

    top = await pages("", "/", 2)
    assert sorted(chain(*top)) == ["a/", "b_x", "c/", "d_x", "Отчёт/"]
    assert all(len(page) <= 2 for page in top)
    assert sorted(chain(*await pages("a/", "/", 1))) == ["a/1_x", "a/2_x", "a/b/"]
    assert list(chain(*await pages("", "", 3))) == sorted(keys)
    sizes = {o.ref.key: o.size for o in (await backend.list_page(
        storage.bucket, "a/", delimiter="", limit=10, token=None)).objects}  # fmt: skip
    assert sizes == {"a/1_x": 5, "a/2_x": 5, "a/b/3_x": 7}
    after_folder = await backend.list_page(storage.bucket, "", delimiter="/", limit=10, token="a/")
    assert [o.ref.key for o in after_folder.objects] + after_folder.folders == [
        "b_x", "d_x", "c/", "Отчёт/"
    ] or sorted([o.ref.key for o in after_folder.objects] + after_folder.folders) == [
        "b_x", "c/", "d_x", "Отчёт/"
    ]  # fmt: skip
    empty = await backend.list_page(storage.bucket, "zz/", delimiter="/", limit=10, token=None)
    assert (empty.objects, empty.folders, empty.next_token) == ([], [], None)


@pytest.mark.parametrize("storage", able(ServerCopier), indirect=True)
async def test_a_server_copy_has_the_bytes_and_its_own_record(
    backend: Backend, storage: Storage
) -> None:
    assert isinstance(backend, ServerCopier)
    data = os.urandom(300_000)
    source = await backend.put(new(storage, "src.bin"), chunks(data))
    target = NewObject(
        ObjectRef(storage.bucket, "copies/fedcba9876543210_Копия.bin"),
        "Копия.bin",
        "text/plain",
        {"copied": "yes"},
    )
    try:
        copy = await backend.copy_within(await backend.head(source.ref), target)
    except CopyNotPossible:  # S3 here: the write pair may not read (the service streams then)
        assert storage.backend == "s3"
        assert await storage.keys() == [source.ref.key]
        return
    assert copy.ref == target.ref and copy.size == len(data)
    head = await backend.head(target.ref)
    assert (head.file_name, head.content_type, dict(head.metadata)) == (
        "Копия.bin", "text/plain", {"copied": "yes"}
    )  # fmt: skip
    assert await read_all(backend, target.ref) == data
    await backend.delete(source.ref)
    assert await read_all(backend, target.ref) == data  # the copy stands alone
    assert await storage.keys() == [target.ref.key]


async def test_two_writers_at_once_each_store_whole(backend: Backend, storage: Storage) -> None:
    """Two uploads in flight together, interleaving chunk by chunk: each lands whole."""
    one, two = os.urandom(3 * MiB + 5), os.urandom(2 * MiB + 7)

    async def slow(data: bytes) -> AsyncIterator[bytes]:
        async for chunk in chunks(data, 256 * 1024):
            await asyncio.sleep(0)
            yield chunk

    first, second = await asyncio.gather(
        backend.put(new(storage, "same.bin", size=len(one)), slow(one)),
        backend.put(new(storage, "same.bin", size=len(two)), slow(two)),
    )
    if storage.backend != "fastdfs":  # FastDFS names files itself: never the same key
        assert first.ref == second.ref  # one key (filegate never reuses one): the last wins
        stored = await read_all(backend, first.ref)
        assert stored in (one, two)
        head = await backend.head(first.ref)
        assert head.size == len(stored) and head.crc32 in (None, zlib.crc32(stored))
        assert [k for k in await storage.keys() if not k.startswith("(record)")] == [first.ref.key]
        return
    assert await read_all(backend, first.ref) == one
    assert await read_all(backend, second.ref) == two


async def test_a_delete_during_a_read_never_yields_wrong_bytes(
    backend: Backend, storage: Storage
) -> None:
    """A reader that started before a delete either gets every byte it started to read, or an
    error: never a short or mixed body presented as complete."""
    data = os.urandom(6 * MiB)
    info = await backend.put(new(storage, "read.bin"), chunks(data))
    stream = await backend.open(info.ref)
    got = bytearray()
    try:
        iterator = aiter(stream)
        got += await anext(iterator)
        await backend.delete(info.ref)
        try:
            async for chunk in iterator:
                got += chunk
        except FilegateError:
            assert len(got) < len(data)
            return
    finally:
        await stream.aclose()
    assert bytes(got) == data
    with pytest.raises(FileNotFound):
        await backend.head(info.ref)
