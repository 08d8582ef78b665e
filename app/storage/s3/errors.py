"""Where botocore's and aiohttp's failures become filegate's errors, for every S3 call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from app.errors import BackendUnavailable, FileNotFound, StorageError

_NOT_FOUND = {"NoSuchKey", "NotFound", "404", "NoSuchBucket"}
_UNAVAILABLE = {"SlowDown", "ServiceUnavailable", "RequestTimeout", "InternalError", "503", "500"}
_DENIED = {
    "AccessDenied",
    "403",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
}
UNREACHABLE = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
    aiohttp.ClientError,
    ConnectionError,
    TimeoutError,
)
"""What a call raises when S3 cannot be reached or stops answering."""


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def translate_errors(*, writing: bool = False) -> Iterator[None]:
    """Turn botocore and aiohttp failures into ``StorageError`` classes naming ``s3``."""
    try:
        yield
    except ClientError as exc:
        code = error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code == "NoSuchBucket" and writing:
            raise StorageError("The storage bucket does not exist.", backend="s3") from exc
        if code in _NOT_FOUND:
            raise FileNotFound("No such file.") from exc
        if code in _UNAVAILABLE or status >= 500:
            raise BackendUnavailable("S3 is unavailable; try again later.", backend="s3") from exc
        if code in _DENIED or status == 403:
            raise StorageError(
                "S3 refused the request: check the service's credentials.", backend="s3"
            ) from exc
        raise StorageError(f"S3 request failed ({code or status}).", backend="s3") from exc
    except UNREACHABLE as exc:
        raise BackendUnavailable("S3 is unreachable; try again later.", backend="s3") from exc
    except BotoCoreError as exc:
        raise StorageError("S3 request failed.", backend="s3") from exc
