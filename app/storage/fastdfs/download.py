"""A FastDFS download, its reply read straight into a buffer of ours (docs/fastdfs.md,
"Downloads").

aiofdfs reads every reply through an asyncio ``StreamReader``: each socket read is copied into
the reader's buffer and out again, a call returns at most what one read brought, each under its
own ``wait_for``, and the pieces are joined into 512 KiB. For the one large reply, a file's
bytes, that is three copies of every byte and a timer per 64 to 256 KiB. Here the request is
packed with aiofdfs's header and constants, and the reply is read by a ``BufferedProtocol``: the
socket reads into one buffer that is reused, and each full piece leaves it as one ``bytes`` (one
copy). At most one piece waits for the client; until it is taken, the socket is not read, so a
slow client holds the storage server back instead of filling memory.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncGenerator
from typing import cast

from aiofdfs.async_connection import AsyncConnectionError
from aiofdfs.async_fdfs_protol import (
    FDFS_GROUP_NAME_MAX_LEN,
    FDFS_PROTO_PKG_LEN_SIZE,
    STORAGE_PROTO_CMD_DOWNLOAD_FILE,
    Storage_server,
    Tracker_header,
)
from aiofdfs.exceptions import DataError

PIECE = 1024 * 1024
"""The file's bytes are handed on in pieces of this size (the last one shorter)."""
_NO_BUFFER = memoryview(bytearray())
"""A closed reply's buffer. The reply and its transport refer to each other, so without this
each download's MiB stayed until the cyclic collector ran, which filegate makes rare
(``app.main._settle_the_heap``): 300 downloads in a row held 280 MiB more."""


class _Reply(asyncio.BufferedProtocol):
    """The reply to one DOWNLOAD_FILE request: its header, then ``pkg_len`` bytes of the file."""

    def __init__(self) -> None:
        self._header = Tracker_header()
        self._buffer = memoryview(bytearray(PIECE))
        self._filled = 0
        self._wanted = self._header.header_len()
        """Bytes the piece being read (or the header, first) still lacks."""
        self._in_header = True
        self.remaining = 0
        """Bytes of the file not yet read from the socket."""
        self._ready: bytes | None = None
        self._ended: BaseException | None = None
        """Why no more bytes will come: the connection closed, or the header said no."""
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.Transport | None = None
        self.arrived = 0
        """Bytes read so far (a stall is a wait in which this does not move)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, request: bytes) -> None:
        assert self._transport is not None
        self._transport.write(request)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer[self._filled : self._filled + self._wanted]

    def buffer_updated(self, nbytes: int) -> None:
        self.arrived += nbytes
        self._filled += nbytes
        self._wanted -= nbytes
        if self._wanted:
            return
        if self._in_header:
            self._header._unpack(bytes(self._buffer[: self._filled]))
            self._in_header = False
            if self._header.status != 0:
                status = self._header.status
                self._end(DataError(f"Error: {status} {os.strerror(status)}"))
                return
            self.remaining = self._header.pkg_len
        else:
            self._ready = bytes(self._buffer[: self._filled])
            self.remaining -= self._filled
        self._filled = 0
        self._wanted = min(self.remaining, PIECE)
        if self._transport is not None and (self._ready is not None or not self._wanted):
            self._transport.pause_reading()  # until the piece is taken (or for good: all read)
        self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost says the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc or AsyncConnectionError("connection closed by the FastDFS server mid-reply"))
        self._buffer = _NO_BUFFER  # the MiB goes now, not when a collection finds the cycle
        self._transport = None

    def _end(self, reason: BaseException) -> None:
        if self._ended is None:
            self._ended = reason
        if self._transport is not None:
            self._transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self, stall: float) -> None:
        """Until something happens; raises ``TimeoutError`` once no byte came for ``stall``."""
        while True:
            seen = self.arrived
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(stall):
                    await self._waiter
                return
            except TimeoutError:
                if self.arrived == seen:
                    raise
            finally:
                self._waiter = None

    async def header(self, stall: float) -> None:
        """Wait for the reply's header; raises what the storage server answered instead."""
        while self._in_header:
            if self._ended is not None:
                raise self._ended
            await self._wait(stall)
        if self._header.status != 0:
            assert self._ended is not None
            raise self._ended

    async def piece(self, stall: float) -> bytes | None:
        """The next piece of the file; None after the last."""
        while self._ready is None:
            if not self.remaining and not self._wanted:
                return None
            if self._ended is not None:
                raise self._ended
            await self._wait(stall)
        piece, self._ready = self._ready, None
        if self._wanted and self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
        return piece

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class Download:
    """One file's bytes from a storage server, over a connection of its own; ``close`` drops
    the connection, and a read in flight in another task then fails at once."""

    def __init__(self, reply: _Reply, network_timeout: float) -> None:
        self._reply = reply
        self._stall = network_timeout

    @classmethod
    async def start(
        cls,
        server: Storage_server,
        offset: int,
        count: int,
        remote_filename: str,
        *,
        connect_timeout: float,
        network_timeout: float,
    ) -> Download:
        """Ask for ``count`` bytes of ``remote_filename`` from ``offset`` (0: to the end) and
        wait for the answer's header. Raises as aiofdfs would: ``DataError`` with the storage
        server's errno (2: no such file), ``TimeoutError`` when nothing comes for
        ``network_timeout``, ``AsyncConnectionError`` or ``OSError`` when the connection fails."""
        loop = asyncio.get_running_loop()
        host, port = cast(bytes, server.ip_addr).decode(), cast(int, server.port)
        async with asyncio.timeout(connect_timeout):
            transport, reply = await loop.create_connection(_Reply, host, port)
        reply.connection_made(transport)  # uvloop calls it only after create_connection returns
        try:
            name = remote_filename.encode()
            length = FDFS_PROTO_PKG_LEN_SIZE * 2 + FDFS_GROUP_NAME_MAX_LEN + len(name)
            request = Tracker_header()._pack(length, STORAGE_PROTO_CMD_DOWNLOAD_FILE)
            request += struct.pack(
                f"!QQ{FDFS_GROUP_NAME_MAX_LEN}s{len(name)}s",
                offset,
                count,
                server.group_name,
                name,
            )
            reply.send(request)
            await reply.header(network_timeout)
        except BaseException:
            reply.close()
            raise
        return cls(reply, network_timeout)

    def __aiter__(self) -> AsyncGenerator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncGenerator[bytes]:
        try:
            while (piece := await self._reply.piece(self._stall)) is not None:
                yield piece
        finally:
            self._reply.close()

    def close(self) -> None:
        self._reply.close()
