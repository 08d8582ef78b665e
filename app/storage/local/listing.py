"""Listing the local disk in S3's order, directory by directory, resumed after a key without
reading what lies before it."""

from __future__ import annotations

import os
from collections.abc import Iterator

from app.errors import FileNotFound, InvalidArgument
from app.storage.base import Listing, ObjectInfo, ObjectRef
from app.storage.local.core import LocalCore
from app.storage.local.files import TMP_PREFIX, run, translate


class LocalListing(LocalCore):
    async def list_page(
        self, bucket: str, prefix: str, *, delimiter: str, limit: int, token: str | None
    ) -> Listing:
        """Keys under ``prefix`` in S3's order, walked directory by directory and resumed after
        ``token`` (the last key of the previous page) without reading what lies before it."""
        if delimiter not in ("", "/"):
            raise InvalidArgument("The local disk lists with delimiter '/' or none.")
        try:
            return await run(self._list, bucket, prefix, delimiter, limit, token)
        except OSError as exc:
            raise translate(exc) from exc

    def _list(
        self, bucket: str, prefix: str, delimiter: str, limit: int, token: str | None
    ) -> Listing:
        base = self._path(ObjectRef(bucket, "x"))[:-2]  # the bucket's directory, checked
        folder, _, name_prefix = prefix.rpartition("/")
        directory = f"{base}{os.sep}{folder}" if folder else base
        if folder and os.path.realpath(directory) != os.path.normpath(directory):
            return Listing([], [], None)  # a symlinked folder: not followed
        objects: list[ObjectInfo] = []
        folders: list[str] = []
        key_prefix = f"{folder}/" if folder else ""
        found = _walk(directory, key_prefix, name_prefix, token, recursive=not delimiter)
        last: str | None = None
        for key, entry in found:
            if len(objects) + len(folders) == limit:
                return Listing(objects, folders, last)
            if entry is None:
                folders.append(key)
            else:
                try:
                    st = entry.stat(follow_symlinks=False)
                    objects.append(self._describe(st, ObjectRef(bucket, key), entry.path))
                except (FileNotFoundError, FileNotFound):  # deleted meanwhile
                    continue
            last = key
        return Listing(objects, folders, None)


def _walk(
    directory: str, key_prefix: str, name_prefix: str, after: str | None, *, recursive: bool
) -> Iterator[tuple[str, os.DirEntry[str] | None]]:
    """``(key, entry)`` in S3's key order (code point order, which is UTF-8 byte order), only
    keys after ``after``: files with their entry, and (not recursive) folders as ``key/`` with
    None. A folder sorts as its name plus ``/``, as its keys do. Folders wholly before ``after``
    are not opened; symlinks and temporary files are skipped."""
    try:
        with os.scandir(directory) as scan:
            entries = [e for e in scan if e.name.startswith(name_prefix)]
    except (FileNotFoundError, NotADirectoryError):
        return
    items: list[tuple[str, os.DirEntry[str], bool]] = []
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX) or entry.is_symlink():
            continue
        if entry.is_dir(follow_symlinks=False):
            items.append((f"{key_prefix}{entry.name}/", entry, True))
        elif entry.is_file(follow_symlinks=False):
            items.append((f"{key_prefix}{entry.name}", entry, False))
    items.sort(key=lambda item: item[0])
    for key, entry, is_dir in items:
        if not is_dir:
            if after is None or key > after:
                yield key, entry
        elif not recursive:
            if after is None or key > after:
                yield key, None
        elif after is None or key > after or after.startswith(key):
            yield from _walk(entry.path, key, "", after, recursive=True)
