"""How filegate's file attributes travel as S3 user metadata, and come back as ``ObjectInfo``."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from app.storage.base import NewObject, ObjectInfo, ObjectRef

NAME_KEY = "filegate-name"
CRC_KEY = "filegate-crc32"
"""Written for single-part uploads, whose bytes are all known before the PUT."""
RESERVED_PREFIX = "filegate-"
_ENCODED = re.compile(r"=\?utf-8\?b\?([A-Za-z0-9+/=]*)\?=", re.IGNORECASE)
_CRC = re.compile(r"[0-9a-f]{8}")


def encode_value(value: str) -> str:
    """S3 user metadata travels as HTTP headers (ASCII): RFC 2047 ``B`` encoding where needed,
    and for the empty value, which S3 servers drop along with its key."""
    plain = value != "" and value.isascii() and value.isprintable() and value == value.strip()
    if plain and _ENCODED.fullmatch(value) is None:
        return value
    return f"=?UTF-8?B?{base64.b64encode(value.encode()).decode()}?="


def decode_value(value: str) -> str:
    match = _ENCODED.fullmatch(value)
    if match is None:
        return value
    try:
        return base64.b64decode(match.group(1), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return value


def encode(obj: NewObject, crc32: int | None = None) -> dict[str, str]:
    """The user metadata stored with ``obj``: its own entries, its name and (when known) CRC."""
    encoded = {key: encode_value(value) for key, value in obj.metadata.items()}
    encoded[NAME_KEY] = encode_value(obj.file_name)
    if crc32 is not None:
        encoded[CRC_KEY] = f"{crc32:08x}"
    return encoded


def object_info(ref: ObjectRef, answer: Mapping[str, Any], size: int) -> ObjectInfo:
    """What a HEAD or GET answer (botocore's shape) says of an object."""
    raw: dict[str, str] = answer.get("Metadata") or {}
    metadata = {k: decode_value(v) for k, v in raw.items() if not k.startswith(RESERVED_PREFIX)}
    name = decode_value(raw[NAME_KEY]) if NAME_KEY in raw else None
    crc = raw.get(CRC_KEY, "")
    last_modified: datetime = answer["LastModified"].astimezone(UTC)
    return ObjectInfo(
        ref=ref,
        size=size,
        etag=answer.get("ETag") or '""',
        last_modified=last_modified,
        file_name=name,
        content_type=answer.get("ContentType"),
        storage_class=answer.get("StorageClass") or "STANDARD",
        metadata=metadata,
        crc32=int(crc, 16) if _CRC.fullmatch(crc) else None,
    )
