"""What FastDFS keeps beside a file: its name, type and metadata, and a resumable upload's
state, as metadata records (docs/fastdfs.md, "Metadata"; docs/tus.md, "FastDFS")."""

from __future__ import annotations

import json
import re
from typing import Any

from app.errors import InvalidArgument
from app.storage.base import NewObject
from app.storage.validation import extension

NAME_KEY = "OriginFileName"
"""aiofdfs's own key for the original name, so files uploaded by earlier clients show theirs."""
TYPE_KEY = "ContentType"
TUS_KEY = "FilegateTus"
"""Prefix of the records a resumable upload keeps its state in (``app.storage.tus.fastdfs``)."""
TUS_STATE_KEY = f"{TUS_KEY}State"
INTERNAL_KEYS = ("Origin", TYPE_KEY, TUS_KEY)
MAX_META_NAME = 64
MAX_META_VALUE = 256
_FDFS_EXT = re.compile(r"[A-Za-z0-9_-]{1,6}")


def fdfs_ext(name: str) -> str:
    """FastDFS keeps up to 6 characters of ``[A-Za-z0-9._-]`` as the stored file's extension."""
    ext = extension(name)
    return ext if _FDFS_EXT.fullmatch(ext) else ""


def records_for(obj: NewObject) -> dict[str, str]:
    """The records stored with the file; refuses what FastDFS would store corrupted."""
    records = {NAME_KEY: obj.file_name, TYPE_KEY: obj.content_type, **obj.metadata}
    for name, value in records.items():
        if len(name.encode()) > MAX_META_NAME or len(value.encode()) > MAX_META_VALUE:
            raise InvalidArgument(
                f"FastDFS keeps metadata names up to {MAX_META_NAME} bytes and values up to "
                f"{MAX_META_VALUE} bytes; {name!r} is longer."
            )
        if any(c in name + value for c in "\x00\x01\x02"):
            raise InvalidArgument(f"Metadata {name!r} holds a byte FastDFS uses as a separator.")
    return records


def upload_state_records(state: dict[str, Any]) -> dict[str, str]:
    """A resumable upload's state as metadata records: its JSON (ASCII) cut into values FastDFS
    keeps whole (``FilegateTusState000``, ``…001``, …; docs/tus.md, "FastDFS")."""
    raw = json.dumps(state, ensure_ascii=True, separators=(",", ":"))
    return {
        f"{TUS_STATE_KEY}{n:03d}": raw[start : start + MAX_META_VALUE]
        for n, start in enumerate(range(0, len(raw), MAX_META_VALUE))
    }


def upload_state(records: dict[str, str]) -> dict[str, Any] | None:
    """The state ``upload_state_records`` stored, if the file carries one (``ValueError`` if it
    is damaged)."""
    parts = sorted((k, v) for k, v in records.items() if k.startswith(TUS_STATE_KEY))
    if not parts:
        return None
    state = json.loads("".join(v for _, v in parts))
    if not isinstance(state, dict):
        raise ValueError("not a resumable upload's state")
    return state


def unfinished_upload(records: dict[str, str]) -> bool:
    """An appender file a resumable upload is still writing: not a file yet (docs/tus.md)."""
    try:
        state = upload_state(records)
    except ValueError:
        return True
    return state is not None and not state.get("done")
