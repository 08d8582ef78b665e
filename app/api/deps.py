"""The injection vocabulary of the routers (``Annotated`` aliases over tiny accessors).

Every accessor is ``async def``: FastAPI would run a plain ``def`` in a worker thread, a thread
hop per dependency per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from app.storage.ids import FileId, parse_file_id
from app.storage.service import FileService


def files_of(request: Request) -> FileService:
    """The service opened by the lifespan."""
    files: FileService = request.state.files
    return files


async def get_files(request: Request) -> FileService:
    return files_of(request)


FilesDep = Annotated[FileService, Depends(get_files)]


async def file_id_in_path(
    file_id: Annotated[str, Path(description="A file id: s3:, local: or a FastDFS id.")],
) -> FileId:
    """The path's file id, parsed once for the whole request (``InvalidArgument`` if malformed)."""
    return parse_file_id(file_id)


FileIdDep = Annotated[FileId, Depends(file_id_in_path)]
