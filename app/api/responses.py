"""Streaming responses that never pass off a failed transfer as a complete one."""

from __future__ import annotations

import logging
from typing import Any

import anyio
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send
from stream_zip import ZipError

from app.errors import FilegateError
from app.storage.base import ObjectStream

log = logging.getLogger(__name__)


class ObjectStreamResponse(StreamingResponse):
    """Streams a backend object and always releases it, even if the client goes away first.

    A backend failure after the headers went out cannot change the status any more: the response
    is left incomplete, so the server drops the connection and the client sees a failed transfer
    (never a short body that looks whole).
    """

    def __init__(self, stream: ObjectStream, label: str, **kwargs: Any) -> None:
        super().__init__(stream, **kwargs)
        self._object_stream = stream
        self._label = label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except (FilegateError, ZipError) as exc:
            log.warning(
                "transfer of %s aborted mid-stream: %s %s", self._label, type(exc).__name__, exc
            )
        finally:
            with anyio.CancelScope(shield=True):  # the client may be gone: clean up regardless
                await self._object_stream.aclose()
