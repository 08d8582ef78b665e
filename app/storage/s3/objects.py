"""The S3 backend's per-object hot path: GET, HEAD, one-shot PUT and DELETE through obstore.

obstore (a Rust object-store client) signs and sends one request for about a third of the CPU
aiobotocore spends on the same call (docs/performance.md). It runs with the same key pairs as the
aioboto3 clients (reads with the read pair, writes with the write pair, or botocore's default
credential chain with its refresh), the same addressing style, retries of idempotent requests,
and its own error types translated here. Multipart uploads, listing, copying, presigning and
bucket bootstrap stay with aioboto3 (``backend``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import (
    BaseError,
    GenericError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from app.errors import BackendUnavailable, FileNotFound, StorageError
from app.storage.base import ByteRange, Chunk, ObjectInfo, ObjectRef
from app.storage.s3 import metadata

if TYPE_CHECKING:
    from obstore import GetOptions, GetResult
    from obstore.store import S3Credential

Credentials = Callable[[], Coroutine[Any, Any, "S3Credential"]]
"""An async ``S3CredentialProvider`` for obstore."""
STREAM_CHUNK = 1024 * 1024
CHECK_PREFIX = ".filegate-readyz/"
"""What readiness lists: a prefix that holds nothing, so the answer is small."""
_ATTRIBUTES = {
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Type",
    "Cache-Control",
    "Storage-Class",
}
"""obstore's names for HTTP attributes; every other attribute is user metadata."""
_SERVER_ERROR = re.compile(r"status code: 5\d\d")
_GONE_TYPES = ("error sending request", "timed out", "connection", "operation timed out")


@contextmanager
def translate() -> Iterator[None]:
    """Turn obstore's failures into ``StorageError`` classes naming ``s3``."""
    try:
        yield
    except (NotFoundError, FileNotFoundError) as exc:  # obstore raises the builtin at run time
        raise FileNotFound("No such file.") from exc
    except (PermissionDeniedError, UnauthenticatedError) as exc:
        raise StorageError(
            "S3 refused the request: check the service's credentials.", backend="s3"
        ) from exc
    except GenericError as exc:
        message = str(exc)
        if _SERVER_ERROR.search(message) or any(word in message for word in _GONE_TYPES):
            raise BackendUnavailable("S3 is unavailable; try again later.", backend="s3") from exc
        raise StorageError("S3 request failed.", backend="s3") from exc
    except (TimeoutError, ConnectionError) as exc:
        raise BackendUnavailable("S3 is unreachable; try again later.", backend="s3") from exc
    except BaseError as exc:
        raise StorageError("S3 request failed.", backend="s3") from exc


def _address(endpoint: str | None, bucket: str, style: str) -> tuple[str | None, bool]:
    """obstore's endpoint and virtual-host flag for ``bucket``, as botocore would address it:
    ``auto`` is virtual-hosted on AWS for names without dots, path-style elsewhere."""
    virtual = style == "virtual" or (style == "auto" and endpoint is None and "." not in bucket)
    if virtual and endpoint is not None:  # obstore wants the bucket in a virtual-host endpoint
        parts = urlsplit(endpoint)
        return f"{parts.scheme}://{bucket}.{parts.netloc}", True
    return endpoint, virtual


