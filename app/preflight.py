"""Start-up checks: every misconfiguration the ``filegate`` command can find before it serves,
each reported as one line that names the setting (exit status 2), never as a traceback.

It opens the backends as the service will, then asks each a question only a correct
configuration answers: the local root takes a file; S3 lists the default bucket with the read
pair and starts (and at once aborts) a multipart upload there with the write pair; a FastDFS
tracker answers. What each failure means is decided from what the SDK raised.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack

from app.errors import FilegateError
from app.settings import Settings
from app.storage.budget import Budget
from app.storage.cache import uncached
from app.storage.fusion import open_routes
from app.storage.s3 import S3Backend
from app.storage.s3.errors import S3Refusal, Trouble


class Misconfigured(Exception):
    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"invalid setting {setting}: {problem}")


async def preflight(settings: Settings) -> None:
    """Raise ``Misconfigured`` for the first thing that would keep the service from working."""
    async with AsyncExitStack() as stack:
        budget = Budget(int(settings.upload_memory), settings.upload_memory_wait)
        try:
            async with asyncio.timeout(settings.backend_timeout * 2):
                routes = await open_routes(settings, stack, budget)
                for target in routes.targets.values():
                    backend = uncached(target.backend)
                    if isinstance(backend, S3Backend):
                        await _check_s3(settings, backend)
                    else:
                        await backend.check()
        except S3Refusal as exc:
            raise Misconfigured(*_s3_setting(settings, exc)) from exc
        except TimeoutError as exc:
            raise Misconfigured(_where(settings), "no answer within the time allowed") from exc
        except FilegateError as exc:
            raise Misconfigured(*_other_setting(settings, exc)) from exc


async def _check_s3(settings: Settings, backend: S3Backend) -> None:
    bucket = settings.s3_default_bucket
    await backend.probe_read(bucket)
    await backend.probe_write(bucket, f".filegate-preflight/{uuid.uuid4().hex}")


def _other_setting(settings: Settings, error: FilegateError) -> tuple[str, str]:
    if error.backend == "fastdfs":
        servers = ",".join(settings.fastdfs_tracker_servers)
        return "FASTDFS_TRACKER_SERVERS", f"no tracker answers at {servers} ({error.detail})"
    if error.backend == "local":
        return "LOCAL_ROOT", error.detail
    return _where(settings), error.detail


def _where(settings: Settings) -> str:
    if settings.storage_mode == "local":
        return "LOCAL_ROOT"
    return "S3_ENDPOINT" if settings.storage_mode in ("s3", "hybrid") else "FASTDFS_TRACKER_SERVERS"


def _s3_setting(settings: Settings, refusal: S3Refusal) -> tuple[str, str]:
    """Which setting an S3 refusal points at, and what to tell the operator."""
    endpoint = settings.s3_endpoint or "AWS S3"
    pair = "S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY"
    if refusal.reading and settings.s3_read_access_key_id:
        pair = "S3_READ_ACCESS_KEY_ID/S3_READ_SECRET_ACCESS_KEY"
    if refusal.kind == Trouble.UNREACHABLE:
        return "S3_ENDPOINT", f"cannot connect to {endpoint} ({refusal.detail})"
    if refusal.kind == Trouble.NOT_S3:
        return "S3_ENDPOINT", f"{endpoint} does not answer like S3 ({refusal.detail})"
    if refusal.kind == Trouble.BAD_KEY:
        return pair, f"{endpoint} does not accept this key pair ({refusal.detail})"
    if refusal.kind == Trouble.DENIED:
        needs = "s3:ListBucket, s3:GetObject" if refusal.reading else "s3:PutObject"
        bucket = settings.s3_default_bucket
        return pair, f"the pair may not use bucket {bucket!r} (it needs {needs} at least)"
    if refusal.kind == Trouble.NO_BUCKET:
        return "S3_DEFAULT_BUCKET", (
            f"bucket {settings.s3_default_bucket!r} does not exist at {endpoint} "
            "(create it, or set S3_CREATE_BUCKET=true)"
        )
    return "S3_ENDPOINT", f"S3 refused the request ({refusal.detail})"
