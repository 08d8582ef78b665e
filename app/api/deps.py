"""The injection vocabulary of the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.storage.fusion import FileService


def get_files(request: Request) -> FileService:
    """The fusion service opened by the lifespan."""
    files: FileService = request.state.files
    return files


FilesDep = Annotated[FileService, Depends(get_files)]
