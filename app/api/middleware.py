"""Around every HTTP request: a request id, one log line, the request metrics, and a deadline on
the client (pure ASGI, so streaming bodies pass through untouched).

The deadline costs one timer per request, not a cancel scope per chunk: each wait for the client
(the next piece of the request body, or taking the next piece of the response) records when it
began, and a watchdog cancels the request once one such wait has lasted ``CLIENT_IDLE_TIMEOUT``.
A stalled upload is rolled back by that cancellation and answered ``408``; a stalled download is
abandoned, which drops the connection (docs/architecture.md, "Where the bytes go").
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import body_of
from app.errors import FilegateError, RequestTimeout
from app.logs import request_id, request_marks
from app.metrics import Metrics
from app.server import draining
from app.text import refuse, url_is_utf8

log = logging.getLogger("app.access")
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
HEADER = b"x-request-id"


class _Ids:
    """Request ids unique to this process: a random prefix and a counter (no syscall each)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(12).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):08x}"


class _Watchdog:
    """Cancels ``task`` once a wait for the client has lasted ``seconds`` (as ``asyncio.timeout``
    does: ``cancel`` now, ``uncancel`` where the request ends)."""

    __slots__ = ("_handle", "_loop", "_seconds", "_task", "expired", "receiving", "sending")

    def __init__(self, task: asyncio.Task[Any], seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = task
        self._seconds = seconds
        self.receiving: float | None = None
        self.sending: float | None = None
        self.expired: str | None = None
        """Which wait ran out: ``"receiving"`` or ``"sending"``."""
        self._handle = self._loop.call_later(seconds, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        oldest = now
        for wait, since in (("receiving", self.receiving), ("sending", self.sending)):
            if since is not None and since <= oldest:
                oldest = since
                if now - since >= self._seconds:
                    self.expired = wait
                    self._task.cancel()
                    return
        self._handle = self._loop.call_later(self._seconds - (now - oldest), self._check)

    def stop(self) -> None:
        self._handle.cancel()


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, client_timeout: float) -> None:
        self.app = app
        self.metrics = metrics
        self.client_timeout = client_timeout
        self._ids = _Ids()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == HEADER:
                given = value
                break
        text = given.decode("latin-1")
        rid = text if _VALID_ID.fullmatch(text) else self._ids.next()
        token = request_id.set(rid)
        marks: set[str] = set()
        marks_token = request_marks.set(marks)
        started = time.perf_counter()
        status, received, sent = 500, 0, 0
        response_started = body_done = False
        loop = asyncio.get_running_loop()

        async def counting_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # from now on only a disconnect can come, and waiting for it is free
                return await receive()
            watchdog.receiving = loop.time()
            try:
                message = await receive()
            finally:
                watchdog.receiving = None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body")
            else:
                body_done = True
            return message

        async def tagging_send(message: Message) -> None:
            nonlocal status, sent, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), (HEADER, rid.encode())]
                if draining.is_set():  # the balancer's kept-alive connection ends with this
                    message["headers"].append((b"connection", b"close"))
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            watchdog.sending = loop.time()
            try:
                await send(message)
            finally:
                watchdog.sending = None

        self.metrics.in_flight.inc()
        task = asyncio.current_task()
        assert task is not None
        watchdog = _Watchdog(task, self.client_timeout)
        try:
            try:
                if _utf8_url(scope):
                    await self.app(scope, counting_receive, tagging_send)
                else:
                    malformed = refuse("url", "is not valid UTF-8 once percent-decoded")
                    status = await _answer(tagging_send, malformed)
            except asyncio.CancelledError:
                if watchdog.expired is None or task.uncancel() > 0:
                    raise  # not ours: the server is shutting down
            finally:
                watchdog.stop()
            if watchdog.expired == "receiving" and not response_started:
                problem = RequestTimeout(
                    f"No request data for {self.client_timeout:g} s. Send the request faster."
                )
                log.info("%s %s refused: %s", scope["method"], scope["path"], problem.detail)
                status = await _answer(tagging_send, problem)
            elif watchdog.expired:
                log.warning(
                    "%s %s: response aborted mid-stream, the client took nothing for %g s",
                    scope["method"],
                    scope["path"],
                    self.client_timeout,
                )
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path_format", "unmatched")
            seconds = time.perf_counter() - started
            method = scope["method"]
            self.metrics.observe(method, route, status, seconds, received, sent)
            log.info(
                "%s %s %s %.1fms in=%d out=%d%s",
                method,
                route,
                status,
                seconds * 1000,
                received,
                sent,
                "".join(f" {mark}" for mark in sorted(marks)),
                extra={
                    **({"served": sorted(marks)} if marks else {}),
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 1),
                    "bytes_in": received,
                    "bytes_out": sent,
                },
            )
            request_marks.reset(marks_token)
            request_id.reset(token)


def _utf8_url(scope: Scope) -> bool:
    """Whether path and query decode to UTF-8 (the server would hand on U+FFFD in their place)."""
    return url_is_utf8(scope.get("raw_path") or b"") and url_is_utf8(scope["query_string"])


async def _answer(send: Send, problem: FilegateError) -> int:
    """An answer before the application's: the 408 for a request abandoned before its response
    began (the rest was rolled back), or the 400 for a URL that is not UTF-8."""
    content = body_of(problem)
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in problem.headers().items()),
    ]
    start: dict[str, Any] = {
        "type": "http.response.start",
        "status": problem.status_code,
        "headers": headers,
    }
    try:
        await send(start)
        await send({"type": "http.response.body", "body": content})
    except OSError:  # the client is gone for good
        pass
    return problem.status_code
