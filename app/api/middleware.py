"""Every HTTP request: a request id, one log line, and the request metrics (pure ASGI, so
streaming bodies pass through untouched)."""

from __future__ import annotations

import logging
import re
import time
import uuid

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import RequestTimeout
from app.logs import request_id
from app.metrics import Metrics

log = logging.getLogger("app.access")
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
HEADER = b"x-request-id"


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(HEADER, b"").decode("latin-1")
        rid = given if _VALID_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status, received, sent = 500, 0, 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def tagging_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (HEADER, rid.encode())]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, counting_receive, tagging_send)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", "unmatched")
            seconds = time.perf_counter() - started
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(seconds)
            self.metrics.received.labels(route).inc(received)
            self.metrics.sent.labels(route).inc(sent)
            log.info(
                "%s %s %s %.1fms in=%d out=%d",
                method,
                route,
                status,
                seconds * 1000,
                received,
                sent,
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 1),
                    "bytes_in": received,
                    "bytes_out": sent,
                },
            )
            request_id.reset(token)


class ClientDeadline:
    """A slow client cannot hold the service forever: every wait for the next piece of the request
    body, and for the client to take the next piece of the response, has a deadline.

    A stalled upload becomes ``RequestTimeout`` where the route reads the body (408, and whatever
    was stored of it is rolled back); a stalled download is abandoned and the connection closed.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:  # from now on only a disconnect can come, and waiting for it is free
                return await receive()
            with anyio.move_on_after(self.seconds):
                message = await receive()
                body_done = message["type"] != "http.request" or not message.get("more_body")
                return message
            raise RequestTimeout(
                f"No request data for {self.seconds:g} s. Send the request faster."
            )

        async def timed_send(message: Message) -> None:
            with anyio.move_on_after(self.seconds):
                await send(message)
                return
            raise RequestTimeout(f"The client took nothing for {self.seconds:g} s.")

        await self.app(scope, timed_receive, timed_send)
