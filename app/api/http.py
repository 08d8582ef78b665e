"""HTTP details of serving files: ranges, conditional requests, Content-Disposition."""

from __future__ import annotations

import re
import unicodedata
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import quote

from app.errors import InvalidArgument, RangeNotSatisfiable
from app.storage.base import ByteRange, ObjectInfo

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_ASCII_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\%;]')


def content_disposition(name: str, *, inline: bool = False, plain_ascii: bool = False) -> str:
    """RFC 6266: a quoted ASCII fallback plus the exact name as UTF-8 ``filename*``.

    With ``plain_ascii`` a name that is safe ASCII already gets the bare ``filename="…"`` form
    (the zip routes' contract: ``attachment; filename="files.zip"``, docs/api.md).
    """
    kind = "inline" if inline else "attachment"
    if plain_ascii and not _ASCII_UNSAFE.search(name):
        return f'{kind}; filename="{name}"'
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    fallback = _ASCII_UNSAFE.sub("_", folded).strip() or "download"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def http_date(info: ObjectInfo) -> str:
    return format_datetime(info.last_modified.replace(microsecond=0), usegmt=True)


def parse_range(header: str, size: int) -> ByteRange | None:
    """One ``bytes=`` range resolved against ``size``.

    ``None`` means serve the whole file (several ranges are answered with the whole file, which
    RFC 9110 allows); malformed syntax is ``InvalidArgument``; a range outside the file is
    ``RangeNotSatisfiable``.
    """
    spec = header.strip().replace(" ", "")
    if "," in spec and spec.startswith("bytes="):
        return None
    match = _RANGE.fullmatch(spec)
    if match is None or match.group(1) == match.group(2) == "":
        raise InvalidArgument("Malformed Range header: use bytes=a-b, bytes=a- or bytes=-n.")
    first, last = match.group(1), match.group(2)
    unsatisfiable = RangeNotSatisfiable("The range lies outside the file.", size=size)
    if first == "":
        suffix = _position(last)
        if suffix == 0 or size == 0:
            raise unsatisfiable
        return ByteRange(max(size - suffix, 0), size - 1)
    start = _position(first)
    if last != "" and _position(last) < start:
        raise InvalidArgument("Malformed Range header: the end is before the start.")
    if start >= size:
        raise unsatisfiable
    return ByteRange(start, size - 1 if last == "" else min(_position(last), size - 1))


_BEYOND_ANY_FILE = 10**18
"""A position of 19 or more digits, as far as ranges go (Python refuses ``int`` of a number over
4,300 digits, and no file is 10^18 bytes)."""


def _position(digits: str) -> int:
    return int(digits) if len(digits) < 19 else _BEYOND_ANY_FILE


def _etags(header: str) -> list[str]:
    return [tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()]


def not_modified(
    info: ObjectInfo, if_none_match: str | None, if_modified_since: str | None
) -> bool:
    """RFC 9110 §13.1.2-3: If-None-Match (weak comparison) wins over If-Modified-Since."""
    if if_none_match is not None:
        tags = _etags(if_none_match)
        return "*" in tags or info.etag.removeprefix("W/") in tags
    if if_modified_since is not None:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError, OverflowError):  # a zone offset of 20 digits
            return False
        if since.tzinfo is None:
            return False
        return info.last_modified.replace(microsecond=0) <= since
    return False


def range_applies(info: ObjectInfo, if_range: str | None) -> bool:
    """RFC 9110 §13.1.5: a Range is honoured only if If-Range (when sent) still matches."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return not value.startswith("W/") and value == info.etag
    return value == http_date(info)
