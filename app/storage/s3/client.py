"""Opening the S3 clients for the life of the process: one write pair, one optional read pair.

aioboto3's and botocore's public API: the botocore session is created here and handed to
aioboto3, so its parser factory can be given a faster timestamp parser. One aiohttp internal,
under uvloop: ``_write_head_and_body_apart``.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, cast

import aioboto3
import uvloop
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from aiohttp import http_writer
from botocore.utils import parse_timestamp

from app.settings import Settings, reveal

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any


MAX_ATTEMPTS = 3
"""Tries of one S3 request (botocore's standard retry mode; upload parts: ``send_part``)."""


def _config(settings: Settings) -> AioConfig:
    return AioConfig(
        s3={
            "addressing_style": settings.s3_addressing_style,
            # No SHA-256 of every body in Python (botocore would hash each upload part, even over
            # HTTPS when no Content-MD5 is sent): TLS protects the bytes in transit.
            "payload_signing_enabled": False,
        },
        signature_version="s3v4",  # presigned URLs too (botocore would presign with SigV2)
        connect_timeout=5,
        read_timeout=settings.backend_idle_timeout,  # each read; BACKEND_TIMEOUT bounds a call
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        max_pool_connections=64,
        parameter_validation=False,  # our own calls, always well-formed; saves time per call
        # Third-party S3 servers do not all accept the newer default CRC trailers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


def _parse_timestamp(value: str) -> datetime:
    """S3 sends RFC 7231 dates in headers and ISO 8601 in XML; the standard library parses both
    in a fraction of the time dateutil takes (a tenth of a HEAD's CPU time here)."""
    try:
        parsed = parsedate_to_datetime(value) if "," in value else datetime.fromisoformat(value)
    except (TypeError, ValueError):
        fallback: datetime = parse_timestamp(value)
        return fallback
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def botocore_session() -> AioSession:
    session = get_session()
    factory = session.get_component("response_parser_factory")
    factory.set_parser_defaults(timestamp_parser=_parse_timestamp)
    return session


def _write_head_and_body_apart() -> None:
    """Under uvloop, let aiohttp hand a request's head and body to the transport as two buffers.

    Otherwise aiohttp joins them into one new ``bytes`` first, on Python before 3.12.9, because
    CPython's own selector transport had a flaw in ``writelines`` (CVE-2024-12254). uvloop's
    transport is not that code, and without the join an 8 MiB upload part is not copied once
    more (docs/performance.md, "Upload parts without a copy"). ``SKIP_WRITELINES`` is aiohttp's
    internal: aiohttp is pinned, and tests/test_dependencies.py records the code that reads it.
    """
    if isinstance(asyncio.get_running_loop(), uvloop.Loop):
        http_writer.SKIP_WRITELINES = False


def parts_are_copied() -> bool:
    """Whether aiohttp copies an upload part once more to join it with its request head (then
    a part being sent is in memory twice: ``BufferPool``'s ``copies``)."""
    return bool(http_writer.SKIP_WRITELINES)


async def open_clients(
    settings: Settings, stack: AsyncExitStack, botocore: AioSession
) -> tuple[S3Client, S3Client]:
    """The write client and the read client (the same one unless a read pair is configured)."""
    session = aioboto3.Session(botocore_session=botocore)
    # Upload parts are sent straight from their pooled buffers (app.storage.budget); aiohttp
    # advises against large bodies in memory, which is exactly what a part is.
    warnings.filterwarnings(
        "ignore", "Sending a large body directly with raw bytes", ResourceWarning, "aiohttp"
    )
    _write_head_and_body_apart()
    config = _config(settings)

    def client(key_id: str | None, secret: str | None) -> S3Client:
        credentials: dict[str, Any] = {}
        if key_id and secret:  # otherwise boto's default credential chain
            credentials = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}

        async def opened() -> S3Client:
            made: S3Client = await stack.enter_async_context(
                session.client(
                    "s3",
                    endpoint_url=settings.s3_endpoint,
                    region_name=settings.s3_region,
                    config=config,
                    **credentials,
                )
            )
            return made

        return cast(S3Client, LazyClient(opened))

    write = client(settings.s3_access_key_id, reveal(settings.s3_secret_access_key))
    if not settings.s3_read_access_key_id:
        return write, write
    read = client(settings.s3_read_access_key_id, reveal(settings.s3_read_secret_access_key))
    return write, read


class LazyClient:
    """An aiobotocore client opened at its first call: the reads and small writes of most
    requests go through obstore (``objects``), and botocore's models take about 12 MiB, so a
    process that never lists, copies, presigns or uploads a large file never loads them
    (docs/performance.md, "Memory"). Every method is called as ``await client.method(...)``."""

    def __init__(self, opened: Callable[[], Awaitable[S3Client]]) -> None:
        self._open = opened
        self._client: S3Client | None = None
        self._opening = asyncio.Lock()

    @property
    def opened(self) -> bool:
        return self._client is not None

    async def client(self) -> S3Client:
        if self._client is None:
            async with self._opening:
                if self._client is None:
                    self._client = await self._open()
        return self._client

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            method = getattr(await self.client(), name)
            return await method(*args, **kwargs)

        return call
