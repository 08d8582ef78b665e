"""The HTTP connections themselves: what a slow or idle client may hold.

uvicorn bounds an idle keep-alive connection (``timeout_keep_alive``) but nothing else: a client
may open a connection and send its request head one byte a minute, and any number of clients may
do so until the process runs out of file descriptors. ``GuardedProtocol`` is uvicorn's httptools
protocol with two limits more:

- ``CLIENT_HEADER_TIMEOUT``: a request's head (request line and headers) must arrive within this
  many seconds of the connection opening, or of the request's first byte on a kept-alive
  connection; otherwise the connection is closed.
- ``MAX_CONNECTIONS``: a connection beyond this many open ones (per worker) is answered ``503``
  with ``Retry-After`` and closed at once.

Once the head is in, the request body and the response are bounded by ``CLIENT_IDLE_TIMEOUT``
(``app.api.middleware``). These hooks are uvicorn internals, so uvicorn is pinned to one version
and ``tests/test_dependencies.py`` fails if they change.
"""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import Settings

_BUSY_BODY = b'{"detail": "Too many connections; retry shortly.", "code": "server_busy"}'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
"""What a connection beyond ``MAX_CONNECTIONS`` gets, before it is closed."""


@cache
def _limits() -> tuple[float, int]:
    """The two limits, from the same settings the app reads (once per worker process)."""
    settings = Settings()
    return settings.client_header_timeout, settings.max_connections


class GuardedProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout, self._max_connections = _limits()
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            transport.write(BUSY)
            transport.close()
            return
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._header_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()
