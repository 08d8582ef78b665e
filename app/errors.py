"""The one error vocabulary of filegate (docs/architecture.md, "Where an error becomes a status").

Every failure a request can meet is one of these classes. Each knows its HTTP status, its machine
code, the headers that go with it and whether it blames a backend (only those count in the
``filegate_backend_errors`` metric). Backends raise them where they call their SDK, naming
themselves in ``backend``; the service, the access checks and the HTTP parsing raise them too.
``app.api.errors`` renders every one of them in the same JSON shape, and routes declare the ones
they can raise, so the OpenAPI document lists them.
"""

from __future__ import annotations

from typing import ClassVar


class FilegateError(Exception):
    """A failure with a status; subclasses set the class attributes."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    description: ClassVar[str] = "Internal error"
    """What this status means, for the OpenAPI document."""
    blames_backend: ClassVar[bool] = False

    def __init__(
        self,
        detail: str,
        *,
        file_id: str | None = None,
        file_ids: list[str] | None = None,
        backend: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.file_id = file_id
        self.file_ids = file_ids
        self.backend = backend
        self.field = field
        """The request field that broke a rule (``app.text``), when one did."""
        """The backend whose operation failed, when one did (metrics and logs)."""

    def headers(self) -> dict[str, str]:
        """Response headers that belong with this error."""
        return {}


class InvalidArgument(FilegateError):
    """Malformed id, unsafe name or folder, bad metadata, a malformed request."""

    status_code = 400
    code = "invalid_argument"
    description = "Invalid argument or file type"


class InvalidFileType(InvalidArgument):
    """The extension is blacklisted, or missing from a non-empty whitelist."""

    code = "invalid_file_type"


class StorageRefused(InvalidArgument):
    """The storage refused the request as invalid: an S3 4xx that filegate did not expect (the
    text rules stop what is known to be refused before it is sent; this is the net below them)."""

    blames_backend = True


class Unauthorized(FilegateError):
    """No API key, or one that is not configured."""

    status_code = 401
    code = "unauthorized"
    description = "No API key, or an unknown one"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="filegate"'}


class Forbidden(FilegateError):
    """A known key without the scope, or outside its buckets and folders."""

    status_code = 403
    code = "forbidden"
    description = "Not allowed: the key's scope, bucket or folder; the route, bucket or deletion"


class LinkInvalid(Forbidden):
    """A signed link that was tampered with, made for another file, or links are off."""

    code = "link_invalid"


class LinkExpired(Forbidden):
    code = "link_expired"


class RouteNotSupported(Forbidden):
    """The id routes to a backend that the current storage mode does not enable."""

    code = "route_not_supported"


class DeleteNotSupported(Forbidden):
    """Deletion is disabled for the backend the id routes to."""

    code = "delete_not_supported"


class BucketNotAllowed(Forbidden):
    """The bucket is not in the operator's allowlist; no request is sent to it."""

    code = "bucket_not_allowed"


class FileNotFound(FilegateError, FileNotFoundError):
    """No file with that id."""

    status_code = 404
    code = "file_not_found"
    description = "No such file"


class NotFound(FilegateError):
    """No such route (an unknown URL)."""

    status_code = 404
    code = "not_found"
    description = "No such route"


class MethodNotAllowed(FilegateError):
    status_code = 405
    code = "method_not_allowed"
    description = "Method not allowed"


class RequestTimeout(FilegateError):
    """The client sent or read nothing for ``CLIENT_IDLE_TIMEOUT`` seconds."""

    status_code = 408
    code = "request_timeout"
    description = "The client sent nothing for too long"

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class MalformedRequest(FilegateError):
    """A request the HTTP server cannot parse (a NUL in the URL, a control character in a header
    value): answered by the server layer (``app.server``), before any route."""

    status_code = 400
    code = "malformed_request"
    description = "The request is not valid HTTP"


class UrlTooLong(FilegateError):
    """A request line over ``MAX_REQUEST_LINE`` (``app.server``)."""

    status_code = 414
    code = "url_too_long"
    description = "The URL is too long"


