"""The read-through cache (``CACHE_DIR``): what it keeps, when it lets go, and that a download
through it is the download without it (docs/architecture.md, "The read-through cache").

The backend-level tests put the cache in front of real storage (SeaweedFS, the FastDFS emulator);
the end-to-end tests run filegate as a process with and without a cache over the same bucket and
compare the answers header for header.
"""

from __future__ import annotations

import asyncio
import os
import re
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from app.errors import FileNotFound
from app.settings import Settings
from app.storage.base import Backend, ByteRange, NewObject, ObjectInfo, ObjectRef, ObjectStream
from app.storage.budget import Budget
from app.storage.cache import CacheStore, cached
from app.storage.fastdfs import open_fastdfs_backend
from app.storage.s3 import open_s3_backend
from tests.conftest import SIGNING_SECRET, created_bucket, fastdfs_settings, s3_settings
from tests.fdfs_emulator import FastDFS
from tests.servers import SeaweedFS, Service

MiB = 1024 * 1024


class Counting:
    """A backend that counts what is asked of the one it wraps (our own protocol, not an SDK)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.reads = 0
        self.heads = 0
        self.delay = 0.0
        """Seconds to wait before each chunk a read yields (a slow storage)."""

    async def put(self, obj: NewObject, body: Any) -> ObjectInfo:
        result: ObjectInfo = await self.inner.put(obj, body)
        return result

    async def head(self, ref: ObjectRef) -> ObjectInfo:
        self.heads += 1
        result: ObjectInfo = await self.inner.head(ref)
        return result

    async def open(self, ref: ObjectRef, byte_range: ByteRange | None = None) -> ObjectStream:
        self.reads += 1
        result: ObjectStream = await self.inner.open(ref, byte_range)
        return Slow(result, self.delay) if self.delay else result

    async def delete(self, ref: ObjectRef) -> None:
        await self.inner.delete(ref)

    async def check(self) -> None:
        await self.inner.check()


class CountingFetcher(Counting):
    """``Counting`` for a backend that can fetch (S3): counts the fetches too."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.fetches = 0

    async def fetch(self, ref: ObjectRef) -> tuple[ObjectInfo, ObjectStream]:
        self.fetches += 1
        result: tuple[ObjectInfo, ObjectStream] = await self.inner.fetch(ref)
        return result


class Slow:
    def __init__(self, stream: ObjectStream, delay: float) -> None:
        self.stream = stream
        self.delay = delay

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for chunk in self.stream:
            await asyncio.sleep(self.delay)
            yield chunk

    async def aclose(self) -> None:
        await self.stream.aclose()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read(stream: ObjectStream) -> bytes:
    try:
        return b"".join([bytes(chunk) async for chunk in stream])
    finally:
        await stream.aclose()


def new(bucket: str, name: str) -> NewObject:
    return NewObject(
        ObjectRef(bucket, f"{os.urandom(8).hex()}_{name}"), name, "application/x-test", {"k": "v"}
    )


@pytest.fixture(params=["s3", "fastdfs"])
async def inner(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Counting, str]]:
    """S3 (SeaweedFS) or FastDFS (the emulator), counted, and the bucket to use."""
    budget = Budget(64 * MiB, 5)
    async with AsyncExitStack() as stack:
        backend: Backend
        if request.param == "s3":
            seaweed: SeaweedFS = request.getfixturevalue("seaweed")
            bucket = await created_bucket(seaweed.endpoint)
            backend = await open_s3_backend(s3_settings(seaweed.endpoint, bucket), stack, budget)
        else:
            emulator: FastDFS = request.getfixturevalue("fastdfs")
            values = fastdfs_settings(emulator, storage_mode="fastdfs")
            backend = await open_fastdfs_backend(Settings(_env_file=None, **values), stack, budget)
            bucket = "group1"
        yield Counting(backend), bucket


