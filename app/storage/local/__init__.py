"""The local-disk backend (docs/architecture.md, "Local disk")."""

from app.storage.local.backend import LocalBackend, LocalStream, open_local_backend
from app.storage.local.files import fsync_dir, make_dirs, write_atomically

__all__ = [
    "LocalBackend",
    "LocalStream",
    "fsync_dir",
    "make_dirs",
    "open_local_backend",
    "write_atomically",
]