class HeadersTooLarge(FilegateError):
    """A header over ``MAX_HEADER_SIZE``, a head over ``MAX_HEADERS_SIZE`` or more headers than
    ``MAX_HEADER_COUNT`` (``app.server``)."""

    status_code = 431
    code = "headers_too_large"
    description = "Request headers too large"


class ClientGone(FilegateError):
    """The client disconnected mid-request; nobody reads the answer."""

    status_code = 400
    code = "client_gone"
    description = "The client disconnected"


class FileTooLarge(FilegateError):
    """Over ``MAX_FILE_SIZE`` (nothing is left stored), or over the zip limits."""

    status_code = 413
    code = "file_too_large"
    description = "File or request too large"


class TooManyFiles(FileTooLarge):
    """More files in one request than the limit allows (nothing is left stored)."""

    code = "too_many_files"


class UploadNotFound(FilegateError):
    """No resumable upload with that id (never created, terminated, or swept)."""

    status_code = 404
    code = "upload_not_found"
    description = "No such upload"


class UploadExpired(FilegateError):
    """A resumable upload that outlived ``TUS_EXPIRES`` (it is swept from storage)."""

    status_code = 410
    code = "upload_expired"
    description = "The upload expired"


class OffsetMismatch(FilegateError):
    """A tus PATCH whose ``Upload-Offset`` is not the upload's offset, or that lost a race."""

    status_code = 409
    code = "offset_mismatch"
    description = "Upload-Offset is not the upload's offset (or another PATCH won)"


class MovedMeanwhile(FilegateError):
    """A FastDFS file that another request moved to S3 first."""

    status_code = 409
    code = "moved_meanwhile"
    description = "Another request moved this FastDFS file meanwhile"


class SourceCorrupt(FilegateError):
    """A copy whose bytes do not match the checksum the source recorded for them."""

    status_code = 422
    code = "source_corrupt"
    description = "The source's bytes do not match its recorded CRC-32: it was kept, no copy"


class UploadLocked(FilegateError):
    """Another PATCH of the same upload is in progress (on any replica)."""

    status_code = 423
    code = "upload_locked"
    description = "Another PATCH of this upload is in progress"
    retry_after_seconds = 5

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class UnsupportedMediaType(FilegateError):
    """A tus PATCH without ``Content-Type: application/offset+octet-stream``."""

    status_code = 415
    code = "unsupported_media_type"
    description = "Wrong Content-Type"


class UnsupportedVersion(FilegateError):
    """A tus request for a protocol version other than 1.0.0."""

    status_code = 412
    code = "unsupported_version"
    description = "Tus-Resumable is not 1.0.0"

    def headers(self) -> dict[str, str]:
        return {"Tus-Version": "1.0.0"}


class ChecksumMismatch(FilegateError):
    """The PATCH body does not match its ``Upload-Checksum``; the chunk was discarded."""

    status_code = 460
    code = "checksum_mismatch"
    description = "Upload-Checksum does not match the body; the chunk was discarded"


class RangeNotSatisfiable(FilegateError):
    """The requested byte range lies outside the file."""

    status_code = 416
    code = "range_not_satisfiable"
    description = "Range not satisfiable"

    def __init__(self, detail: str, *, size: int, file_id: str | None = None) -> None:
        super().__init__(detail, file_id=file_id)
        self.size = size

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


class ServerBusy(FilegateError):
    """Every byte of the upload memory budget is taken; the client may retry later."""

    status_code = 503
    code = "server_busy"
    description = "Too busy right now; retry after the Retry-After delay"
    retry_after_seconds = 5

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class InsufficientStorage(FilegateError):
    """The memory backend holds ``MEMORY_MAX_SIZE`` bytes already; nothing of the upload is kept."""

    status_code = 507
    code = "insufficient_storage"
    description = "The memory backend is full (MEMORY_MAX_SIZE); nothing was kept"


class StorageError(FilegateError):
    """An unexpected backend failure."""

    status_code = 500
    code = "storage_error"
    description = "Unexpected storage failure"
    blames_backend = True


class BackendUnavailable(StorageError):
    """The backend could not be reached or timed out; the client may retry later."""

    status_code = 503
    code = "backend_unavailable"
    description = "Backend unavailable; retry after the Retry-After delay"
    retry_after_seconds = 2

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}
