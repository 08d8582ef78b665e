"""The fusion routing: which backends a storage mode enables, and where each file id goes.

``s3:`` ids go to S3, ``local:`` ids to the local disk and every other id to FastDFS (see
``app.storage.ids``); a mode enables some of those backends and names the one uploads go to. In
``hybrid`` mode uploads go to S3 while legacy FastDFS files stay readable and deletable, each
behind its own switch. Nothing here authorizes a caller: that is the service's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Literal

from app.errors import BucketNotAllowed, DeleteNotSupported, RouteNotSupported
from app.settings import Settings
from app.storage.base import Backend
from app.storage.breaker import Breaker
from app.storage.budget import Budget
from app.storage.cache import CacheEvents, cached, open_cache
from app.storage.fastdfs import open_fastdfs_backend
from app.storage.ids import BackendName, FileId
from app.storage.local import open_local_backend
from app.storage.memory import MemoryBackend
from app.storage.s3 import open_s3_backend

StorageMode = Literal["local", "s3", "fastdfs", "hybrid", "memory"]

UPLOADS_GO_TO: dict[StorageMode, BackendName] = {
    "local": "local",
    "s3": "s3",
    "fastdfs": "fastdfs",
    "hybrid": "s3",
    "memory": "memory",
}
ENABLED: dict[StorageMode, tuple[BackendName, ...]] = {
    "local": ("local",),
    "s3": ("s3",),
    "fastdfs": ("fastdfs",),
    "hybrid": ("s3", "fastdfs"),
    "memory": ("memory",),
}


def enabled(settings: Settings) -> tuple[BackendName, ...]:
    """The backends this deployment serves: its mode's, plus the local disk when
    ``LOCAL_ENABLED`` adds it beside S3 or FastDFS (to copy and move files between them)."""
    names = ENABLED[settings.storage_mode]
    if settings.local_enabled and "local" not in names:
        names = (*names, "local")
    return names


@dataclass(frozen=True, slots=True)
class Target:
    """A backend together with the buckets it may touch, where uploads go by default, and the
    breaker that stops waiting on it while it keeps failing."""

    backend: Backend
    buckets: frozenset[str]
    """The allowlist; empty means any (FastDFS groups are chosen by the tracker)."""
    default_bucket: str
    breaker: Breaker
    readable: bool = True
    deletable: bool = True


class Routes:
    """The enabled backends of this deployment, and the rules for reaching them."""

    def __init__(self, targets: Mapping[BackendName, Target], upload_to: BackendName) -> None:
        self.targets = dict(targets)
        self.upload_to = upload_to

    @property
    def uploads(self) -> Target:
        return self.targets[self.upload_to]

    def target(self, file_id: FileId, *, deleting: bool = False) -> Target:
        """The target of ``file_id`` if this deployment may read (or delete) it there."""
        raw = str(file_id)
        target = self.targets.get(file_id.backend)
        if target is None or not (target.readable or deleting):
            raise RouteNotSupported(
                f"Files on {file_id.backend} are not served in this storage mode.", file_id=raw
            )
        if deleting and not target.deletable:
            raise DeleteNotSupported(
                f"Deleting files on {file_id.backend} is disabled.", file_id=raw
            )
        if target.buckets and file_id.ref.bucket not in target.buckets:
            raise BucketNotAllowed(f"Bucket {file_id.ref.bucket!r} is not allowed.", file_id=raw)
        return target


async def open_routes(
    settings: Settings,
    stack: AsyncExitStack,
    budget: Budget,
    cache_events: CacheEvents | None = None,
) -> Routes:
    """Open the backends ``STORAGE_MODE`` enables, each for the life of ``stack``; what uploads
    hold in memory is counted against ``budget``. With ``CACHE_DIR``, S3 and FastDFS reads go
    through one read-through cache (``app.storage.cache``)."""
    mode: StorageMode = settings.storage_mode
    targets: dict[BackendName, Target] = {}
    cache = open_cache(settings, stack, cache_events)
    for name in enabled(settings):
        breaker = Breaker(
            name, failures=settings.breaker_failures, backoff=settings.breaker_backoff
        )
        if name == "local":
            local = await open_local_backend(settings, budget)
            targets[name] = Target(
                local, frozenset({settings.local_bucket}), settings.local_bucket, breaker
            )
        elif name == "memory":
            memory = MemoryBackend(settings.memory_max_size)
            targets[name] = Target(
                memory, frozenset({settings.memory_bucket}), settings.memory_bucket, breaker
            )
        elif name == "s3":
            s3: Backend = await open_s3_backend(settings, stack, budget)
            if cache is not None:
                s3 = cached(s3, cache)
            targets[name] = Target(
                s3, settings.allowed_s3_buckets, settings.s3_default_bucket, breaker
            )
        else:
            fastdfs: Backend = await open_fastdfs_backend(settings, stack, budget)
            if cache is not None:
                fastdfs = cached(fastdfs, cache)
            legacy = mode == "hybrid"  # the switches guard legacy files in hybrid mode only
            targets[name] = Target(
                fastdfs,
                frozenset(),  # the tracker chooses the group
                "",
                breaker,
                readable=settings.fastdfs_download_enabled or not legacy,
                deletable=settings.fastdfs_delete_enabled or not legacy,
            )
    return Routes(targets, UPLOADS_GO_TO[mode])
