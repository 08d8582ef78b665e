"""stream-zip's synchronous writer on a worker thread of its own, one per archive.

stream-zip's ``async_stream_zip`` hands every input chunk to the event loop and every output
chunk back to a thread pool, two round trips per chunk (about 0.2 CPU-seconds per GiB here,
docs/performance.md). Here one thread runs ``stream_zip`` for the whole archive; the loop feeds it
the entries' bytes through a bounded queue and takes the archive's bytes from another, so each
chunk crosses once in each direction, with cheap primitives. Memory stays bounded by ``depth``
chunks each way. stream-zip itself still checks every stored entry's CRC-32 as it writes it,
with zlib-ng's CRC-32 instead of CPython's zlib (``_use_zlib_ng``).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import stream_zip as stream_zip_module
import zlib_ng.zlib_ng
from stream_zip import Method, stream_zip

from app.storage.base import Chunk


def _use_zlib_ng() -> None:
    """stream-zip computes the CRC-32 of every entry it writes with its module's ``zlib``;
    zlib-ng is the drop-in replacement whose CRC-32 costs 0.05 CPU-seconds per GiB of archive
    instead of 0.28 (docs/performance.md, "CRC-32"). A stream-zip internal: stream-zip is pinned,
    and tests/test_dependencies.py records the function that reads it."""
    stream_zip_module.zlib = zlib_ng.zlib_ng  # type: ignore[attr-defined]


_use_zlib_ng()

END = object()
"""Put after an entry's last chunk."""
_ABORT = object()
_DONE = object()

Member = tuple[str, datetime, int, Method]
"""An entry's name, modification time, mode and method; its bytes come through ``put``."""


class _Abandoned(Exception):
    """The archive is no longer wanted: the worker thread stops where it is."""


class ZipWriter:
    def __init__(
        self,
        members: Sequence[Member],
        *,
        chunk_size: int,
        get_compressobj: Callable[[], Any],
        depth: int = 2,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._members = members
        self._chunk_size = chunk_size
        self._get_compressobj = get_compressobj
        self._input: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._input_room = asyncio.Semaphore(depth)
        self._output: asyncio.Queue[object] = asyncio.Queue()
        self._output_room = threading.Semaphore(depth)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="filegate-zip", daemon=True)

    # The event loop's side.

    async def put(self, item: Chunk | object) -> None:
        """The next chunk of the current entry, ``END``, or an exception to fail the archive."""
        await self._input_room.acquire()
        self._input.put(item)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The archive's bytes as stream-zip writes them; raises what failed it."""
        self._thread.start()
        while True:
            item = await self._output.get()
            self._output_room.release()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item

    def abort(self) -> None:
        """Stop the worker wherever it waits (safe to call more than once)."""
        self._stopped = True
        self._input.put(_ABORT)
        self._output_room.release()

    # The worker thread's side.

    def _take(self) -> Chunk:
        item = self._input.get()
        with contextlib.suppress(RuntimeError):  # the loop is closing: nobody waits any more
            self._loop.call_soon_threadsafe(self._input_room.release)
        if item is _ABORT:
            raise _Abandoned
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    def _entry(self) -> Iterator[bytes]:
        while (item := self._take()) is not END:
            yield item  # type: ignore[misc]  # a memoryview: stream-zip measures, checks, joins

    def _files(self) -> Iterator[tuple[str, datetime, int, Method, Iterator[bytes]]]:
        for name, modified, mode, method in self._members:
            yield name, modified, mode, method, self._entry()

    def _hand_over(self, item: object) -> None:
        self._output_room.acquire()
        if self._stopped:
            raise _Abandoned
        self._loop.call_soon_threadsafe(self._output.put_nowait, item)

    def _run(self) -> None:
        try:
            written = stream_zip(
                self._files(), chunk_size=self._chunk_size, get_compressobj=self._get_compressobj
            )
            for chunk in written:
                self._hand_over(chunk)
            self._hand_over(_DONE)
        except _Abandoned:
            return
        except BaseException as exc:  # a CRC mismatch, a backend failure fed in: to the loop
            with contextlib.suppress(_Abandoned, RuntimeError):
                self._hand_over(exc)
