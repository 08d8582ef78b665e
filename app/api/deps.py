"""The injection vocabulary of the routers (``Annotated`` aliases over tiny accessors).

Every accessor is ``async def``: FastAPI would run a plain ``def`` in a worker thread, a thread
hop per dependency per request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request, Response
from fastapi.routing import APIRoute
from starlette.convertors import Convertor, register_url_convertor

from app.storage.bulk import BulkService
from app.storage.ids import FileId, parse_file_id
from app.storage.service import FileService

Arguments = Callable[[Request], Awaitable[dict[str, Any]]]
"""An endpoint's keyword arguments, computed from the request."""


def direct_route(arguments: Arguments) -> type[APIRoute]:
    """A FastAPI route class whose endpoint gets ``await arguments(request)`` instead of what
    FastAPI's per-request dependency machinery would compute, for the commonest small requests:
    that machinery cost about a tenth of a small download's CPU (docs/performance.md, "Small
    requests"). Only ``get_route_handler``, FastAPI's extension point for this, is replaced:
    the endpoint's signature still declares its parameters, and the OpenAPI document and every
    other route are as before. ``arguments`` must compute them as FastAPI would, with the same
    errors (a query value that does not validate: ``RequestValidationError``)."""

    class DirectRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            endpoint = self.endpoint

            async def handle(request: Request) -> Response:
                response: Response = await endpoint(**await arguments(request))
                return response

            return handle

    return DirectRoute


def files_of(request: Request) -> FileService:
    """The service opened by the lifespan."""
    files: FileService = request.state.files
    return files


async def get_files(request: Request) -> FileService:
    return files_of(request)


FilesDep = Annotated[FileService, Depends(get_files)]


async def get_bulk(request: Request) -> BulkService:
    bulk: BulkService = request.state.bulk
    return bulk


BulkDep = Annotated[BulkService, Depends(get_bulk)]
PrefixQuery = Annotated[
    str,
    Query(
        description="A folder in file-id form: s3:<bucket>/<folder>/ or local:<bucket>/<folder>/.",
        min_length=1,
    ),
]


async def file_id_in_path(
    file_id: Annotated[str, Path(description="A file id: s3:, local: or a FastDFS id.")],
) -> FileId:
    """The path's file id, parsed once for the whole request (``InvalidArgument`` if malformed)."""
    return parse_file_id(file_id)


FileIdDep = Annotated[FileId, Depends(file_id_in_path)]


class FileIdConvertor(Convertor[str]):
    """``/files/{file_id:file_id}/info``: any text up to the route's last segment, newlines too,
    so that a malformed id gets a 400 naming it rather than a 404 or a redirect."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class BareFileIdConvertor(FileIdConvertor):
    """``/files/{file_id:bare_file_id}``: a file id that is the whole rest of the path.

    Not the paths of the other ``/files`` routes: ``DELETE /files/upload`` or
    ``DELETE /files/<id>/info`` is then ``405`` (that path exists, not with that method) instead
    of a 400 for a malformed id. Generated keys never end in one of these words: their last
    segment starts with 16 hex digits (docs/api.md, "The OpenAPI document").
    """

    regex = (
        r"(?!(?:upload|batch-upload|download-zip|tus|summary|batch-delete|delete-prefix)$"
        r"|upload/|tus/)[\s\S]+(?<!/download)(?<!/info)(?<!/link)(?<!/copy)(?<!/migrate)"
    )


register_url_convertor("file_id", FileIdConvertor())
register_url_convertor("any_text", FileIdConvertor())  # a file name: refused by its rules, not 404
register_url_convertor("bare_file_id", BareFileIdConvertor())
