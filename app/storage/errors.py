"""The one error vocabulary of filegate.

Backends translate their SDK's exceptions (botocore ``ClientError`` codes, connection errors,
``OSError`` errno values) into these classes where they call the SDK; nothing above a backend sees
an SDK exception. Each class knows the HTTP status and machine code it becomes, and
``app.api.errors`` renders every one of them in the same JSON shape.
"""

from __future__ import annotations


class StorageError(Exception):
    """An unexpected backend failure (500 ``storage_error``)."""

    status_code = 500
    code = "storage_error"

    def __init__(
        self,
        detail: str,
        *,
        file_id: str | None = None,
        file_ids: list[str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.file_id = file_id
        self.file_ids = file_ids
        self.backend: str | None = None
        """The backend whose operation failed, when one did (for metrics and logs)."""

    def headers(self) -> dict[str, str]:
        """Extra response headers that belong with this error."""
        return {}


class InvalidArgument(StorageError):
    """Malformed id, unsafe name or folder, bad metadata or a bad range header."""

    status_code = 400
    code = "invalid_argument"


class InvalidFileType(StorageError):
    """The extension is blacklisted, or missing from a non-empty whitelist."""

    status_code = 400
    code = "invalid_file_type"


class RouteNotSupported(StorageError):
    """The id routes to a backend that the current storage mode does not enable."""

    status_code = 403
    code = "route_not_supported"


class DeleteNotSupported(StorageError):
    """Deletion is disabled for the backend the id routes to."""

    status_code = 403
    code = "delete_not_supported"


class BucketNotAllowed(StorageError):
    """The bucket is not in the operator's allowlist; no request is sent to it."""

    status_code = 403
    code = "bucket_not_allowed"


class FileNotFound(StorageError, FileNotFoundError):
    """No file with that id."""

    status_code = 404
    code = "file_not_found"


class FileTooLarge(StorageError):
    """The upload is over ``MAX_FILE_SIZE`` (nothing of it is left stored)."""

    status_code = 413
    code = "file_too_large"


class TooManyFiles(StorageError):
    """More files in one batch upload than ``MAX_BATCH_FILES`` (nothing of it is left stored)."""

    status_code = 413
    code = "too_many_files"


class RangeNotSatisfiable(StorageError):
    """The requested byte range lies outside the file."""

    status_code = 416
    code = "range_not_satisfiable"

    def __init__(self, detail: str, *, size: int, file_id: str | None = None) -> None:
        super().__init__(detail, file_id=file_id)
        self.size = size

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


class BackendUnavailable(StorageError):
    """The backend could not be reached or timed out; the client may retry later."""

    status_code = 503
    code = "backend_unavailable"
    retry_after_seconds = 2

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}
