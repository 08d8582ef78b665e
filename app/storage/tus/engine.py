"""Resumable uploads (tus 1.0.0): the rules every store shares (docs/tus.md).

An upload is created with every upload rule checked (``FileService.new_object``: name, type, size,
bucket, folder, metadata, the key's scope) before anything is stored, and gets the file id it will
have once complete. Its state (``TusState``) lives in the storage backend, never in a process, so
any replica continues any upload. A store (``TusStore``) keeps that state and the bytes, and
serializes PATCHes of one upload by itself: S3 by conditional writes, the local disk by a file lock,
FastDFS by a lease in the appender file's metadata.

Here: the ``Upload-Metadata`` and ``Upload-Checksum`` formats, ownership, offsets, expiry, the
size bound of a PATCH, and which failures keep the bytes received so far.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from starlette.requests import ClientDisconnect

from app.access import Principal
from app.errors import (
    ChecksumMismatch,
    ClientGone,
    FileTooLarge,
    Forbidden,
    InvalidArgument,
    OffsetMismatch,
    RequestTimeout,
    UploadExpired,
    UploadNotFound,
)
from app.storage.base import Chunk, NewObject, ObjectRef
from app.storage.crc import crc32
from app.storage.ids import FileId, parse_file_id
from app.storage.service import FileService, UploadRequest
from app.text import check_text, json_object, refuse, utf8

log = logging.getLogger(__name__)

CHECKSUMS = ("sha1", "sha256", "md5", "crc32")
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "checksum",
    "expiration",
)
META_KEYS = ("filename", "filetype", "folder", "bucket", "metadata")
MAX_METADATA_HEADER = 8 * 1024


@dataclass(slots=True)
class TusState:
    """One upload, as its store keeps it (JSON)."""

    id: str
    owner: str
    file_id: str
    """The id the file gets once complete (chosen at creation, like any upload's)."""
    file_name: str
    content_type: str
    metadata: dict[str, str]
    upload_metadata: str
    """The ``Upload-Metadata`` header as the client sent it (HEAD answers it back)."""
    length: int | None
    offset: int = 0
    expires: float = 0.0
    done: bool = False
    store: dict[str, Any] = field(default_factory=dict)
    """What the store keeps of its own (S3: the multipart upload, its parts, the tail, the lock)."""

    @property
    def ref(self) -> ObjectRef:
        return parse_file_id(self.file_id).ref

    def new_object(self) -> NewObject:
        return NewObject(
            ref=self.ref,
            file_name=self.file_name,
            content_type=self.content_type,
            metadata=self.metadata,
            size=self.length,
        )

    def dump(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def load(cls, raw: bytes) -> TusState:
        return cls(**json.loads(raw))


class Body:
    """A PATCH body on its way to a store: bounded, counted and checked against its checksum.

    The store iterates it; the last ``anext`` raises ``ChecksumMismatch`` if the digest differs,
    before the store may commit anything of it.
    """

    def __init__(
        self,
        chunks: AsyncIterable[Chunk],
        *,
        room: int | None,
        checksum: tuple[str, bytes] | None,
    ) -> None:
        self._chunks = chunks
        self._room = room
        self._checksum = checksum
        self.received = 0

    @property
    def verified(self) -> bool:
        """A checksum came with the body: a cut body is discarded, not kept."""
        return self._checksum is not None

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        digest = _hasher(self._checksum[0]) if self._checksum else None
        async for chunk in self._chunks:
            if not chunk:
                continue
            self.received += len(chunk)
            if self._room is not None and self.received > self._room:
                raise FileTooLarge("The PATCH goes beyond the upload's length (or MAX_FILE_SIZE).")
            if digest is not None:
                digest.update(chunk)
            yield chunk
        if (
            self._checksum is not None
            and digest is not None
            and (digest.digest() != self._checksum[1])
        ):
            raise ChecksumMismatch(
                f"The body does not match its {self._checksum[0]} Upload-Checksum; "
                "the chunk was discarded. Send it again."
            )


def keeps_partial(body: Body, failure: BaseException) -> bool:
    """Whether a PATCH that failed midway keeps the bytes it received: only when the client went
    away or stalled (or the server stops), and only when no checksum came with them."""
    cut = isinstance(
        failure,
        ClientDisconnect | ClientGone | RequestTimeout | asyncio.CancelledError,
    )
    return cut and not body.verified


class TusStore(Protocol):
    """Where one backend keeps uploads' state and bytes (``app.storage.tus.s3``, ``.local``,
    ``.fastdfs``)."""

    def check_id(self, upload_id: str) -> str:
        """``upload_id`` if it is one this store could have given, else ``UploadNotFound``."""

    async def create(self, state: TusState) -> None:
        """Store a new upload's state (it has no bytes yet). A store whose backend names files
        itself (FastDFS) sets ``state.id`` and ``state.file_id`` here."""

    async def load(self, upload_id: str) -> TusState:
        """The upload's state; ``UploadNotFound`` if there is none."""

    async def append(self, state: TusState, body: Body) -> TusState:
        """Write ``body`` at ``state.offset``, serialized against every other writer
        (``UploadLocked`` or ``OffsetMismatch`` for the loser), commit the new offset (and a
        declared length) and, once the offset reaches the length, store the file and mark the
        state done. A failure of ``body`` commits what ``keeps_partial`` allows."""

    async def terminate(self, state: TusState) -> None:
        """Remove everything stored for an unfinished upload, and its state."""

    async def forget(self, state: TusState) -> None:
        """Remove a finished upload's state only (the file stays)."""

    def ids(self) -> AsyncIterator[str]:
        """Every upload id with state in the store (for the sweep)."""


class TusService:
    """The tus operations, for one store; each checks the caller first."""

    def __init__(
        self,
        files: FileService,
        store: TusStore,
        *,
        expires: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.files = files
        self.store = store
        self.expires = expires
        self.clock = clock

    @property
    def max_size(self) -> int:
        return self.files.policy.max_file_size

    async def create(
        self, principal: Principal, length: int | None, upload_metadata: str | None
    ) -> TusState:
        """Check everything an upload is checked for, then store the new upload's state."""
        meta = parse_upload_metadata(upload_metadata)
        if "filename" not in meta:
            raise InvalidArgument("Upload-Metadata must carry 'filename'.")
        request = UploadRequest(
            meta["filename"],
            folder=meta.get("folder"),
            bucket=meta.get("bucket"),
            content_type=meta.get("filetype"),
            metadata=json_object(meta["metadata"], "metadata") if meta.get("metadata") else {},
            size=length,
        )
        file_id, new = self.files.new_object(principal, request)
        state = TusState(
            id=secrets.token_hex(16),
            owner=principal.name,
            file_id=str(file_id),
            file_name=new.file_name,
            content_type=new.content_type,
            metadata=dict(new.metadata),
            upload_metadata=upload_metadata or "",
            length=length,
            expires=self.clock() + self.expires,
        )
        await self.store.create(state)
        return state

    async def status(self, principal: Principal, upload_id: str) -> TusState:
        """The upload's state, if it is the caller's and has not expired."""
        state = await self.store.load(self.store.check_id(upload_id))
        if state.owner != principal.name:
            raise Forbidden("This upload belongs to another key.")
        principal.check("write", parse_file_id(state.file_id))
        if not state.done and state.expires < self.clock():
            raise UploadExpired("The upload expired; start a new one.")
        return state

    async def patch(
        self,
        principal: Principal,
        upload_id: str,
        offset: int,
        chunks: AsyncIterable[Chunk],
        *,
        length: int | None = None,
        checksum: tuple[str, bytes] | None = None,
    ) -> TusState:
        """Append a chunk at ``offset``; the PATCH that reaches the length stores the file."""
        state = await self.status(principal, upload_id)
        return await self.append(state, offset, chunks, length=length, checksum=checksum)

    async def append(
        self,
        state: TusState,
        offset: int,
        chunks: AsyncIterable[Chunk],
        *,
        length: int | None = None,
        checksum: tuple[str, bytes] | None = None,
    ) -> TusState:
        if state.done:
            raise OffsetMismatch("The upload is already complete.")
        if offset != state.offset:
            raise OffsetMismatch(
                f"Upload-Offset is {offset}, the upload is at {state.offset}: HEAD, then resume."
            )
        if length is not None:
            if state.length is not None and state.length != length:
                raise InvalidArgument("Upload-Length cannot change once it is set.")
            if length < state.offset:
                raise InvalidArgument("Upload-Length is below what was already received.")
            self.files.policy.check_declared_size(length)
            state.length = length
        room = state.length if state.length is not None else self.max_size or None
        body = Body(chunks, room=None if room is None else room - offset, checksum=checksum)
        state.expires = self.clock() + self.expires
        return await self.store.append(state, body)

    async def terminate(self, principal: Principal, upload_id: str) -> None:
        state = await self.status(principal, upload_id)
        if state.done:
            await self.store.forget(state)
        else:
            await self.store.terminate(state)

    async def sweep(self) -> int:
        """Remove every expired upload (unfinished: its bytes too; finished: its state only).
        Safe on several replicas at once: removing is idempotent, and a store refuses to remove an
        upload a PATCH holds."""
        now = self.clock()
        removed = 0
        async for upload_id in self.store.ids():
            try:
                state = await self.store.load(upload_id)
                if state.expires >= now:
                    continue
                if state.done:
                    await self.store.forget(state)
                else:
                    await self.store.terminate(state)
                removed += 1
            except Exception as exc:  # one stuck upload does not stop the sweep
                log.info("tus sweep skipped %s: %s", upload_id, exc)
        return removed


def parse_upload_metadata(header: str | None) -> dict[str, str]:
    """``key base64,key base64`` (tus 1.0.0); values must be UTF-8."""
    if not header:
        return {}
    if len(header) > MAX_METADATA_HEADER:
        raise InvalidArgument("Upload-Metadata is too long.")
    result: dict[str, str] = {}
    for pair in header.split(","):
        parts = pair.strip().split(" ")
        if not parts[0] or len(parts) > 2 or parts[0] in result:
            raise InvalidArgument("Upload-Metadata must be 'key base64' pairs, keys unique.")
        try:
            value = base64.b64decode(parts[1], validate=True) if len(parts) == 2 else b""
        except binascii.Error as exc:
            raise refuse("upload_metadata", f"value of {parts[0]!r} is not base64") from exc
        text = utf8(value, "upload_metadata")
        result[parts[0]] = check_text(text, "upload_metadata", max_bytes=MAX_METADATA_HEADER)
    return result


def parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    """``<algorithm> <base64 digest>``; an algorithm not offered is a 400."""
    if header is None:
        return None
    algorithm, _, value = header.strip().partition(" ")
    if algorithm not in CHECKSUMS:
        raise InvalidArgument(
            f"Upload-Checksum algorithm {algorithm!r} is not one of {', '.join(CHECKSUMS)}."
        )
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except binascii.Error as exc:
        raise InvalidArgument("Upload-Checksum: the digest is not base64.") from exc
    if len(digest) != _hasher(algorithm).digest_size:
        raise InvalidArgument(f"Upload-Checksum: not a {algorithm} digest.")
    return algorithm, digest


class _Crc32:
    digest_size = 4

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: Chunk) -> None:
        self._value = crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


class _Hasher(Protocol):
    @property
    def digest_size(self) -> int: ...

    def update(self, data: Chunk, /) -> None: ...

    def digest(self) -> bytes: ...


def _hasher(algorithm: str) -> _Hasher:
    if algorithm == "crc32":
        return _Crc32()
    return hashlib.new(algorithm, usedforsecurity=False)


def hex_id(upload_id: str) -> str:
    """The ids S3 and the local disk give: 32 lowercase hex digits; anything else cannot name a
    store object."""
    if len(upload_id) != 32 or any(c not in "0123456789abcdef" for c in upload_id):
        raise UploadNotFound("No such upload.")
    return upload_id


def file_id_of(state: TusState) -> FileId:
    return parse_file_id(state.file_id)