@contextmanager
def store_in(tmp_path: Path, **kwargs: Any) -> Iterator[CacheStore]:
    values: dict[str, Any] = {"max_size": 64 * MiB, "max_file_size": 16 * MiB, "ttl": 60}
    values.update(kwargs)
    store = CacheStore.open(tmp_path / "cache", **values)
    assert store is not None
    yield store
    store.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CacheStore]:
    with store_in(tmp_path) as opened:
        yield opened


def entries(store: CacheStore) -> list[str]:
    return sorted(name for name in os.listdir(store.directory) if name != "lock")


@pytest.mark.parametrize("size", [1000, 3 * MiB])
async def test_many_misses_make_one_backend_read(
    inner: tuple[Counting, str], store: CacheStore, size: int
) -> None:
    backend, bucket = inner
    data = os.urandom(size)
    info = await backend.put(new(bucket, "hot.bin"), chunks(data))
    front = cached(backend, store)
    answers = await asyncio.gather(*(front.fetch(info.ref) for _ in range(20)))
    for seen, stream in answers:
        assert seen.size == size and seen.etag == info.etag
        assert await read(stream) == data
    assert backend.reads == 1  # single flight: one read of the bytes for twenty requests
    assert len(entries(store)) == 1 and store.used == size
    again = await front.open(info.ref, ByteRange(5, 604))
    assert await read(again) == data[5:605]
    assert backend.reads == 1


async def test_a_file_asked_for_once_is_not_kept(
    inner: tuple[Counting, str], store: CacheStore
) -> None:
    """A file is kept from its second request on (or when several ask at once): a file asked
    for once never costs a fill, nor pushes out one that is asked for again."""
    backend, bucket = inner
    front = cached(backend, store)
    once = await backend.put(new(bucket, "once.bin"), chunks(b"asked for once"))
    twice = await backend.put(new(bucket, "twice.bin"), chunks(b"asked for twice"))
    assert await read((await front.fetch(once.ref))[1]) == b"asked for once"
    assert (store.used, entries(store)) == (0, [])
    for _ in range(2):
        assert await read((await front.fetch(twice.ref))[1]) == b"asked for twice"
    assert store.used == len(b"asked for twice") and len(entries(store)) == 1
    reads = backend.reads
    assert await read((await front.fetch(twice.ref))[1]) == b"asked for twice"
    assert backend.reads == reads


async def test_a_first_ranged_read_asks_for_the_range_alone(
    seaweed: SeaweedFS, store: CacheStore
) -> None:
    """A range asked for the first time is not kept, so only the range is read from S3 (no GET
    of the whole file thrown away); the second time the file is kept, then served from it."""
    async with AsyncExitStack() as stack:
        bucket = await created_bucket(seaweed.endpoint)
        settings = s3_settings(seaweed.endpoint, bucket)
        backend = CountingFetcher(await open_s3_backend(settings, stack, Budget(64 * MiB, 5)))
        data = os.urandom(100_000)
        info = await backend.put(new(bucket, "ranged.bin"), chunks(data))
        front = cached(backend, store)
        part = ByteRange(1000, 1999)
        assert await read(await front.open(info.ref, part)) == data[1000:2000]
        assert (backend.fetches, backend.reads, store.used) == (0, 1, 0)
        assert await read(await front.open(info.ref, part)) == data[1000:2000]
        assert (backend.fetches, backend.reads, store.used) == (1, 1, len(data))
        assert await read(await front.open(info.ref, part)) == data[1000:2000]
        assert (backend.fetches, backend.reads) == (1, 1)


async def test_an_entry_describes_the_file_as_the_backend_does(
    inner: tuple[Counting, str], store: CacheStore
) -> None:
    backend, bucket = inner
    info = await backend.put(new(bucket, "Отчёт «Q3».pdf"), chunks(b"%PDF-1.7 " * 100))
    front = cached(backend, store)
    direct = await backend.head(info.ref)
    for _ in range(2):  # kept from the second request on
        _, stream = await front.fetch(info.ref)
        await read(stream)
    heads = backend.heads
    assert await front.head(info.ref) == direct
    assert backend.heads == heads  # answered by the entry


