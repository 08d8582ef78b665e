"""The application factory and the lifespan that owns every storage client.

Wiring only: settings in, an app out. Where a request goes from here is drawn in
docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from app.access import OPEN_WARNING, Keyring, LinkSigner
from app.api import (
    about,
    console,
    downloads,
    errors,
    files,
    folders,
    openapi,
    ops,
    tus,
    uploads,
    zip,
)
from app.api.middleware import RequestMiddleware
from app.metrics import Metrics
from app.server import drain_on_sigterm
from app.settings import Settings, reveal
from app.storage.aliases import Aliases
from app.storage.budget import Budget
from app.storage.bulk import BulkService
from app.storage.cache import uncached
from app.storage.fusion import open_routes
from app.storage.s3.backend import S3Backend
from app.storage.service import FileService
from app.storage.tus import TusService, open_tus, sweep_forever
from app.storage.validation import UploadPolicy
from app.storage.zip import ZipLimits

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
    bulk: BulkService
    tus: TusService | None
    keyring: Keyring
    links: LinkSigner
    metrics_key: str | None
    cache_control: str
    deployment: about.Deployment


def _settle_the_heap() -> None:
    """Start-up made everything that lives as long as the process (modules, SDK models,
    clients): move it out of the cyclic collector's way, and let it run less often. Requests
    allocate many short-lived objects; the default threshold (700) ran a collection every few
    requests, about a twentieth of a small request's CPU (docs/performance.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
"""glibc's mallopt parameters (malloc.h)."""
MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024


def tune_malloc() -> None:
    """glibc's malloc, set for a process that moves data in MiB-sized chunks (docs/performance.md,
    "Memory"). Not glibc: no-op.

    - Two arenas: glibc gives each thread that allocates its own heap, up to eight per core, and
      keeps what each one ever held; with the event loop, obstore's and anyio's threads, RSS grew
      with every burst of transfers.
    - Chunks below 4 MiB come from the heap, and up to 16 MiB free at its top is kept: with glibc's
      own sliding thresholds, a 1 MiB chunk freed at the top was given back to the kernel and
      the next one faulted its pages in again (a zip: about 40,000 page faults per GiB)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_ARENA_MAX, 2)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):
        pass


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service for ``settings`` (read from the environment when not given)."""
    tune_malloc()
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        drain_on_sigterm(settings.shutdown_drain_seconds)
        async with AsyncExitStack() as stack:
            budget = Budget(int(settings.upload_memory), settings.upload_memory_wait)
            routes = await open_routes(settings, stack, budget, app.state.metrics.cache)
            app.state.routes = routes  # the open backends, for a debugger (and the tests)
            policy = UploadPolicy(
                max_file_size=int(settings.max_file_size),
                whitelist=frozenset(settings.file_whitelist),
                blacklist=frozenset(settings.file_blacklist),
                max_batch_files=settings.max_batch_files,
            )
            zip_limits = ZipLimits(
                max_entries=settings.zip_max_entries,
                max_total_size=int(settings.zip_max_total_size),
            )
            keyring = Keyring(settings.keys)
            if keyring.open:
                log.warning(OPEN_WARNING)
            if settings.storage_mode == "memory":
                log.warning(
                    "STORAGE_MODE=memory: files are kept in this process's memory only (up to "
                    "MEMORY_MAX_SIZE=%d bytes). NOTHING SURVIVES A RESTART; every worker and "
                    "replica holds its own files.",
                    int(settings.memory_max_size),
                )
            if not settings.file_whitelist and not settings.file_blacklist:
                log.warning(
                    "Files of every type are accepted (FILE_BLACKLIST and FILE_WHITELIST are "
                    "empty): set FILE_BLACKLIST=exe,bat,cmd,com,scr to refuse executables."
                )
            aliases = None
            if "s3" in routes.targets:  # moved FastDFS files keep their ids (app.storage.aliases)
                s3 = uncached(routes.targets["s3"].backend)
                assert isinstance(s3, S3Backend)
                aliases = Aliases(s3, settings.s3_default_bucket)
            service = FileService(
                routes, policy, zip_limits, timeout=settings.backend_timeout, aliases=aliases
            )
            resumable = open_tus(settings, service)
            if resumable is not None:
                sweeper = asyncio.create_task(sweep_forever(resumable, settings.tus_sweep_interval))
                stack.callback(sweeper.cancel)
            _settle_the_heap()
            yield {
                "files": service,
                "bulk": BulkService(service, settings.storage_mode),
                "tus": resumable,
                "keyring": keyring,
                "links": LinkSigner(
                    reveal(settings.signing_secret),
                    max_expires_in=settings.link_max_expires,
                    base_url=settings.public_base_url,
                ),
                "metrics_key": reveal(settings.metrics_api_key),
                "cache_control": settings.download_cache_control,
                "deployment": about.Deployment(
                    storage_mode=settings.storage_mode,
                    links=settings.signing_secret is not None,
                    link_max_expires=settings.link_max_expires,
                    max_file_size=int(settings.max_file_size) or None,
                    tus=resumable is not None,
                ),
            }

    app = FastAPI(
        title="filegate",
        version="0.1.0",
        summary="Upload, download, zip, delete and inspect files on local disk, S3 or FastDFS.",
        lifespan=lifespan,
        docs_url=None,  # served from filegate's own assets (app/api/console.py): no CDN
        redoc_url=None,
        # filegate's own metrics and request log (app/api/middleware.py) describe every request;
        # FastAPI's OpenTelemetry hooks would only cost a provider lookup per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.metrics = Metrics()
    app.state.public_base_url = (settings.public_base_url or "").rstrip("/") or None
    # Innermost first: CORS (so every answer, errors too, carries its headers), then the request
    # id, log line, metrics and client deadline around everything.
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=[*EXPOSED_HEADERS, *tus.EXPOSED],
            max_age=600,
        )
    app.add_middleware(
        RequestMiddleware, metrics=app.state.metrics, client_timeout=settings.client_idle_timeout
    )
    errors.install(app)
    for module in (tus, folders, zip, uploads, downloads, files, ops, about):
        app.include_router(module.router)
    console.install(app, console=settings.console_enabled, public_base_url=settings.public_base_url)
    openapi.install(app, settings)
    return app
