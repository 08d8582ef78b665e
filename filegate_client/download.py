"""``filegate-client download``: N ranged GETs at once into ``<file>.part``, a checkpoint beside
it, resumed after an interruption, and verified before the final rename.

- The file is cut into 8 MiB blocks; ``--connections`` workers fetch blocks with ``Range`` and
  ``If-Range: <ETag>``, write them in place (``pwrite``) and record each finished block in
  ``<file>.part.json``. A run that finds both continues with the blocks not yet recorded.
- If the file changed on the service meanwhile, ``If-Range`` makes the service answer the whole
  file (``200``) instead of the range: the download starts again cleanly.
- Before the rename, the ``.part`` is checked by size and by a checksum the service knows: the
  CRC-32 that ``info`` reports (every file filegate stored has one), else what the ETag
  carries (a local or FastDFS CRC-32, or S3's MD5 of a one-part upload or of 8 MiB parts'
  MD5s). A mismatch leaves the existing file untouched, removes the ``.part`` and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import httpx

from filegate_client.api import Api, Failure, failure_of, file_path
from filegate_client.crc import crc32, crc32_combine
from filegate_client.progress import Bars
from filegate_client.workers import Cancel, run_all

MiB = 1024 * 1024
S3_PART = 8 * MiB
"""filegate's S3 part size: a multipart ETag is the MD5 of the MD5s of 8 MiB parts."""
BLOCK = S3_PART
"""One ranged GET; the same as a part, so each block's MD5 is a part's."""
_CRC_ETAG = re.compile(r'^"([0-9a-f]{8})(?:-[0-9a-f]+)?"$')
_MD5_ETAG = re.compile(r'^"([0-9a-f]{32})(?:-(\d+))?"$')