async def test_a_delete_through_the_cache_evicts_at_once(
    inner: tuple[Counting, str], store: CacheStore
) -> None:
    backend, bucket = inner
    info = await backend.put(new(bucket, "gone.txt"), chunks(b"soon gone"))
    front = cached(backend, store)
    for _ in range(2):
        await read((await front.fetch(info.ref))[1])
    assert store.used == 9
    await front.delete(info.ref)
    assert (store.used, entries(store)) == (0, [])
    with pytest.raises(FileNotFound):
        await front.head(info.ref)
    with pytest.raises(FileNotFound):
        await front.fetch(info.ref)


async def test_a_delete_elsewhere_is_seen_after_the_ttl(
    inner: tuple[Counting, str], tmp_path: Path
) -> None:
    """Another replica's delete does not evict here: the entry serves until it expires."""
    backend, bucket = inner
    clock = Clock()
    with store_in(tmp_path, ttl=300, clock=clock) as store:
        info = await backend.put(new(bucket, "elsewhere.txt"), chunks(b"still here"))
        front = cached(backend, store)
        for _ in range(2):
            await read((await front.fetch(info.ref))[1])
        await backend.delete(info.ref)  # not through the cache
        clock.now += 299
        assert await read((await front.fetch(info.ref))[1]) == b"still here"
        clock.now += 2
        with pytest.raises(FileNotFound):
            await front.fetch(info.ref)
        assert entries(store) == []


async def test_the_size_limit_holds_under_concurrency_least_recently_used_first(
    inner: tuple[Counting, str], tmp_path: Path
) -> None:
    backend, bucket = inner
    with store_in(tmp_path, max_size=1 * MiB) as store:
        front = cached(backend, store)
        files = {}
        for i in range(24):
            data = os.urandom(100 * 1024)
            files[(await backend.put(new(bucket, f"f{i}.bin"), chunks(data))).ref] = data
        refs = list(files)
        largest = 0

        async def get(ref: ObjectRef) -> None:
            nonlocal largest
            _, stream = await front.fetch(ref)
            assert await read(stream) == files[ref]
            largest = max(largest, store.used)

        for ref in refs:  # asked for once: seen, not kept
            await get(ref)
        assert store.used == 0
        await asyncio.gather(*(get(ref) for ref in refs))
        assert largest <= 1 * MiB
        on_disk = [Path(store.directory, name).stat().st_size for name in entries(store)]  # noqa: ASYNC240
        assert sum(on_disk) <= MiB
        # touch the first kept entry, fill more: the touched one stays, older ones go
        kept = [ref for ref in refs if store.lookup(store.key(front.name, ref.bucket, ref.key))]
        assert 0 < len(kept) <= 10
        await read((await front.fetch(kept[0]))[1])
        reads = backend.reads
        for ref in refs:
            if ref not in kept:
                await read((await front.fetch(ref))[1])
                await read((await front.fetch(kept[0]))[1])
        assert store.lookup(store.key(front.name, kept[0].bucket, kept[0].key)) is not None
        assert backend.reads == reads + len(refs) - len(kept)  # kept[0] never read again


async def test_a_fill_cut_midway_leaves_no_entry(
    inner: tuple[Counting, str], store: CacheStore
) -> None:
    backend, bucket = inner
    data = os.urandom(2 * MiB)
    info = await backend.put(new(bucket, "cut.bin"), chunks(data))
    front = cached(backend, store)
    await read((await front.fetch(info.ref))[1])  # the first request: seen, not kept
    backend.delay = 0.05

    async def get() -> bytes:
        return await read((await front.fetch(info.ref))[1])

    task = asyncio.create_task(get())
    async with asyncio.timeout(30):
        while not any(name.startswith(".fill-") for name in entries(store)):  # noqa: ASYNC110
            await asyncio.sleep(0.001)  # the fill has written its first batch
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    backend.delay = 0
    for _ in range(100):
        if entries(store) == []:
            break
        await asyncio.sleep(0.01)
    assert (entries(store), store.used) == ([], 0)
    assert await read((await front.fetch(info.ref))[1]) == data  # the next reader fills


