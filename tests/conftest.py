"""Fixtures: a session-wide SeaweedFS, and the service under test per backend.

The endpoint suite takes ``client`` and ``storage``: each test runs once against the local disk and
once against SeaweedFS, through the real lifespan, in a bucket (or directory) of its own.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aioboto3
import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.main import create_app
from app.settings import Settings
from app.storage.base import ObjectRef
from app.storage.fusion import Routes
from app.storage.memory import MemoryBackend
from tests.fdfs_emulator import FastDFS
from tests.servers import ADMIN, READER, WRITER, SeaweedFS, Service


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_seaweed(tmp_path: Path) -> Iterator[SeaweedFS]:
    """A SeaweedFS of this test's own, to stop and start."""
    server = SeaweedFS(tmp_path / "private-seaweedfs")
    server.start()
    yield server
    server.stop()


SIGNING_SECRET = "a-signing-secret-of-at-least-32-characters"
"""A SIGNING_SECRET the settings accept, for tests of signed links."""


def unique_bucket() -> str:
    return f"t-{secrets.token_hex(6)}"


async def created_bucket(endpoint: str) -> str:
    """A new bucket of the test's own (tests never share hard-coded buckets)."""
    name = unique_bucket()
    async with s3_admin(endpoint) as s3:
        await s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
async def bucket(seaweed: SeaweedFS) -> str:
    return await created_bucket(seaweed.endpoint)


@asynccontextmanager
async def s3_admin(endpoint: str) -> AsyncIterator[Any]:
    """A direct S3 client with every permission: for arranging and inspecting, never for the
    behaviour under test."""
    async with aioboto3.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ADMIN[0],
        aws_secret_access_key=ADMIN[1],
    ) as client:
        yield client


