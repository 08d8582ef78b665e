"""Incremental multipart/form-data parsing straight from the request stream.

python-multipart's push parser is fed chunk by chunk as they arrive; its callbacks queue small
events that the route pulls one at a time, so a file part's bytes flow to the backend with no
spooling, and memory holds at most one received chunk's worth of events.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import InvalidArgument
from app.storage.base import Chunk
from app.text import utf8

MAX_TEXT_FIELD = 64 * 1024
MAX_PART_HEADER = 8 * 1024
"""A part's header line, as nginx bounds a request's (a filename is at most 200 bytes)."""
MAX_PART_HEADERS = 16

EventKind = Literal["part", "data", "end", "done"]


@dataclass(frozen=True, slots=True)
class FormPart:
    name: str
    filename: str | None
    content_type: str | None


class FormStream:
    """Parts of a multipart body, pulled in order; each part's data must be read (or skipped)
    before the next part is asked for."""

    def __init__(self, stream: AsyncIterator[bytes], content_type: str | None) -> None:
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise InvalidArgument("The request body must be multipart/form-data with a boundary.")
        self._stream = stream
        self._events: deque[tuple[EventKind, object]] = deque()
        self._headers: dict[str, bytes] = {}
        self._field = b""
        self._value = b""
        self._in_part = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": lambda: self._events.append(("end", None)),
                "on_end": lambda: self._events.append(("done", None)),
            },
        )

    def _on_part_begin(self) -> None:
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]
        self._bound(self._field)

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._bound(self._value)

    def _on_header_end(self) -> None:
        if len(self._headers) >= MAX_PART_HEADERS:
            raise InvalidArgument(f"A form part has more than {MAX_PART_HEADERS} headers.")
        self._headers[self._field.decode("latin-1").lower()] = self._value
        self._field = self._value = b""

    @staticmethod
    def _bound(text: bytes) -> None:
        if len(text) > MAX_PART_HEADER:
            raise InvalidArgument(f"A form part's header is longer than {MAX_PART_HEADER} bytes.")

    def _on_headers_finished(self) -> None:
        self._events.append(("part", dict(self._headers)))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        # A view, not a copy: the chunk it points into lives as long as the view.
        self._events.append(("data", memoryview(data)[start:end]))

    async def _next(self) -> tuple[EventKind, object]:
        while not self._events:
            chunk = await anext(self._stream, None)
            if chunk is None:
                raise InvalidArgument("The multipart body ended before its closing boundary.")
            try:
                self._parser.write(chunk)
            except MultipartParseError as exc:
                raise InvalidArgument("The multipart body is malformed.") from exc
        return self._events.popleft()

    async def parts(self) -> AsyncIterator[FormPart]:
        while True:
            kind, payload = await self._next()
            if kind == "done":
                return
            if kind != "part" or not isinstance(payload, dict):
                continue
            disposition, options = parse_options_header(payload.get("content-disposition"))
            content_type = payload.get("content-type")
            if disposition != b"form-data" or b"name" not in options:
                raise InvalidArgument("A form part has no name.")
            filename = options.get(b"filename")
            self._in_part = True
            yield FormPart(
                name=utf8(options[b"name"], "form_field"),
                filename=None if filename is None else utf8(filename, "file_name"),
                content_type=utf8(content_type, "content_type") if content_type else None,
            )
            async for _ in self.data():
                pass  # skip whatever the consumer left unread

    async def data(self) -> AsyncIterator[Chunk]:
        """The current part's bytes as they arrive."""
        while self._in_part:
            kind, payload = await self._next()
            if kind == "end":
                self._in_part = False
            elif kind == "data" and isinstance(payload, memoryview) and payload:
                yield payload

    async def text(self, limit: int = MAX_TEXT_FIELD) -> str:
        """The current part as a (bounded) UTF-8 string."""
        chunks: list[Chunk] = []
        size = 0
        async for chunk in self.data():
            size += len(chunk)
            if size > limit:
                raise InvalidArgument(f"A form field is longer than {limit} bytes.")
            chunks.append(chunk)
        return utf8(b"".join(chunks), "form_field")
