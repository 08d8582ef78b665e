"""A file as the service sees it: its id together with what its backend knows of it."""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass

from app.storage.base import ObjectInfo
from app.storage.ids import FileId
from app.text import is_content_type

GENERIC_TYPE = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class StoredFile:
    file_id: FileId
    """Where the file is."""
    info: ObjectInfo
    moved_from: FileId | None = None
    """The FastDFS id it was asked for by, when it was moved from there (app.storage.aliases)."""

    @property
    def asked_for(self) -> FileId:
        """The id the caller named: what its access is checked against."""
        return self.moved_from or self.file_id

    @property
    def name(self) -> str:
        """The original name as uploaded, else the last segment of the key."""
        return self.info.file_name or self.file_id.ref.key.rsplit("/", 1)[-1]


def content_type_for(name: str, given: str | None) -> str:
    """The client's content type, else one guessed from the name, else a generic one.

    A type that is not valid in a header (stored before the text rules, ``app.text``) counts as
    none: what is served is always valid HTTP."""
    if given and not is_content_type(given):
        given = None
    if given and given.split(";")[0].strip().lower() != GENERIC_TYPE:
        return given
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or given or GENERIC_TYPE
