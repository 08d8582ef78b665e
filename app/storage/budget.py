"""A process-wide bound on the memory uploads hold, and the reusable part buffers of S3 uploads.

Every upload keeps a little of its body in memory before it reaches the backend: a batch of
chunks for the local disk, a part for S3. Each such piece is taken from one ``Budget``
(``UPLOAD_MEMORY``) first. When the budget is spent, a request waits for room (its body is not read
meanwhile, so the client is slowed by TCP itself), up to ``UPLOAD_MEMORY_WAIT`` seconds, then gets
``503 server_busy``. So the resident size stays bounded however many uploads run at once
(docs/architecture.md, "Where the bytes go").

S3 parts are filled in place in ``bytearray`` buffers that are handed back after the part is sent
and reused by the next part or upload: no fresh multi-MiB allocation per part, so the heap neither
grows nor fragments with the amount of data uploaded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.errors import ServerBusy


class Budget:
    """Bytes that may be held at once; ``acquire`` waits, first come first served."""

    def __init__(self, limit: int, wait_seconds: float) -> None:
        self.limit = limit
        self._wait = wait_seconds
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, size: int) -> int:
        """Take ``size`` bytes of the budget (at most all of it); returns what was taken."""
        size = min(size, self.limit)
        if not self._waiters and self.used + size <= self.limit:
            self.used += size
            return size
        waiter = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self._wait):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():  # granted just as we gave up
                self.release(size)
            else:
                self._waiters.remove(entry)
                self._wake()
            if isinstance(exc, TimeoutError):
                raise ServerBusy(
                    "Too many uploads at once: no upload memory was free for "
                    f"{self._wait:g} s. Retry later."
                ) from exc
            raise
        return size

    def release(self, size: int) -> None:
        self.used -= size
        self._wake()

    @asynccontextmanager
    async def holding(self) -> AsyncIterator[Held]:
        """Bytes taken piece by piece, all given back when the block ends."""
        held = Held(self)
        try:
            yield held
        finally:
            held.release()

    def _wake(self) -> None:
        while self._waiters:
            size, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if self.used + size > self.limit:
                return
            self._waiters.popleft()
            self.used += size
            waiter.set_result(None)


class Held:
    """What one piece of work holds of a budget."""

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self.amount = 0

    async def take(self, size: int) -> None:
        self.amount += await self._budget.acquire(size)

    def release(self) -> None:
        if self.amount:
            self._budget.release(self.amount)
            self.amount = 0


class BufferPool:
    """Reusable buffers of one size, each counted against the budget while it is taken.

    A buffer counts ``copies`` times its size: where aiohttp joins a part with its request head
    before it writes it (not under uvloop), a part being sent is in memory twice
    (docs/performance.md, "Memory")."""

    def __init__(self, budget: Budget, size: int, copies: int = 1) -> None:
        self.budget = budget
        self.size = size
        self._charge = min(size * copies, budget.limit)  # what acquire() takes at most
        self._keep = max(1, budget.limit // self._charge)
        """Free buffers kept for reuse: no more than could be taken at once."""
        self._free: list[bytearray] = []

    async def take(self) -> bytearray:
        await self.budget.acquire(self._charge)
        return self._free.pop() if self._free else bytearray(self.size)

    def give(self, buffer: bytearray) -> None:
        if len(self._free) < self._keep:
            self._free.append(buffer)
        self.budget.release(self._charge)
