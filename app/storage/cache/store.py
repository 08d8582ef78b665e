"""The read-through cache's entries on local disk (docs/architecture.md, "The read-through cache").

Each entry is one file under this process's own directory in ``CACHE_DIR``, named by a hash of
the file id; its record (the ``ObjectInfo`` the backend gave: name, type, size, ETag, metadata) is
kept in memory beside it. A fill writes a hidden temporary file, checks it against the size and the
CRC-32 (or the MD5 in a plain S3 ETag) and only then renames it into place and adds its record, so
nothing partial is ever served. The directory is emptied at start-up: what a crashed process left
is never trusted.

The index is an ordered dict in least-recently-used order; ``CACHE_MAX_SIZE`` bounds the sum of
the entries' sizes, and making room evicts from the cold end before a new entry is added. Entries
expire ``CACHE_TTL`` seconds after their fill, which bounds how long a delete through another
replica can go unseen. Every failure of the disk (full, unwritable) turns into a warning and an
uncached answer: the cache never fails a request.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from app.storage.base import ObjectInfo

log = logging.getLogger(__name__)

LOCK = "lock"
TMP_PREFIX = ".fill-"
SEEN_MAX = 65_536
"""Files remembered as asked for once (``seen``); then the memory starts afresh."""
WARN_EVERY = 60.0
"""Seconds between two warnings about the cache's disk."""


@dataclass(slots=True)
class Entry:
    """A complete, checked entry: its file and the record it was filled with."""

    path: str
    info: ObjectInfo
    expires: float


class CacheEvents:
    """What the cache reports (``/metrics``); the default reports nothing."""

    def hit(self, backend: str, size: int) -> None: ...

    def miss(self, backend: str) -> None: ...

    def filled(self, backend: str, size: int) -> None: ...

    def evicted(self, count: int) -> None: ...

    def size(self, used: int) -> None: ...


class CacheStore:
    """The entries of one process, their LRU order and their total size."""

    def __init__(
        self,
        directory: str,
        *,
        max_size: int,
        max_file_size: int,
        ttl: float,
        events: CacheEvents | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.max_size = max_size
        self.max_file_size = min(max_file_size, max_size)
        self.ttl = ttl
        self.events = events or CacheEvents()
        self.clock = clock
        self.used = 0
        self._index: OrderedDict[str, Entry] = OrderedDict()
        self._names = itertools.count()
        self._warned = -WARN_EVERY
        self._lock_file: IO[bytes] | None = None
        self._seen: set[int] = set()

    @classmethod
    def open(cls, root: Path, **kwargs: Any) -> CacheStore | None:
        """A store in a fresh directory of this process under ``root``; None, with a warning, when
        ``root`` cannot be used (the service then serves uncached)."""
        try:
            directory = _claim(str(root))
        except OSError as exc:
            log.warning("CACHE_DIR=%s cannot be used (%s): serving without a cache", root, exc)
            return None
        store = cls(directory[0], **kwargs)
        store._lock_file = directory[1]
        return store

    def close(self) -> None:
        """Remove this process's entries (they would not be trusted by the next one anyway)."""
        shutil.rmtree(self.directory, ignore_errors=True)
        if self._lock_file is not None:
            self._lock_file.close()

    @staticmethod
    def key(backend: str, bucket: str, key: str) -> str:
        return hashlib.sha256(f"{backend}\0{bucket}\0{key}".encode()).hexdigest()

    def lookup(self, key: str) -> Entry | None:
        """The entry if it is there and not expired (then it becomes the most recently used)."""
        entry = self._index.get(key)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            self.evict(key)
            return None
        self._index.move_to_end(key)
        return entry

    def seen(self, key: str) -> bool:
        """Whether ``key`` was asked for before (and remember that it now was): a file is kept
        from its second request on, so files asked for once never push out those asked for
        again. At most ``SEEN_MAX`` keys are remembered, 64 bits each, then the memory starts
        afresh (as TinyLFU's doorkeeper does)."""
        short = int(key[:16], 16)
        if short in self._seen:
            return True
        if len(self._seen) >= SEEN_MAX:
            self._seen.clear()
        self._seen.add(short)
        return False

    def evict(self, key: str) -> None:
        """Forget an entry at once and remove its file (a reader that opened it keeps reading)."""
        entry = self._index.pop(key, None)
        if entry is None:
            return
        self.used -= entry.info.size
        self.events.evicted(1)
        self.events.size(self.used)
        with contextlib.suppress(OSError):
            os.unlink(entry.path)

    def temp_path(self) -> str:
        return os.path.join(self.directory, f"{TMP_PREFIX}{next(self._names)}")

    def final_path(self, key: str) -> str:
        return os.path.join(self.directory, key)

    def admit(self, key: str, info: ObjectInfo, temp: str) -> Entry | None:
        """Make room for a checked temporary file (evicting the least recently used), rename it
        into place and index it. None, with the file removed, when it cannot be kept."""
        if info.size > self.max_file_size:
            _remove(temp)
            return None
        stale = self._index.pop(key, None)  # a refill that raced another: replaced below
        if stale is not None:
            self.used -= stale.info.size
        victims = []
        while self.used + info.size > self.max_size and self._index:
            _, old = self._index.popitem(last=False)
            self.used -= old.info.size
            victims.append(old.path)
        if victims:
            self.events.evicted(len(victims))
        path = self.final_path(key)
        try:
            for victim in victims:
                _remove(victim)
            os.replace(temp, path)
        except OSError as exc:
            _remove(temp)
            self.events.size(self.used)
            self.warn(exc)
            return None
        entry = Entry(path, info, self.clock() + self.ttl)
        self._index[key] = entry
        self.used += info.size
        self.events.size(self.used)
        return entry

    def warn(self, exc: BaseException) -> None:
        now = self.clock()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning(
                "the cache in %s cannot be written (%s): serving uncached meanwhile",
                self.directory,
                exc,
            )


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):  # gone already, or its directory is
        os.unlink(path)


def _claim(root: str) -> tuple[str, IO[bytes]]:
    """A new directory for this process under ``root``, locked for as long as it lives; the
    directories of processes that are gone (their lock is free) are removed."""
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):
        if not name.startswith("p"):
            continue  # not a process's directory
        other = os.path.join(root, name)
        try:
            with open(os.path.join(other, LOCK), "rb") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, NotADirectoryError):
            continue  # its process is alive, or it is not a directory
        except FileNotFoundError:
            pass  # a process died before it locked it
        shutil.rmtree(other, ignore_errors=True)
    directory = os.path.join(root, f"p{os.getpid()}-{os.urandom(4).hex()}")
    os.mkdir(directory, 0o700)
    lock_file = open(os.path.join(directory, LOCK), "wb")  # noqa: SIM115 - held for life
    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    probe = os.path.join(directory, f"{TMP_PREFIX}probe")
    with open(probe, "wb") as file:
        file.write(b"x")
    os.unlink(probe)
    return directory, lock_file
