"""The S3 backend (AWS S3, MinIO, SeaweedFS): clients, error translation, metadata, objects."""

from app.storage.s3.backend import S3Backend, open_s3_backend

__all__ = ["S3Backend", "open_s3_backend"]