class Checkpoint:
    """Which blocks of a ``.part`` are written, for which version (ETag) of the file."""

    def __init__(self, path: Path, etag: str, size: int) -> None:
        self.path = path
        self.etag = etag
        self.size = size
        self.done: set[int] = set()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, etag: str, size: int) -> Checkpoint:
        checkpoint = cls(path, etag, size)
        try:
            saved = json.loads(path.read_text())
            if saved["etag"] == etag and saved["size"] == size:
                checkpoint.done = set(saved["done"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return checkpoint

    def record(self, block: int) -> None:
        with self._lock:
            self.done.add(block)
            temp = self.path.with_suffix(".tmp")
            temp.write_text(json.dumps({"etag": self.etag, "size": self.size,
                                        "done": sorted(self.done)}))  # fmt: skip
            os.replace(temp, self.path)


class Changed(Exception):
    """The file changed on the service: start again."""


def download(
    api: Api, bars: Bars, file_id: str, target: Path, *, connections: int
) -> dict[str, Any]:
    info = api.info(file_id)
    size, etag, checksum = _facts(info)
    part = target.with_name(target.name + ".part")
    checkpoint_path = target.with_name(target.name + ".part.json")
    for _attempt in range(3):
        checkpoint = Checkpoint.load(checkpoint_path, etag, size)
        if not checkpoint.done or not part.exists():
            checkpoint.done = set()
        resumed = len(checkpoint.done) * BLOCK
        if checkpoint.done:
            bars.say(f"{target.name}: resuming, {min(resumed, size):,} of {size:,} bytes here")
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, size)
            task = bars.add(target.name, size, min(resumed, size))
            blocks = [b for b in range((size + BLOCK - 1) // BLOCK) if b not in checkpoint.done]
            try:
                fetched = _fetch_all(
                    api, bars, task, file_id, fd, blocks, size, etag, checksum, checkpoint,
                    connections,
                )  # fmt: skip
            except Changed:
                info = api.info(file_id)
                size, etag, checksum = _facts(info)
                checkpoint_path.unlink(missing_ok=True)
                bars.say(f"{target.name}: the file changed on the service; starting again")
                continue
            os.fsync(fd)
        finally:
            os.close(fd)
        _verify(part, size, checksum, target, fetched)
        os.replace(part, target)
        _fsync_directory(target.parent)  # the rename itself survives a crash
        checkpoint_path.unlink(missing_ok=True)
        return {"file_id": file_id, "path": str(target), "size": size, "etag": etag}
    raise Failure(f"{file_id} keeps changing on the service", "changed")


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fetch_all(
    api: Api, bars: Bars, task: Any, file_id: str, fd: int, blocks: list[int], size: int,
    etag: str, checksum: str, checkpoint: Checkpoint, connections: int,
) -> dict[int, BlockSum]:  # fmt: skip
    """Fetch ``blocks`` into ``fd``; the checksums of each, taken from the bytes as they were
    written (hashlib and zlib-ng release the GIL, so the workers hash in parallel). Each attempt
    has its own ``Cancel``: one that found the file changed stops, the next starts afresh."""
    url = file_path(file_id, "/download")
    cancel = Cancel()
    kinds = _kinds(checksum)
    sums: dict[int, BlockSum] = {}

    def fetch(block: int) -> None:
        start = block * BLOCK
        end = min(start + BLOCK, size) - 1
        headers = {"Range": f"bytes={start}-{end}", "If-Range": etag}
        block_sum = BlockSum(kinds)
        try:
            with api.http.stream("GET", url, headers=headers) as response:
                if response.status_code == 200 and size > 0:
                    raise Changed
                if response.status_code >= 400:
                    response.read()
                    raise failure_of(response)
                offset = start
                for chunk in response.iter_raw():
                    cancel.check()
                    os.pwrite(fd, chunk, offset)
                    block_sum.update(chunk)
                    offset += len(chunk)
                    bars.advance(task, len(chunk))
                if offset != end + 1:
                    raise Failure("the service sent less than asked; run again to resume", "short")
        except httpx.TransportError as exc:
            raise Failure(
                f"the download was cut ({exc}); run the same command again to resume",
                "interrupted",
            ) from exc
        # start writing the block back now, so the final fsync has little left to wait for
        os.posix_fadvise(fd, start, end + 1 - start, os.POSIX_FADV_DONTNEED)
        sums[block] = block_sum
        checkpoint.record(block)

    if size > 0:
        run_all(fetch, blocks, connections, cancel)
    return sums


class BlockSum:
    """The checksums of one block that the ETag lets the client check: always the CRC-32, and
    the MD5 for an S3 ETag (of the whole file, or of 8 MiB parts)."""

    def __init__(self, kinds: frozenset[str]) -> None:
        self.length = 0
        self.crc = 0
        self._md5 = hashlib.md5(usedforsecurity=False) if "md5" in kinds else None

    def update(self, data: bytes) -> None:
        self.length += len(data)
        self.crc = crc32(data, self.crc)
        if self._md5 is not None:
            self._md5.update(data)

    @property
    def md5(self) -> bytes:
        return self._md5.digest() if self._md5 is not None else b""


def _facts(info: dict[str, Any]) -> tuple[int, str, str]:
    """Size, ETag (for ``If-Range``) and what to verify against, in ETag form: the CRC-32 the
    service reports (``"1a2b3c4d"``), else the ETag itself."""
    etag = str(info["etag"])
    crc32 = info.get("crc32")
    return int(info["file_size"]), etag, f'"{crc32}"' if crc32 else etag


def _kinds(checksum: str) -> frozenset[str]:
    return frozenset({"md5"}) if _MD5_ETAG.match(checksum) else frozenset()


def _verify(
    part: Path, size: int, checksum: str, target: Path, fetched: dict[int, BlockSum]
) -> None:
    """Size, then the checksum; a mismatch keeps ``target`` as it was. Blocks fetched in this
    run bring their checksums; blocks from an earlier run are read back."""
    actual = part.stat().st_size
    problem = None if actual == size else f"size {actual:,}, expected {size:,}"
    if problem is None:
        problem = _checksum_problem(part, size, checksum, fetched)
    if problem is not None:
        part.unlink(missing_ok=True)
        part.with_name(part.name + ".json").unlink(missing_ok=True)
        kept = "the existing file is untouched" if target.exists() else "nothing was written"
        raise Failure(f"verification failed for {target.name}: {problem}; {kept}", "corrupt")


def _checksum_problem(
    part: Path, size: int, checksum: str, fetched: dict[int, BlockSum]
) -> str | None:
    crc_match = _CRC_ETAG.match(checksum)
    md5_match = _MD5_ETAG.match(checksum)
    if crc_match is None and md5_match is None:
        return None  # no checksum to compare with (size only)
    count = (size + BLOCK - 1) // BLOCK
    sums: list[BlockSum] = []
    with part.open("rb") as file:
        for block in range(count):
            if block not in fetched:
                fetched[block] = BlockSum(_kinds(checksum))
                file.seek(block * BLOCK)
                fetched[block].update(file.read(BLOCK))
            sums.append(fetched[block])
    if crc_match is not None:
        crc = 0
        for block_sum in sums:
            crc = crc32_combine(crc, block_sum.crc, block_sum.length)
        return None if int(crc_match.group(1), 16) == crc else _MISMATCH
    assert md5_match is not None
    expected, parts = md5_match.group(1), md5_match.group(2)
    if parts is None:
        whole = hashlib.md5(usedforsecurity=False)
        if len(sums) == 1:
            actual = sums[0].md5.hex()
        else:  # an S3 object copied whole (rare): the MD5 of everything, in order
            with part.open("rb") as file:
                actual = hashlib.file_digest(file, lambda: whole).hexdigest()
        return None if actual == expected else _MISMATCH
    if int(parts) != len(sums):
        return None  # parts of another size: the checksum cannot be recomputed (size only)
    combined = hashlib.md5(b"".join(s.md5 for s in sums), usedforsecurity=False).hexdigest()
    return None if combined == expected else _MISMATCH


_MISMATCH = "the content does not match the service's checksum"
