"""The injection vocabulary of the routers.

Every accessor is ``async def``: FastAPI would run a plain ``def`` in a worker thread, a thread
hop per dependency per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.storage.fusion import FileService
from app.storage.zip import ZipLimits


async def get_files(request: Request) -> FileService:
    """The fusion service opened by the lifespan."""
    files: FileService = request.state.files
    return files


FilesDep = Annotated[FileService, Depends(get_files)]


async def get_zip_limits(request: Request) -> ZipLimits:
    """The operator's limits on one zip request."""
    limits: ZipLimits = request.state.zip_limits
    return limits


ZipLimitsDep = Annotated[ZipLimits, Depends(get_zip_limits)]
