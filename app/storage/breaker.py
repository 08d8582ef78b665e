"""Fail fast: stop waiting on a backend that keeps failing, for a short back-off.

Each backend has a ``Breaker``. After ``failures`` backend operations in a row end in
``BackendUnavailable`` (unreachable, timed out, 5xx), it opens: every request for that backend
is answered ``503`` at once, without touching it, for ``backoff`` seconds. Then one request goes
through as a trial; if it succeeds the breaker closes, if it fails the breaker opens again.
Requests to other backends never notice. ``/readyz`` and ``/metrics`` show each breaker's state
(docs/architecture.md, "Deadlines and fail-fast").

Only unavailability counts: a missing file, a refused credential, a client that goes away or a
file that is too large say nothing about the backend's health.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from app.errors import BackendUnavailable

State = Literal["closed", "open", "half-open"]


class Breaker:
    def __init__(self, backend: str, *, failures: int, backoff: float) -> None:
        self.backend = backend
        self._threshold = failures
        self._backoff = backoff
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False
        self.rejected = 0
        """Requests answered 503 without asking the backend (for the metrics)."""

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._trial or time.monotonic() - self._opened_at >= self._backoff:
            return "half-open"
        return "open"

    def _admit(self) -> bool:
        """Whether this call may try the backend; the first call after the back-off is the
        trial (the others keep failing fast until it has answered)."""
        if self._opened_at is None:
            return True
        if self._trial or time.monotonic() - self._opened_at < self._backoff:
            return False
        self._trial = True
        return True

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Around one backend operation: refuse at once while open; count how it ends."""
        if not self._admit():
            self.rejected += 1
            wait = self._backoff - (time.monotonic() - (self._opened_at or 0))
            error = BackendUnavailable(
                f"{self.backend} kept failing; not trying it again for {max(wait, 0):.0f} s.",
                backend=self.backend,
            )
            error.retry_after_seconds = max(1, round(wait))
            raise error
        try:
            yield
        except BackendUnavailable:
            self.failed()
            raise
        except BaseException:
            self._trial = False  # the trial ended, but told us nothing about the backend
            raise
        self.succeeded()

    def failed(self) -> None:
        self._failures += 1
        self._trial = False
        if self._opened_at is not None or self._failures >= self._threshold:
            self._opened_at = time.monotonic()

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial = False
