"""Where botocore's and aiohttp's failures become filegate's errors, for every S3 call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from app.errors import BackendUnavailable, FileNotFound, StorageError, StorageRefused

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
        if 400 <= status < 500:
            raise StorageRefused(
                f"S3 refused the request as invalid ({code or status}).", backend="s3"
            ) from exc
        raise StorageError(f"S3 request failed ({code or status}).", backend="s3") from exc
    except UNREACHABLE as exc:
        raise BackendUnavailable("S3 is unreachable; try again later.", backend="s3") from exc
    except BotoCoreError as exc:
        raise StorageError("S3 request failed.", backend="s3") from exc


class Trouble(StrEnum):
    """What a refused start-up request says about the configuration."""

    UNREACHABLE = "unreachable"
    NOT_S3 = "not S3"
    BAD_KEY = "bad key"
    DENIED = "denied"
    NO_BUCKET = "no bucket"
    OTHER = "other"


_BAD_KEY = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
}


class S3Refusal(Exception):
    """A start-up probe's failure, classified (``app.preflight`` names the setting)."""

    def __init__(self, kind: Trouble, detail: str, *, reading: bool) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.reading = reading


def refusal(exc: BaseException, *, reading: bool) -> S3Refusal:
    """Classify what a probe raised: unreachable, not S3, a wrong key, a missing permission,
    a missing bucket."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        detail = f"{code or 'no error code'}, HTTP {status}"
        if code in _BAD_KEY:
            return S3Refusal(Trouble.BAD_KEY, detail, reading=reading)
        if code in ("AccessDenied", "AllAccessDisabled"):
            return S3Refusal(Trouble.DENIED, detail, reading=reading)
        if code == "NoSuchBucket":
            return S3Refusal(Trouble.NO_BUCKET, detail, reading=reading)
        if not code or code.isdigit():  # an HTTP error without an S3 error document
            return S3Refusal(Trouble.NOT_S3, detail, reading=reading)
        return S3Refusal(Trouble.OTHER, detail, reading=reading)
    if isinstance(exc, UNREACHABLE):
        return S3Refusal(Trouble.UNREACHABLE, type(exc).__name__, reading=reading)
    return S3Refusal(Trouble.NOT_S3, type(exc).__name__, reading=reading)
