"""Connections to FastDFS trackers and storages, for aiofdfs's protocol code to run over.

aiofdfs 0.1.30's own connections cannot be used as they are (docs/fastdfs.md, "aiofdfs defects"):
an EOF in the middle of a reply spins the event loop forever, a pooled tracker connection is handed
back after a timeout or a cancellation and then answers the next caller with the previous reply,
and fail-over order is random. These subclasses raise on EOF, try the trackers in the configured
order, and pool a connection again only after a clean exchange. They rely on aiofdfs internals
(its connection and pool duck types), so aiofdfs is pinned to the exact version, and
``tests/test_dependencies.py`` fails if those internals change.
"""

from __future__ import annotations

from typing import cast

from aiofdfs.async_connection import AsyncConnection, AsyncConnectionError, AsyncConnectionPool
from aiofdfs.async_fdfs_protol import Storage_server
from aiofdfs.async_storage_client import Async_Storage_Client


class Connection(AsyncConnection):
    """An aiofdfs connection that raises on EOF, fails over in order and is never reused after
    a failed exchange."""

    def __init__(self, hosts: list[str], pool: Pool) -> None:
        super().__init__(
            host_tuple=hosts,
            connect_timeout=pool.connect_timeout,
            network_timeout=pool.network_timeout,
            pool=pool,
        )
        self._hosts = hosts
        self._owner = pool

    async def connect(self) -> None:
        failure: Exception | None = None
        for host in self._hosts:  # aiofdfs shuffles; the configured order is the fail-over order
            self.host_tuple = [host]
            try:
                await super().connect()
                return
            except AsyncConnectionError as exc:
                failure = exc
        raise AsyncConnectionError(f"no FastDFS server reachable: {failure}")

    async def receive(self, size: int) -> bytes:
        data: bytes = await super().receive(size)
        if size > 0 and not data:
            await self.disconnect()
            raise AsyncConnectionError("connection closed by the FastDFS server mid-reply")
        return data

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        # After a failure a reply may still be in flight: this connection is out of step for good.
        await self._owner.give_back(self, reusable=exc_type is None)


class Pool:
    """The few methods of aiofdfs's pool its clients call; reuses only clean connections, and
    ``close_all`` also drops the ones in use."""

    def __init__(
        self, hosts: list[str], connect_timeout: float, network_timeout: float, keep: int
    ) -> None:
        self.hosts = hosts
        self.connect_timeout = connect_timeout
        self.network_timeout = network_timeout
        self._keep = keep
        self._idle: list[Connection] = []
        self._lent: set[Connection] = set()

    async def get_connection(self) -> Connection:
        while self._idle:
            connection = self._idle.pop()
            if await connection.is_connected():
                self._lent.add(connection)
                return connection
            await connection.disconnect()
        connection = Connection(self.hosts, self)
        await connection.connect()
        self._lent.add(connection)
        return connection

    async def give_back(self, connection: Connection, *, reusable: bool) -> None:
        self._lent.discard(connection)
        if reusable and len(self._idle) < self._keep and await connection.is_connected():
            self._idle.append(connection)
        else:
            await connection.disconnect()

    async def close_all(self) -> None:
        connections = [*self._idle, *self._lent]
        self._idle, self._lent = [], set()
        for connection in connections:
            await connection.disconnect()


class StorageClient(Async_Storage_Client):
    """aiofdfs's storage protocol over one fresh, unpooled connection per request."""

    def __init__(self, server: Storage_server, pool: Pool) -> None:
        ip = cast(bytes, server.ip_addr)
        address = f"{ip.decode()}:{server.port}"
        self.connections = Pool([address], pool.connect_timeout, pool.network_timeout, keep=0)
        # Duck-typed: aiofdfs only calls get_connection() and close_all() on its pool.
        self.pool = cast(AsyncConnectionPool, self.connections)