def s3_settings(endpoint: str, bucket: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "storage_mode": "s3",
        "s3_endpoint": endpoint,
        "s3_access_key_id": WRITER[0],
        "s3_secret_access_key": WRITER[1],
        "s3_read_access_key_id": READER[0],
        "s3_read_secret_access_key": READER[1],
        "s3_default_bucket": bucket,
        "s3_addressing_style": "path",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@dataclass
class Storage:
    """What the backend under test really holds, read around the service.

    ``mode`` is the storage mode; ``backend`` where uploads go (hybrid mode uploads to S3 and
    also has a FastDFS emulator for legacy ids).
    """

    mode: str
    backend: str
    bucket: str
    root: Path | None = None
    endpoint: str | None = None
    fastdfs: FastDFS | None = None

    @property
    def prefix(self) -> str:
        if self.backend == "fastdfs":
            return f"{self.bucket}/"
        return f"{self.backend}:{self.bucket}/"

    def missing_id(self) -> str:
        """A well-formed id of a file that does not exist."""
        if self.backend == "fastdfs":
            return f"{self.bucket}/M00/00/00/fwAAAWsFKtSATKktAAAADgWKGpg335.txt"
        return f"{self.prefix}0123456789abcdef_missing.txt"

    async def keys(self) -> list[str]:
        """Every stored object key, temporary files and pending multipart uploads included."""
        if self.backend == "memory":  # and bytes held apart from every file (tus, a leak)
            memory = live_memory()
            held = memory.keys(self.bucket)
            stored = sum([(await memory.head(ObjectRef(self.bucket, k))).size for k in held])
            apart = memory.room.used - stored
            return sorted(held) + ([f"(held apart) {apart} bytes"] if apart else [])
        if self.backend == "fastdfs":
            assert self.fastdfs is not None
            return [name for name in self.fastdfs.stored_files() if not name.endswith("-m")]
        if self.root is not None:
            base = self.root / self.bucket
            found = [str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()]
            records = self.root / ".filegate-meta" / self.bucket  # sidecars (no xattrs)
            found += [
                f"(record) {p.relative_to(records)}" for p in records.rglob("*") if p.is_file()
            ]
            return sorted(found)
        assert self.endpoint is not None
        keys: list[str] = []
        async with s3_admin(self.endpoint) as s3:
            async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
                keys += [item["Key"] for item in page.get("Contents", [])]
            pending = await s3.list_multipart_uploads(Bucket=self.bucket)
        keys += [f"(pending upload) {up['Key']}" for up in pending.get("Uploads", [])]
        return sorted(keys)

    async def read(self, file_id: str) -> bytes:
        """The stored bytes of a file, read straight from the backend."""
        key = file_id.removeprefix(self.prefix)
        if self.backend == "memory":
            stream = await live_memory().open(ObjectRef(self.bucket, key))
            return b"".join([bytes(chunk) async for chunk in stream])
        if self.backend == "fastdfs":
            assert self.fastdfs is not None
            path = self.fastdfs.storage.path(key)
            assert path is not None
            return path.read_bytes()
        if self.root is not None:
            return (self.root / self.bucket / key).read_bytes()
        assert self.endpoint is not None
        async with s3_admin(self.endpoint) as s3:
            answer = await s3.get_object(Bucket=self.bucket, Key=key)
            async with answer["Body"] as body:
                data: bytes = await body.read()
                return data


@pytest.fixture
def fastdfs(tmp_path: Path) -> Iterator[FastDFS]:
    """A FastDFS tracker + storage emulator of this test's own, on free loopback ports."""
    emulator = FastDFS(tmp_path / "fastdfs")
    emulator.serve_in_thread()
    yield emulator
    emulator.shutdown()


@pytest.fixture
def fastdfs_service(fastdfs: FastDFS, tmp_path: Path) -> Iterator[Service]:
    """filegate as a process in fastdfs mode, in front of this test's emulator."""
    service = Service(
        {"STORAGE_MODE": "fastdfs", "FASTDFS_TRACKER_SERVERS": fastdfs.tracker_address}
    )
    service.start(tmp_path)
    yield service
    service.stop()


@pytest.fixture
def local_service(tmp_path: Path) -> Iterator[Service]:
    """filegate as a process in local mode, storing under ``tmp_path / "data"``."""
    service = Service({"LOCAL_ROOT": str(tmp_path / "data")})
    service.start(tmp_path)
    yield service
    service.stop()


@pytest.fixture(params=["local", "s3", "fastdfs", "hybrid", "memory"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    return await make_storage(request.param, request, tmp_path)


async def make_storage(mode: str, request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The storage of one mode for this test: a directory, an emulator or a fresh bucket."""
    if mode == "memory":
        return Storage(mode, "memory", "files")
    if mode == "local":
        return Storage(mode, "local", "files", root=tmp_path / "data")
    if mode == "fastdfs":
        return Storage(mode, "fastdfs", "group1", fastdfs=request.getfixturevalue("fastdfs"))
    server: SeaweedFS = request.getfixturevalue("seaweed")
    bucket = await created_bucket(server.endpoint)
    legacy = request.getfixturevalue("fastdfs") if mode == "hybrid" else None
    return Storage(mode, "s3", bucket, endpoint=server.endpoint, fastdfs=legacy)


def fastdfs_settings(emulator: FastDFS, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "fastdfs_tracker_servers": [emulator.tracker_address],
        "fastdfs_connect_timeout": 2,
        "fastdfs_network_timeout": 2,
        # this test's own LOCAL_ROOT: fastdfs mode keeps its index of resumable uploads there
        "local_root": emulator.root.parent / "data",
    }
    values.update(overrides)
    return values


def settings_for(storage: Storage, **overrides: Any) -> Settings:
    if storage.mode == "memory":
        return Settings(_env_file=None, storage_mode="memory", **overrides)
    if storage.mode == "local":
        return Settings(_env_file=None, local_root=storage.root, **overrides)
    if storage.mode == "fastdfs":
        assert storage.fastdfs is not None
        values = fastdfs_settings(storage.fastdfs, storage_mode="fastdfs", **overrides)
        return Settings(_env_file=None, **values)
    assert storage.endpoint is not None
    if storage.mode == "hybrid":
        assert storage.fastdfs is not None
        overrides = fastdfs_settings(storage.fastdfs, storage_mode="hybrid", **overrides)
    return s3_settings(storage.endpoint, storage.bucket, **overrides)


_MEMORY: list[MemoryBackend] = []
"""The memory backend of the app ``serve`` ran last in memory mode."""


def live_memory() -> MemoryBackend:
    """The memory backend of the app served last (what a memory-mode test has stored)."""
    assert _MEMORY, "no app in memory mode was served"
    return _MEMORY[-1]


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app under its real lifespan, spoken to over ASGI."""
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        if settings.storage_mode == "memory":
            routes: Routes = app.state.routes
            _MEMORY[:] = [cast(MemoryBackend, routes.targets["memory"].backend)]
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://filegate") as client:
            yield client


@pytest.fixture
async def client(storage: Storage) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(settings_for(storage)) as http:
        yield http
