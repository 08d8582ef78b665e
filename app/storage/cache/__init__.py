"""The read-through cache in front of S3 and FastDFS (``CACHE_DIR``; docs/architecture.md, "The
read-through cache")."""

from __future__ import annotations

from contextlib import AsyncExitStack

from app.settings import Settings
from app.storage.base import Backend
from app.storage.cache.backend import CachedBackend, cached
from app.storage.cache.store import CacheEvents, CacheStore

__all__ = ["CacheEvents", "CacheStore", "CachedBackend", "cached", "open_cache", "uncached"]


def open_cache(
    settings: Settings, stack: AsyncExitStack, events: CacheEvents | None
) -> CacheStore | None:
    """The cache ``CACHE_DIR`` asks for, emptied when ``stack`` closes; None when it is off or
    its directory cannot be used (a warning says so; files are then served uncached)."""
    if settings.cache_dir is None:
        return None
    store = CacheStore.open(
        settings.cache_dir,
        max_size=int(settings.cache_max_size),
        max_file_size=int(settings.cache_max_file_size),
        ttl=settings.cache_ttl,
        events=events,
    )
    if store is not None:
        stack.callback(store.close)
    return store


def uncached(backend: Backend) -> Backend:
    """The backend behind the cache, if there is one (resumable uploads and start-up checks
    talk to the storage itself)."""
    return backend.inner if isinstance(backend, CachedBackend) else backend
