"""The download decision: given what is known of a file and what the request asks, the status,
the headers and the byte range to send. A pure function (no I/O), decided before the first byte.

Conditional requests (``If-None-Match``, ``If-Modified-Since``) may answer 304; ``Range`` (unless
``If-Range`` no longer matches) answers 206 or 416; everything else is 200 with the whole file.
HTML, SVG and XML could run script in our origin if a browser rendered them, so they are always
attachments, whatever ``inline`` asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.api.http import content_disposition, http_date, not_modified, parse_range, range_applies
from app.storage.base import ByteRange, ObjectInfo
from app.storage.stored import content_type_for

CONDITIONAL_HEADERS = ("range", "if-none-match", "if-modified-since", "if-range")
_ACTIVE_TYPES = {
    "text/html",
    "application/xhtml+xml",
    "image/svg+xml",
    "text/xml",
    "application/xml",
}
_ACTIVE_EXTENSIONS = (".html", ".htm", ".xhtml", ".shtml", ".svg", ".svgz", ".xml", ".xsl", ".xslt")


@dataclass(frozen=True, slots=True)
class Decision:
    status: int
    """200, 206 or 304."""
    headers: dict[str, str]
    """Everything but ``Content-Type``, which is ``media_type``."""
    media_type: str
    byte_range: ByteRange | None = None

    @property
    def has_body(self) -> bool:
        return self.status != 304


def is_plain(request_headers: Mapping[str, str]) -> bool:
    """Neither a range nor a condition: the whole file, whatever it is (no HEAD needed first)."""
    return not any(name in request_headers for name in CONDITIONAL_HEADERS)


def active_content(media_type: str, name: str) -> bool:
    """HTML, SVG and XML can run script in our origin if a browser renders them."""
    essence = media_type.split(";")[0].strip().lower()
    return (
        essence in _ACTIVE_TYPES
        or essence.endswith("+xml")
        or name.lower().endswith(_ACTIVE_EXTENSIONS)
    )


def disposition(name: str, media_type: str, inline: bool) -> str:
    """Inline only for content that cannot script our origin."""
    return content_disposition(name, inline=inline and not active_content(media_type, name))


def decide(
    info: ObjectInfo,
    name: str,
    *,
    inline: bool,
    request_headers: Mapping[str, str],
    cache_control: str | None = None,
) -> Decision:
    """What to answer for ``info`` (served under ``name``) to a request with these headers.

    ``request_headers`` is looked up by lowercase name; ``cache_control`` goes with every answer
    (304s too) when given. Raises ``RangeNotSatisfiable`` (416) or
    ``InvalidArgument`` (a malformed Range) where the request cannot be served.
    """
    media_type = content_type_for(name, info.content_type)
    headers = {
        "ETag": info.etag,
        "Last-Modified": http_date(info),
        "Accept-Ranges": "bytes",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
        "Content-Disposition": disposition(name, media_type, inline),
    }
    if cache_control:
        headers["Cache-Control"] = cache_control
    if not_modified(
        info, request_headers.get("if-none-match"), request_headers.get("if-modified-since")
    ):
        return Decision(304, headers, media_type)
    byte_range: ByteRange | None = None
    range_header = request_headers.get("range")
    if range_header and range_applies(info, request_headers.get("if-range")):
        byte_range = parse_range(range_header, info.size)
    if byte_range is None:
        headers["Content-Length"] = str(info.size)
        return Decision(200, headers, media_type)
    headers["Content-Length"] = str(byte_range.length)
    headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{info.size}"
    return Decision(206, headers, media_type, byte_range)
