"""``filegate-client upload``: files and directories, several at once; large files through the
service's tus endpoint, so a cut upload resumes on the next run of the same command.

The tus URL of each unfinished upload is kept in a small state file in the user's cache directory
(``$XDG_CACHE_HOME/filegate-client/uploads.json``), keyed by the service, the file (path, size,
modification time) and where it goes. A run that finds an entry asks the service where the upload
stands (HEAD) and sends the rest; a finished or expired upload drops its entry.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, unquote

import httpx

from filegate_client.api import TUS, Api, Failure, failure_of
from filegate_client.crc import crc32
from filegate_client.progress import Bars
from filegate_client.workers import Cancel, run_all

MiB = 1024 * 1024
TUS_THRESHOLD = 8 * MiB
"""Files from this size on go through tus; smaller ones in one PUT."""


@dataclass(frozen=True)
class Item:
    path: Path
    folder: str | None
    size: int


def expand(paths: list[str], folder: str | None) -> list[Item]:
    """Files as given, and every file below a directory, its relative folders kept below
    ``folder`` (``photos/2026/a.jpg`` from ``upload photos``)."""
    items: list[Item] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            base = path.resolve().name
            for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
                relative = file.relative_to(path).parent.as_posix()
                parts = [part for part in (folder, base, relative) if part and part != "."]
                items.append(Item(file, "/".join(parts) or None, file.stat().st_size))
        elif path.is_file():
            items.append(Item(path, folder, path.stat().st_size))
        else:
            raise Failure(f"{raw}: no such file or directory", "usage")
    return items


class StateFile:
    """The tus URLs of unfinished uploads, shared safely by parallel uploads and runs."""

    def __init__(self) -> None:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        self.path = cache / "filegate-client" / "uploads.json"

    def _update(self, change: Any) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            file.seek(0)
            try:
                state = json.loads(file.read() or "{}")
            except ValueError:
                state = {}
            result = change(state)
            file.seek(0)
            file.truncate()
            file.write(json.dumps(state, indent=1))
            return result

    def get(self, key: str) -> str | None:
        return self._update(lambda state: state.get(key))  # type: ignore[no-any-return]

    def put(self, key: str, url: str) -> None:
        self._update(lambda state: state.__setitem__(key, url))

    def drop(self, key: str) -> None:
        self._update(lambda state: state.pop(key, None))


def _key(api: Api, item: Item, bucket: str | None, metadata: dict[str, str]) -> str:
    stat = item.path.stat()
    where = json.dumps([item.folder, bucket, metadata], sort_keys=True)
    return f"{api.settings.url}|{item.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{where}"


def _read(file: BinaryIO, offset: int, size: int) -> Iterator[bytes]:
    """``size`` bytes of ``file`` from ``offset``, a MiB at a time (``pread``: no file position)."""
    end = offset + size
    while offset < end:
        piece = os.pread(file.fileno(), min(MiB, end - offset), offset)
        if not piece:
            raise Failure("The file became shorter while it was sent.", "changed")
        offset += len(piece)
        yield piece


def _pieces(file: BinaryIO, offset: int, size: int, bars: Bars, task: Any) -> Iterator[bytes]:
    """One PATCH body, read as it is sent: memory stays flat at any chunk size."""
    for piece in _read(file, offset, size):
        bars.advance(task, len(piece))
        yield piece


def _crc32_of(file: BinaryIO, offset: int, size: int) -> str:
    """The ``Upload-Checksum`` of one PATCH (read once more to send: the page cache serves it)."""
    crc = 0
    for piece in _read(file, offset, size):
        crc = crc32(piece, crc)
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


class Uploader:
    def __init__(
        self,
        api: Api,
        bars: Bars,
        *,
        bucket: str | None,
        metadata: dict[str, str],
        chunk_size: int,
        cancel: Cancel,
    ) -> None:
        self.api = api
        self.cancel = cancel
        self.bars = bars
        self.bucket = bucket
        self.metadata = metadata
        self.chunk_size = chunk_size
        self.state = StateFile()

    def upload(self, item: Item) -> dict[str, Any]:
        if item.size < TUS_THRESHOLD:
            return self._put(item)
        return self._tus(item)

    def _put(self, item: Item) -> dict[str, Any]:
        task = self.bars.add(item.path.name, item.size)
        params = {k: v for k, v in (("folder", item.folder), ("bucket", self.bucket)) if v}
        headers = {f"X-Meta-{k}": v for k, v in self.metadata.items()}
        with item.path.open("rb") as file:
            data = file.read()
        result: dict[str, Any] = self.api.json(
            "PUT", f"/files/upload/{quote(item.path.name)}", params=params, content=data,
            headers={**headers, "Content-Type": "application/octet-stream"},
        )  # fmt: skip
        self.bars.advance(task, item.size)
        return result

    def _tus(self, item: Item) -> dict[str, Any]:
        key = _key(self.api, item, self.bucket, self.metadata)
        url = self.state.get(key)
        offset = 0
        if url is not None:
            head = self.api.http.head(url, headers=TUS)
            if head.status_code == 200 and "upload-offset" in head.headers:
                offset = int(head.headers["upload-offset"])
                if "file-id" in head.headers:  # finished in a run that did not hear the answer
                    self.state.drop(key)
                    return self.api.info(unquote(head.headers["file-id"]))
                self.bars.say(f"{item.path.name}: resuming at {offset:,} of {item.size:,} bytes")
            else:
                url = None
        if url is None:
            url = self._create(item)
            self.state.put(key, url)
        task = self.bars.add(item.path.name, item.size, offset)
        with item.path.open("rb") as file:
            while True:
                self.cancel.check()
                size = min(self.chunk_size, item.size - offset)
                checksum = _crc32_of(file, offset, size)
                try:
                    answer = self.api.http.patch(
                        url,
                        content=_pieces(file, offset, size, self.bars, task),
                        headers={
                            **TUS,
                            "Content-Type": "application/offset+octet-stream",
                            "Content-Length": str(size),  # not chunked: the body is a generator
                            "Upload-Offset": str(offset),
                            "Upload-Checksum": f"crc32 {checksum}",
                        },
                    )
                except (httpx.TransportError, OSError) as exc:
                    raise Failure(
                        f"{item.path.name}: the upload was cut at {offset:,} bytes ({exc}); "
                        "run the same command again to resume", "interrupted",
                    ) from exc  # fmt: skip
                if answer.status_code != 204:
                    raise failure_of(answer)
                offset = int(answer.headers["upload-offset"])
                if "file-id" in answer.headers:
                    self.state.drop(key)
                    return self.api.info(unquote(answer.headers["file-id"]))

    def _create(self, item: Item) -> str:
        meta = {"filename": item.path.name}
        if item.folder:
            meta["folder"] = item.folder
        if self.bucket:
            meta["bucket"] = self.bucket
        if self.metadata:
            meta["metadata"] = json.dumps(self.metadata)
        header = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items())
        answer = self.api.request(
            "POST", "/files/tus",
            headers={**TUS, "Upload-Length": str(item.size), "Upload-Metadata": header},
        )  # fmt: skip
        return answer.headers["location"]


def upload_all(uploader: Uploader, items: list[Item], parallel: int) -> list[dict[str, Any]]:
    """Upload every item, ``parallel`` at a time; the results in the order given. A failure or
    Ctrl-C stops the others between two PATCHes, resumable."""
    return run_all(uploader.upload, items, parallel, uploader.cancel)
