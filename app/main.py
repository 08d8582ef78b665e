"""The application factory and the lifespan that owns every storage client."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TypedDict

import aioboto3
from aiobotocore.config import AioConfig
from botocore.utils import parse_timestamp
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.middleware.cors import CORSMiddleware

from app.access import Keyring, LinkSigner
from app.api import errors
from app.api.files import router as files_router
from app.api.middleware import ClientDeadline, RequestMiddleware
from app.api.ops import router as ops_router
from app.api.zip import router as zip_router
from app.metrics import Metrics
from app.runtime import keep_large_buffers_out_of_the_heap
from app.settings import Settings
from app.storage.fastdfs import FastDFSBackend
from app.storage.fusion import FileService, Target
from app.storage.ids import BackendName
from app.storage.local import LocalBackend
from app.storage.s3 import S3Backend
from app.storage.validation import UploadPolicy
from app.storage.zip import ZipLimits

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)
EXPOSED_HEADERS = [
    "Content-Disposition",
    "Content-Range",
    "Content-Length",
    "ETag",
    "Last-Modified",
    "Accept-Ranges",
    "Location",
    "X-Request-ID",
]


class State(TypedDict):
    """What every request sees as ``request.state``."""

    files: FileService
    zip_limits: ZipLimits
    keyring: Keyring
    links: LinkSigner
    metrics_key: str | None


def reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def _s3_config(settings: Settings) -> AioConfig:
    return AioConfig(
        s3={
            "addressing_style": settings.s3_addressing_style,
            # No SHA-256 of every body in Python (botocore would hash each upload part, even over
            # HTTPS when no Content-MD5 is sent): TLS protects the bytes in transit.
            "payload_signing_enabled": False,
        },
        signature_version="s3v4",  # presigned URLs too (botocore would presign with SigV2)
        connect_timeout=5,
        read_timeout=60,
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=64,
        parameter_validation=False,  # our own calls, always well-formed; saves time per call
        # Third-party S3 servers do not all accept the newer default CRC trailers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


def _fast_timestamps(session: aioboto3.Session) -> None:
    """botocore parses every Last-Modified with dateutil, a tenth of a HEAD's CPU time here;
    S3 sends RFC 7231 dates in headers and ISO 8601 in XML, both parsed by the standard library."""

    def parse(value: str) -> datetime:
        try:
            parsed = parsedate_to_datetime(value) if "," in value else datetime.fromisoformat(value)
        except (TypeError, ValueError):
            fallback: datetime = parse_timestamp(value)
            return fallback
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    factory = session._session.get_component("response_parser_factory")
    factory.set_parser_defaults(timestamp_parser=parse)


async def _open_s3(settings: Settings, stack: AsyncExitStack) -> S3Backend:
    session = aioboto3.Session()
    _fast_timestamps(session)
    config = _s3_config(settings)

    async def client(key_id: str | None, secret: str | None) -> S3Client:
        credentials: dict[str, Any] = {}
        if key_id and secret:  # otherwise boto's default credential chain
            credentials = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
        opened: S3Client = await stack.enter_async_context(
            session.client(
                "s3",
                endpoint_url=settings.s3_endpoint,
                region_name=settings.s3_region,
                config=config,
                **credentials,
            )
        )
        return opened

    write = await client(settings.s3_access_key_id, reveal(settings.s3_secret_access_key))
    read = write
    if settings.s3_read_access_key_id:
        read = await client(
            settings.s3_read_access_key_id, reveal(settings.s3_read_secret_access_key)
        )
    backend = S3Backend(write, read, probe_bucket=settings.s3_default_bucket)
    if settings.s3_create_bucket:
        await backend.ensure_bucket(settings.s3_default_bucket, settings.s3_region)
    return backend


UPLOADS_GO_TO: dict[str, BackendName] = {
    "local": "local",
    "s3": "s3",
    "fastdfs": "fastdfs",
    "hybrid": "s3",
}


async def _open_targets(settings: Settings, stack: AsyncExitStack) -> dict[BackendName, Target]:
    """The backends this storage mode enables, opened for the life of the process."""
    mode = settings.storage_mode
    targets: dict[BackendName, Target] = {}
    if mode == "local":
        local = LocalBackend(settings.local_root)
        await local.check()
        targets["local"] = Target(local, frozenset({settings.local_bucket}), settings.local_bucket)
    if mode in ("s3", "hybrid"):
        s3 = await _open_s3(settings, stack)
        targets["s3"] = Target(s3, settings.allowed_s3_buckets, settings.s3_default_bucket)
    if mode in ("fastdfs", "hybrid"):
        fastdfs = FastDFSBackend(
            settings.fastdfs_tracker_servers,
            settings.fastdfs_connect_timeout,
            settings.fastdfs_network_timeout,
        )
        stack.push_async_callback(fastdfs.close)
        legacy = mode == "hybrid"  # the switches guard legacy files in hybrid mode only
        targets["fastdfs"] = Target(
            fastdfs,
            frozenset(),  # the tracker chooses the group
            "",
            readable=settings.fastdfs_download_enabled or not legacy,
            deletable=settings.fastdfs_delete_enabled or not legacy,
        )
    return targets


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service for ``settings`` (read from the environment when not given)."""
    settings = settings or Settings()
    keep_large_buffers_out_of_the_heap()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        async with AsyncExitStack() as stack:
            targets = await _open_targets(settings, stack)
            policy = UploadPolicy(
                max_file_size=int(settings.max_file_size),
                whitelist=frozenset(settings.file_whitelist),
                blacklist=frozenset(settings.file_blacklist),
                max_batch_files=settings.max_batch_files,
            )
            keyring = Keyring(settings.keys)
            if keyring.open:
                log.warning(
                    "No API keys configured (API_KEYS, API_KEYS_FILE): "
                    "anyone who can reach this service may read, write and delete files."
                )
            yield {
                "files": FileService(targets, UPLOADS_GO_TO[settings.storage_mode], policy),
                "zip_limits": ZipLimits(
                    max_entries=settings.zip_max_entries,
                    max_total_size=int(settings.zip_max_total_size),
                ),
                "keyring": keyring,
                "links": LinkSigner(
                    reveal(settings.signing_secret),
                    max_expires_in=settings.link_max_expires,
                    base_url=settings.public_base_url,
                ),
                "metrics_key": reveal(settings.metrics_api_key),
            }

    app = FastAPI(
        title="filegate",
        version="0.1.0",
        summary="Upload, download, zip, delete and inspect files on local disk, S3 or FastDFS.",
        lifespan=lifespan,
    )
    app.state.metrics = Metrics()
    # Innermost first: client deadlines, then CORS (so every answer, errors too, carries its
    # headers), then the request id, log line and metrics around everything.
    app.add_middleware(ClientDeadline, seconds=settings.client_idle_timeout)
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
            allow_headers=["*"],
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )
    app.add_middleware(RequestMiddleware, metrics=app.state.metrics)
    errors.install(app)
    app.include_router(zip_router)
    app.include_router(files_router)
    app.include_router(ops_router)
    errors.document_validation_as_400(app)
    return app
