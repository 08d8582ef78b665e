"""File ids: ``s3:<bucket>/<key>``, ``local:<bucket>/<key>``, ``memory:<bucket>/<key>``, anything
else FastDFS.

Parsing decides only what an id *says*; whether this deployment may act on it (storage mode,
bucket allowlist) is decided by ``app.storage.fusion``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import quote

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

from app.errors import InvalidArgument
from app.storage.base import ObjectRef
from app.text import CONTROLS, SURROGATES

BackendName = Literal["local", "s3", "fastdfs", "memory"]

_PREFIXES: tuple[tuple[str, BackendName], ...] = (
    ("s3:", "s3"),
    ("local:", "local"),
    ("memory:", "memory"),
)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_FASTDFS_GROUP = re.compile(r"[A-Za-z0-9_-]{1,16}")
_FASTDFS_REMOTE = re.compile(r"M[0-9A-F]{2}/[0-9A-F]{2}/[0-9A-F]{2}/[A-Za-z0-9_.-]+")
_REFUSED_IN_KEYS = re.compile(rf"[{CONTROLS}{SURROGATES}\\]")
"""Cc, Cs and the backslash: some stores (and Windows) take ``\\`` as a separator, so ``..\\``
could climb out of a folder that an access rule checks by ``/`` alone (docs/api.md)."""
MAX_KEY_BYTES = 1024
RESERVED_FOLDER = ".filegate-tus"
"""Where S3 keeps resumable uploads' state (docs/tus.md): no file id reaches into it."""
ALIAS_FOLDER = ".filegate-moved"
"""Where S3 keeps where moved FastDFS files went (docs/fastdfs.md, "Leaving FastDFS")."""
RESERVED_FOLDERS = {
    RESERVED_FOLDER: "resumable uploads",
    ALIAS_FOLDER: "the records of moved FastDFS files",
}
"""Top-level folders of filegate's own: no file id, folder or listing reaches into them."""


def is_valid_bucket_name(name: str) -> bool:
    """S3's bucket naming rules (lowercase, digits, dots and hyphens; 3 to 63 characters)."""
    return _BUCKET.fullmatch(name) is not None and ".." not in name


@dataclass(frozen=True, slots=True)
class FileId:
    backend: BackendName
    ref: ObjectRef

    def __str__(self) -> str:
        path = f"{self.ref.bucket}/{self.ref.key}"
        return path if self.backend == "fastdfs" else f"{self.backend}:{path}"


def parse_file_id(raw: str) -> FileId:
    """Split an id into backend, bucket and key; ``InvalidArgument`` if it is malformed."""
    backend: BackendName = "fastdfs"
    rest = raw
    for prefix, name in _PREFIXES:
        if raw.startswith(prefix):
            backend, rest = name, raw[len(prefix) :]
            break
    bucket, sep, key = rest.partition("/")
    if not sep or not key:
        raise InvalidArgument("A file id needs a bucket (or group) and a key.", file_id=raw)
    if backend == "fastdfs":
        well_formed = _FASTDFS_REMOTE.fullmatch(key) is not None and 22 <= len(key) < 128
        if _FASTDFS_GROUP.fullmatch(bucket) is None or not well_formed:
            raise InvalidArgument("Malformed FastDFS file id.", file_id=raw)
    elif not is_valid_bucket_name(bucket):
        raise InvalidArgument("Malformed bucket name in file id.", file_id=raw)
    _check_key(key, raw)
    return FileId(backend, ObjectRef(bucket, key))


def _validated(value: object) -> FileId:
    if isinstance(value, FileId):
        return value
    if not isinstance(value, str):
        raise InvalidArgument("A file id must be a string.")
    return parse_file_id(value)


FileIdField = Annotated[
    FileId,
    PlainValidator(_validated),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "description": "A file id: s3:, local: or a FastDFS id."}),
]
"""A file id inside a request body: parsed once, where the body is read (``InvalidArgument``, a
400 naming the id, if it is malformed)."""


def _check_key(key: str, raw: str) -> None:
    if key.startswith("/"):
        raise InvalidArgument("A key must not start with '/'.", file_id=raw)
    if _REFUSED_IN_KEYS.search(key) is not None:
        raise InvalidArgument(
            "A key must not contain control characters, lone surrogates or '\\'.", file_id=raw
        )
    if any(segment in ("..", ".") for segment in key.split("/")):
        raise InvalidArgument("A key must not contain '.' or '..' segments.", file_id=raw)
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidArgument("The key is too long.", file_id=raw)
    top = key.split("/", 1)[0]
    if top in RESERVED_FOLDERS:
        raise InvalidArgument(f"{top}/ is reserved for {RESERVED_FOLDERS[top]}.", file_id=raw)


URL_SAFE = "/:@!$&'()*+,;="
"""What an id keeps as it is in a URL path (RFC 3986 pchar); the rest is percent-encoded."""


def in_url(file_id: str) -> str:
    """The id as it stands in a URL path, and in the tus ``File-Id`` header: UTF-8,
    percent-encoded (``%`` itself as ``%25``), so that it is always valid HTTP (docs/tus.md)."""
    return quote(file_id, safe=URL_SAFE)


def new_key(folder: str, file_name: str) -> str:
    """A fresh key, ``[<folder>/]<16 lowercase hex>_<file name>``; never taken from the client."""
    leaf = f"{secrets.token_hex(8)}_{file_name}"
    return f"{folder}/{leaf}" if folder else leaf
