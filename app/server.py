"""The HTTP connections themselves: what a slow, idle or oversized client may hold.

uvicorn bounds an idle keep-alive connection (``timeout_keep_alive``) but nothing else: a client
may open a connection and send its request head one byte a minute, any number of clients may do
so until the process runs out of file descriptors, and httptools accepts a request line or a
header of any size, joining its pieces in memory as they come. ``GuardedProtocol`` is uvicorn's
httptools protocol with these limits more (docs/architecture.md, "The server layer"):

- ``CLIENT_HEADER_TIMEOUT``: a request's head (request line and headers) must arrive within this
  many seconds of the connection opening, or of the request's first byte on a kept-alive
  connection; otherwise the connection is closed.
- ``MAX_CONNECTIONS``: a connection beyond this many open ones (per worker) is answered ``503``
  with ``Retry-After`` and closed at once.
- ``MAX_REQUEST_LINE`` (the URL, ``414``), ``MAX_HEADER_SIZE`` (one header line, ``431``),
  ``MAX_HEADERS_SIZE`` (the whole head, ``431``) and ``MAX_HEADER_COUNT`` (``431``), as nginx
  bounds them. A head still incomplete past ``MAX_HEADERS_SIZE`` is refused as it arrives, so
  memory holds at most that and two received chunks.

Every refusal, and uvicorn's own ``400`` for a request it cannot parse, is the JSON error of
every other answer (``{detail, code}``), and the connection is closed after it.

Once the head is in, the request body and the response are bounded by ``CLIENT_IDLE_TIMEOUT``
(``app.api.middleware``). These hooks are uvicorn internals, so uvicorn is pinned to one version
and ``tests/test_dependencies.py`` fails if they change.

``drain_on_sigterm`` puts ``SHUTDOWN_DRAIN_SECONDS`` between SIGTERM and uvicorn's shutdown, for
replicas behind a balancer (docs/scaling.md, "Restarts"): ``/readyz`` answers ``503`` and every
response closes its connection, so the balancer takes the replica out while it still serves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
from dataclasses import dataclass
from functools import cache
from types import FrameType
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.errors import FilegateError, HeadersTooLarge, MalformedRequest, UrlTooLong
from app.settings import Settings

log = logging.getLogger(__name__)

_BUSY_BODY = b'{"detail": "Too many connections; retry shortly.", "code": "server_busy"}'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
"""What a connection beyond ``MAX_CONNECTIONS`` gets, before it is closed."""
_REASONS = {400: b"Bad Request", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float
    max_connections: int
    max_request_line: int
    max_header_size: int
    max_headers_size: int
    max_header_count: int


@cache
def _limits() -> Limits:
    """The limits, from the same settings the app reads (once per worker process)."""
    settings = Settings()
    return Limits(
        settings.client_header_timeout,
        settings.max_connections,
        int(settings.max_request_line),
        int(settings.max_header_size),
        int(settings.max_headers_size),
        settings.max_header_count,
    )


def refusal(problem: FilegateError) -> bytes:
    """A whole HTTP response for ``problem``, sent before (or instead of) the application."""
    body = json.dumps({"detail": problem.detail, "code": problem.code}).encode()
    reason = _REASONS.get(problem.status_code, b"Bad Request")
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (problem.status_code, reason, len(body), body)
    )


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; ``send_400_response`` answers ``problem``."""


class GuardedProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = _limits()
        self._head_timer: asyncio.TimerHandle | None = None
        self._heads = 0
        """Heads completed on this connection: tells whether one completed within a chunk."""
        self._head_fed = 0
        """Bytes received while the current head was incomplete."""
        self._head_size = 0
        self._header_count = 0
        self._problem: FilegateError | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            transport.write(BUSY)
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        heads, in_head = self._heads, self._head_timer is not None
        super().data_received(data)
        if self._head_timer is None or self.transport.is_closing():
            return  # no head under way (or already refused)
        # A head that began within this chunk is counted from the next one: how much of this
        # chunk was the previous request's body is not known (memory: the limit and two chunks).
        began_here = heads != self._heads or not in_head
        self._head_fed = 0 if began_here else self._head_fed + len(data)
        if self._head_fed > self._limits.max_headers_size:
            self._refuse(self._headers_too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = self._header_count = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_size += len(url)
        if len(self.url) > self._limits.max_request_line:
            self._stop(UrlTooLong(f"The URL is longer than {self._limits.max_request_line} bytes."))

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 4  # ": " and CRLF
        self._head_size += size
        self._header_count += 1
        limits = self._limits
        if size > limits.max_header_size:
            self._stop(
                HeadersTooLarge(f"A header line is longer than {limits.max_header_size} bytes.")
            )
        if self._header_count > limits.max_header_count:
            self._stop(HeadersTooLarge(f"More than {limits.max_header_count} headers."))
        if self._head_size > limits.max_headers_size:
            self._stop(self._headers_too_large())
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._heads += 1
        self._head_fed = 0
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse, or to one a callback stopped."""
        problem = self._problem or MalformedRequest(f"{msg} Check the request line and headers.")
        self._problem = None
        self._refuse(problem)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _headers_too_large(self) -> HeadersTooLarge:
        return HeadersTooLarge(
            f"The request head is larger than {self._limits.max_headers_size} bytes."
        )

    def _stop(self, problem: FilegateError) -> None:
        self._problem = problem
        raise _Refused

    def _refuse(self, problem: FilegateError) -> None:
        log.info(
            "refused before routing: %s %s (%s)", problem.status_code, problem.code, problem.detail
        )
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(refusal(problem))
            self.transport.close()

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(
                self._limits.header_timeout, self._head_too_slow
            )

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


draining = threading.Event()
"""Set from SIGTERM until the process stops, when ``SHUTDOWN_DRAIN_SECONDS`` is above zero."""


def drain_on_sigterm(seconds: float) -> None:
    """Make the first SIGTERM drain for ``seconds`` before it reaches uvicorn's own handler.

    Called from the lifespan's start-up, in the main thread, where uvicorn has already installed
    its handler (it does so before the lifespan starts; a uvicorn internal, checked by
    tests/test_reliability.py). A second SIGTERM, or SIGINT, stops at once as before.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        return  # (an app served in a test's thread has no signals to handle)
    uvicorn_handler = signal.getsignal(signal.SIGTERM)
    if not callable(uvicorn_handler):
        return

    def handler(sig: int, frame: FrameType | None) -> None:
        if draining.is_set():
            uvicorn_handler(sig, frame)
            return
        draining.set()
        log.info("SIGTERM: draining for %g s (/readyz is 503), then shutting down", seconds)
        timer = threading.Timer(seconds, uvicorn_handler, (sig, None))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, handler)
