"""The FastDFS backend over aiofdfs, with its defects contained (docs/fastdfs.md)."""

from app.storage.fastdfs.backend import FastDFSBackend, open_fastdfs_backend

__all__ = ["FastDFSBackend", "open_fastdfs_backend"]