async def test_bytes_that_do_not_match_their_checksum_are_never_kept(
    fastdfs: FastDFS, store: CacheStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A FastDFS file whose bytes went bad on the storage server (CRC-32 no longer matches):
    served as the storage serves it, never kept."""
    async with AsyncExitStack() as stack:
        values = fastdfs_settings(fastdfs, storage_mode="fastdfs")
        backend = await open_fastdfs_backend(
            Settings(_env_file=None, **values), stack, Budget(64 * MiB, 5)
        )
        data = os.urandom(50_000)
        info = await backend.put(new("group1", "rot.bin"), chunks(data))
        path = fastdfs.storage.path(info.ref.key)
        assert path is not None
        rotten = bytearray(path.read_bytes())
        rotten[100] ^= 0xFF
        path.write_bytes(bytes(rotten))
        front = cached(backend, store)
        for _ in range(2):  # the second request would keep it
            assert await read((await front.fetch(info.ref))[1]) == bytes(rotten)
        assert entries(store) == [] and store.used == 0
        assert "CRC-32 differs: not cached" in caplog.text


async def test_large_files_pass_through(inner: tuple[Counting, str], tmp_path: Path) -> None:
    backend, bucket = inner
    with store_in(tmp_path, max_file_size=MiB) as store:
        data = os.urandom(MiB + 1)
        info = await backend.put(new(bucket, "large.bin"), chunks(data))
        front = cached(backend, store)
        for _ in range(2):
            assert await read((await front.fetch(info.ref))[1]) == data
        assert await read(await front.open(info.ref, ByteRange(MiB, MiB))) == data[-1:]
        assert entries(store) == [] and backend.reads == 3


async def test_a_cache_directory_that_fails_serves_uncached_with_a_warning(
    inner: tuple[Counting, str], store: CacheStore, caplog: pytest.LogCaptureFixture
) -> None:
    backend, bucket = inner
    small, large = os.urandom(1000), os.urandom(3 * MiB)
    refs = [
        (await backend.put(new(bucket, name), chunks(data))).ref
        for name, data in (("small.bin", small), ("large.bin", large))
    ]
    front = cached(backend, store)
    os.rename(store.directory, f"{store.directory}.gone")
    Path(store.directory).write_bytes(b"not a directory any more")  # noqa: ASYNC240
    for ref, data in zip(refs, (small, large), strict=True):
        for _ in range(2):
            assert await read((await front.fetch(ref))[1]) == data
            assert await read(await front.open(ref, ByteRange(1, 10))) == data[1:11]
    assert store.used == 0
    assert "cannot be written" in caplog.text and "serving uncached" in caplog.text
    os.unlink(store.directory)
    os.rename(f"{store.directory}.gone", store.directory)


async def test_a_new_process_never_trusts_what_a_dead_one_left(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    (root / "p1-dead").mkdir(parents=True)
    (root / "p1-dead" / ("0" * 64)).write_bytes(b"half an entry")
    (root / "p1-dead" / ".fill-0").write_bytes(b"a fill cut by a crash")
    (root / "not-ours").mkdir()
    first = CacheStore.open(root, max_size=MiB, max_file_size=MiB, ttl=60)
    second = CacheStore.open(root, max_size=MiB, max_file_size=MiB, ttl=60)
    assert first is not None and second is not None
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["not-ours", Path(first.directory).name, Path(second.directory).name]
    )  # the dead one's directory is gone; two live ones keep theirs
    first.close()
    second.close()


def test_a_cache_directory_that_cannot_be_used_at_start_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """CACHE_DIR naming a file (or anything that cannot hold a directory): no cache, a warning
    naming the setting, and the service starts (``open_cache`` then wraps nothing)."""
    taken = tmp_path / "a-file"
    taken.write_bytes(b"not a directory")
    assert CacheStore.open(taken, max_size=MiB, max_file_size=MiB, ttl=60) is None
    assert "CACHE_DIR" in caplog.text and "serving without a cache" in caplog.text


# --- end to end: filegate as a process, with and without the cache, over one bucket ---

IGNORED = {"date", "x-request-id", "server"}


def comparable(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in response.headers.items() if k not in IGNORED}
    return response.status_code, headers, response.content


@pytest.fixture
def pair(seaweed: SeaweedFS, tmp_path: Path) -> Iterator[tuple[Service, Service, Path]]:
    """Two services over one bucket: one uncached, one with CACHE_DIR; and the cached log."""
    bucket = asyncio.run(created_bucket(seaweed.endpoint))
    env = {**seaweed.service_env(bucket), "SIGNING_SECRET": SIGNING_SECRET}
    plain = Service(env)
    plain.start(tmp_path)
    cache = tmp_path / "cache"
    fronted = Service({**env, "CACHE_DIR": str(cache), "CACHE_MAX_FILE_SIZE": "4MiB"})
    fronted.start(tmp_path)
    yield plain, fronted, cache
    plain.stop()
    fronted.stop()


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_download_through_the_cache_is_the_download_without_it(
    pair: tuple[Service, Service, Path], tmp_path: Path
) -> None:
    plain, fronted, cache = pair
    data = os.urandom(300_000)
    source = tmp_path / "Отчёт за «Q3» 😀.pdf"
    source.write_bytes(data)
    file_id = plain.upload(source, quote(source.name))
    with httpx.Client() as http:
        etag = http.head(f"{plain.url}/files/{file_id}/download").headers["etag"]
        link = http.post(f"{plain.url}/files/{file_id}/link", json={"expires_in": 600}).json()
        asks: list[tuple[str, str, dict[str, str], Any]] = [
            ("GET", "/download", {}, None),
            ("GET", "/download", {"Range": "bytes=100-199"}, None),
            ("GET", "/download", {"Range": "bytes=-10"}, None),
            ("GET", "/download", {"Range": "bytes=100-199", "If-Range": etag}, None),
            ("GET", "/download", {"Range": "bytes=100-199", "If-Range": '"other"'}, None),
            ("GET", "/download", {"If-None-Match": etag}, None),
            ("GET", "/download", {"Range": "bytes=999999-"}, None),
            ("GET", "/download?inline=true&filename=a%20b.pdf", {}, None),
            ("HEAD", "/download", {}, None),
            ("GET", "/info", {}, None),
        ]
        for _ in range(2):  # the second time, every answer comes from the entry
            for method, path, headers, _body in asks:
                url = f"/files/{file_id}{path}"
                want = comparable(http.request(method, plain.url + url, headers=headers))
                got = comparable(http.request(method, fronted.url + url, headers=headers))
                assert got == want, (method, path, headers)
            signed = link["url"].replace(plain.url, "")
            assert comparable(http.get(fronted.url + signed)) == comparable(
                http.get(plain.url + signed)
            )
            zipped = [{"file_id": file_id}, {"file_id": file_id, "file_name": "again.pdf"}]
            one = http.post(f"{plain.url}/files/download-zip", json=zipped)
            two = http.post(f"{fronted.url}/files/download-zip", json=zipped)
            assert one.status_code == two.status_code == 200
            assert one.content == two.content
        metrics = http.get(f"{fronted.url}/metrics").text
    assert metric(metrics, "filegate_cache_fills_total") == 1
    assert metric(metrics, "filegate_cache_hits_total") >= 20
    assert metric(metrics, "filegate_cache_served_bytes_total") > 0
    assert metric(metrics, "filegate_cache_size_bytes") == len(data)
    assert fronted.log_path is not None
    lines = fronted.log_path.read_text().splitlines()
    assert any(re.search(r"GET /files/\{file_id\}/download 200 .* cache-hit$", x) for x in lines)
    assert any(re.search(r"GET /files/\{file_id\}/download 200 .*out=\d+$", x) for x in lines)
    assert "Traceback" not in "\n".join(lines)
    # Cache-Control: private with a key, public (for the link's lifetime) with a signed link
    with httpx.Client() as http:
        assert (
            http.get(f"{fronted.url}/files/{file_id}/download").headers["cache-control"]
            == "private, max-age=86400, immutable"
        )
        public = http.get(fronted.url + link["url"].replace(plain.url, "")).headers
        assert re.fullmatch(r"public, max-age=(59\d|600), immutable", public["cache-control"])
    # a delete through the cached replica evicts at once
    with httpx.Client() as http:
        assert http.delete(f"{fronted.url}/files/{file_id}").status_code == 200
        assert http.get(f"{fronted.url}/files/{file_id}/download").status_code == 404
    assert [p for p in cache.rglob("*") if p.is_file() and p.name != "lock"] == []


def test_access_rules_run_before_the_cache(seaweed: SeaweedFS, tmp_path: Path) -> None:
    bucket = asyncio.run(created_bucket(seaweed.endpoint))
    keys = (
        '[{"name": "all", "key": "all-key-0123456789", "scopes": ["read", "write", "delete"]},'
        ' {"name": "other", "key": "other-key-0123456789", "scopes": ["read"],'
        ' "folders": ["other"]}]'
    )
    service = Service(
        {**seaweed.service_env(bucket), "CACHE_DIR": str(tmp_path / "c"), "API_KEYS": keys}
    )
    service.start(tmp_path)
    try:
        with httpx.Client(base_url=service.url) as http:
            stored = http.post(
                "/files/upload",
                data={"folder": "mine"},
                files={"file": ("a.txt", b"secret")},
                headers={"X-API-Key": "all-key-0123456789"},
            ).json()
            url = f"/files/{stored['file_id']}/download"
            for _ in range(2):
                ok = http.get(url, headers={"X-API-Key": "all-key-0123456789"})
                assert (ok.status_code, ok.content) == (200, b"secret")
            assert http.get(url, headers={"X-API-Key": "other-key-0123456789"}).status_code == 403
            assert http.get(url).status_code == 401
            assert http.head(url, headers={"X-API-Key": "other-key-0123456789"}).status_code == 403
    finally:
        service.stop()


def test_fastdfs_and_hybrid_reads_are_cached(
    fastdfs: FastDFS, seaweed: SeaweedFS, tmp_path: Path
) -> None:
    """Hybrid mode: S3 uploads and legacy FastDFS files share one cache; a FastDFS file is read
    from the storage server once."""
    bucket = asyncio.run(created_bucket(seaweed.endpoint))
    legacy = tmp_path / "legacy.txt"
    legacy.write_bytes(b"a legacy file " * 1000)
    fdfs = Service({"STORAGE_MODE": "fastdfs", "FASTDFS_TRACKER_SERVERS": fastdfs.tracker_address})
    fdfs.start(tmp_path)
    try:
        legacy_id = fdfs.upload(legacy, "legacy.txt")
    finally:
        fdfs.stop()
    env = {
        **seaweed.service_env(bucket),
        "STORAGE_MODE": "hybrid",
        "FASTDFS_TRACKER_SERVERS": fastdfs.tracker_address,
        "CACHE_DIR": str(tmp_path / "cache"),
    }
    service = Service(env)
    service.start(tmp_path)
    try:
        new_file = tmp_path / "new.txt"
        new_file.write_bytes(b"a new file")
        new_id = service.upload(new_file, "new.txt")
        with httpx.Client(base_url=service.url) as http:
            for file_id, data in ((legacy_id, legacy.read_bytes()), (new_id, b"a new file")):
                for _ in range(3):
                    got = http.get(f"/files/{file_id}/download")
                    assert (got.status_code, got.content) == (200, data)
                    assert zlib.crc32(got.content) == zlib.crc32(data)
            metrics = http.get("/metrics").text
        assert metric(metrics, 'filegate_cache_fills_total{backend="fastdfs"}') == 1
        assert metric(metrics, 'filegate_cache_fills_total{backend="s3"}') == 1
        # the first request of each passes through, the second keeps it, the third is a hit
        assert metric(metrics, 'filegate_cache_hits_total{backend="fastdfs"}') == 1
    finally:
        service.stop()
