"""Resumable uploads (tus 1.0.0) on every backend that can take them (docs/tus.md)."""

from __future__ import annotations

import asyncio
import logging

from app.settings import Settings
from app.storage.cache import uncached
from app.storage.fastdfs.backend import FastDFSBackend
from app.storage.local import LocalBackend
from app.storage.memory import MemoryBackend
from app.storage.s3.backend import S3Backend
from app.storage.service import FileService
from app.storage.tus.engine import TusService, TusState, TusStore
from app.storage.tus.fastdfs import FastDFSTusStore
from app.storage.tus.local import LocalTusStore
from app.storage.tus.memory import MemoryTusStore
from app.storage.tus.s3 import S3TusStore

__all__ = ["TusService", "TusState", "open_tus", "sweep_forever"]
log = logging.getLogger(__name__)


def open_tus(settings: Settings, files: FileService) -> TusService | None:
    """The tus service for the backend uploads go to."""
    backend = uncached(files.routes.uploads.backend)
    store: TusStore
    if isinstance(backend, LocalBackend):
        store = LocalTusStore(backend)
    elif isinstance(backend, S3Backend):
        store = S3TusStore(backend, settings.s3_default_bucket)
    elif isinstance(backend, MemoryBackend):
        store = MemoryTusStore(backend)
    elif isinstance(backend, FastDFSBackend):
        store = FastDFSTusStore(backend, settings.local_root)
    else:
        return None
    return TusService(files, store, expires=settings.tus_expires)


async def sweep_forever(tus: TusService, interval: float) -> None:
    """Remove expired uploads every ``interval`` seconds, the first time soon after start-up
    (every replica sweeps; docs/tus.md, "Expiry")."""
    delay = min(interval, 5.0)
    while True:
        await asyncio.sleep(delay)
        delay = interval
        try:
            removed = await tus.sweep()
        except Exception as exc:  # the storage may be down: try again next time
            log.warning("tus sweep failed: %s", exc)
            continue
        if removed:
            log.info("tus sweep removed %d expired uploads", removed)
