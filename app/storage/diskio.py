"""Writing a stream of chunks to a file from worker threads, in batches, off the event loop."""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable
from typing import IO

import anyio.to_thread

from app.storage.base import Chunk
from app.storage.budget import Budget

WRITE_BATCH = 1024 * 1024
"""Chunks are gathered up to this many bytes per worker-thread call."""


async def write_in_batches(
    body: AsyncIterable[Chunk],
    file: IO[bytes],
    budget: Budget,
    observe: Callable[[Chunk], object] | None = None,
) -> int:
    """Write ``body`` to ``file`` (and through ``observe``, e.g. a digest); return the size.
    What a batch holds is counted against the upload ``budget`` until it is written."""

    def write(chunks: list[Chunk]) -> None:
        for chunk in chunks:
            file.write(chunk)
            if observe is not None:
                observe(chunk)

    size = 0
    pending: list[Chunk] = []
    pending_size = 0
    async with budget.holding() as held:
        async for chunk in body:
            await held.take(len(chunk))
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= WRITE_BATCH:
                await anyio.to_thread.run_sync(write, pending)
                size += pending_size
                pending, pending_size = [], 0
                held.release()
        await anyio.to_thread.run_sync(write, pending)
    return size + pending_size