class ObjectClient:
    """One obstore store per allowed bucket and key pair, opened once for the process."""

    def __init__(
        self,
        *,
        endpoint: str | None,
        region: str,
        addressing_style: str,
        buckets: frozenset[str],
        write: Credentials,
        read: Credentials,
        timeout: float = 10,
        idle_timeout: float = 30,
    ) -> None:
        def store(bucket: str, credentials: Credentials) -> S3Store:
            url, virtual = _address(endpoint, bucket, addressing_style)
            return S3Store(
                bucket,
                endpoint=url,
                region=region,
                virtual_hosted_style_request=virtual,
                credential_provider=credentials,
                unsigned_payload=True,  # as aioboto3: no SHA-256 of every body in the signature
                client_options={
                    "allow_http": url is not None and url.startswith("http://"),
                    "connect_timeout": "5s",
                    "timeout": "7d",  # a whole transfer may take long; stalls are bounded below
                    "read_timeout": timedelta(seconds=idle_timeout),
                    "pool_max_idle_per_host": "64",
                },
                retry_config={
                    "max_retries": 2,
                    "retry_timeout": timedelta(seconds=timeout),
                    "backoff": {
                        "init_backoff": timedelta(milliseconds=100),
                        "max_backoff": timedelta(seconds=2),
                        "base": 2,
                    },
                },
            )

        self._read = {bucket: store(bucket, read) for bucket in buckets}
        self._write = {bucket: store(bucket, write) for bucket in buckets}

    async def check(self, bucket: str) -> None:
        """List one page of ``bucket`` with the read pair: S3 answers, the pair may read, the
        bucket exists (a HEAD cannot tell a missing bucket from a missing key)."""
        with translate():
            async for _ in obstore.list(self._read[bucket], CHECK_PREFIX, chunk_size=1):
                break

    async def head(self, ref: ObjectRef) -> ObjectInfo:
        with translate():
            answer = await obstore.get_async(
                self._read[ref.bucket], ref.key, options={"head": True}
            )
        return _info(ref, answer)

    async def get(
        self, ref: ObjectRef, byte_range: ByteRange | None = None, *, whole_below: int = 0
    ) -> tuple[ObjectInfo, BodyStream | bytes]:
        """Start a GET: what is known of the object, and its body as a stream, or read whole
        when it is shorter than ``whole_below`` (one crossing into obstore instead of one per
        chunk and one more for the end)."""
        options: GetOptions = {}
        if byte_range is not None:
            options["range"] = (byte_range.start, byte_range.end + 1)
        with translate():
            answer = await obstore.get_async(self._read[ref.bucket], ref.key, options=options)
            info = _info(ref, answer)
            length = byte_range.length if byte_range is not None else info.size
            if length < whole_below:
                return info, bytes(await answer.bytes_async())
        return info, BodyStream(answer)

    async def put(
        self, ref: ObjectRef, data: Chunk, content_type: str, user_metadata: Mapping[str, str]
    ) -> str:
        """One PUT of a whole small body; returns the ETag."""
        attributes: dict[str, str] = {"Content-Type": content_type, **user_metadata}
        with translate():
            answer = await obstore.put_async(
                self._write[ref.bucket], ref.key, data, attributes=attributes, use_multipart=False
            )
        return answer["e_tag"] or '""'

    async def delete(self, ref: ObjectRef) -> None:
        with translate():
            await obstore.delete_async(self._write[ref.bucket], ref.key)


class BodyStream:
    """The body of one GET, in chunks of about a MiB (zero-copy views of obstore's buffers);
    ``aclose`` drops obstore's stream, which ends the response at once."""

    def __init__(self, answer: GetResult) -> None:
        self._chunks: Any = answer.stream(min_chunk_size=STREAM_CHUNK)

    def __aiter__(self) -> BodyStream:
        return self

    async def __anext__(self) -> memoryview:
        if self._chunks is None:
            raise StopAsyncIteration
        try:
            with translate():
                chunk = await anext(self._chunks)
        except BaseException:
            self._chunks = None
            raise
        return memoryview(chunk)

    async def aclose(self) -> None:
        self._chunks = None


def _info(ref: ObjectRef, answer: GetResult) -> ObjectInfo:
    meta = answer.meta
    attributes = answer.attributes
    raw = {k: v for k, v in attributes.items() if k not in _ATTRIBUTES}
    last_modified: datetime = meta["last_modified"].astimezone(UTC)
    return metadata.object_info(
        ref,
        {
            "Metadata": raw,
            "ETag": meta["e_tag"],
            "LastModified": last_modified,
            "ContentType": attributes.get("Content-Type"),
            "StorageClass": attributes.get("Storage-Class"),
        },
        meta["size"],
    )


def static_credentials(key_id: str, secret: str) -> Credentials:
    async def provide() -> S3Credential:
        return {
            "access_key_id": key_id,
            "secret_access_key": secret,
            "token": None,
            "expires_at": None,
        }

    return provide


def chain_credentials(fetch: Callable[[], Awaitable[Any]]) -> Credentials:
    """Credentials from botocore's default chain (environment, profile, instance or container
    role, web identity), asked again every few minutes so its refresh takes effect."""

    async def provide() -> S3Credential:
        found = await fetch()
        if found is None:
            raise StorageError("No S3 credentials found in the default chain.", backend="s3")
        frozen = await found.get_frozen_credentials()
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": datetime.now(UTC) + timedelta(minutes=5),
        }

    return provide
