"""Resumable uploads in the memory backend (docs/tus.md, "Memory").

An upload is its state and the pieces received so far, in this process only. Its bytes count
against ``MEMORY_MAX_SIZE`` as they arrive, like any upload's; once complete they become the file
without a copy. PATCHes of one upload are serialized by a flag taken without waiting: the loser
gets ``423``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from app.errors import OffsetMismatch, UploadLocked, UploadNotFound
from app.storage.memory import MemoryBackend, Pieces
from app.storage.tus.engine import Body, TusState, hex_id, keeps_partial


@dataclass(slots=True)
class _Upload:
    state: bytes
    received: Pieces
    busy: bool = False


class MemoryTusStore:
    check_id = staticmethod(hex_id)

    def __init__(self, backend: MemoryBackend) -> None:
        self._backend = backend
        self._uploads: dict[str, _Upload] = backend.uploads

    def _get(self, upload_id: str) -> _Upload:
        upload = self._uploads.get(upload_id)
        if upload is None:
            raise UploadNotFound("No such upload.")
        return upload

    async def create(self, state: TusState) -> None:
        self._uploads[state.id] = _Upload(state.dump(), Pieces(self._backend.room))

    async def load(self, upload_id: str) -> TusState:
        return TusState.load(self._get(upload_id).state)

    async def append(self, state: TusState, body: Body) -> TusState:
        upload = self._get(state.id)
        if upload.busy:
            raise UploadLocked("Another PATCH of this upload is in progress.")
        current = TusState.load(upload.state)
        if current.offset != state.offset or current.done:
            raise OffsetMismatch(
                f"The upload is at {current.offset} now (another PATCH won): HEAD, then resume."
            )
        upload.busy = True
        received = upload.received
        try:
            try:
                async for chunk in body:
                    received.add(chunk)
            except BaseException as failure:
                if not keeps_partial(body, failure):
                    received.cut(state.offset)
                self._commit(upload, state)
                raise
            return self._commit(upload, state)
        finally:
            upload.busy = False

    def _commit(self, upload: _Upload, state: TusState) -> TusState:
        received = upload.received
        state.offset = received.size
        if state.length is not None and state.offset == state.length:
            self._backend.keep(state.new_object(), received.seal(), received.crc32)
            upload.received = Pieces(self._backend.room)  # the file owns the bytes now
            state.done = True
        upload.state = state.dump()
        return state

    async def terminate(self, state: TusState) -> None:
        upload = self._uploads.get(state.id)
        if upload is None:
            return
        if upload.busy:
            raise UploadLocked("A PATCH of this upload is in progress.")
        upload.received.drop()
        del self._uploads[state.id]

    async def forget(self, state: TusState) -> None:
        await self.terminate(state)

    async def ids(self) -> AsyncIterator[str]:
        for upload_id in list(self._uploads):
            yield upload_id
