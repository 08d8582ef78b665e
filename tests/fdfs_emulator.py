"""A protocol-level FastDFS tracker and storage for tests (docs/fastdfs.md, "The wire protocol").

Speaks the real wire format over TCP on loopback: 10-byte headers, header-only error replies with a
Linux errno, the 40/39-byte IPv4 query replies, generated 44-character remote file names, sorted
metadata records, sign-extended CRC32 in QUERY_FILE_INFO (computed from the bytes for appender
files), 22 for any download of a 0-byte file, appender files changed by APPEND_FILE, MODIFY_FILE
and TRUNCATE_FILE, and the storage closing its connection after every EINVAL reply. Faults can be
switched on while it runs (``fault`` on either server):

- both: ``"stall"`` (read the request, never answer), ``"slow"`` (answer after ``delay`` seconds),
  ``"close_mid_header"`` (send half a header, then close);
- storage: ``"eof_download"`` / ``"eof_metadata"`` (a success header announcing the whole body, part
  of it, then close, as a storage does when a disk read fails mid-reply); ``"stall_download"``
  (half the body, then nothing for an hour); ``"trickle_download"`` (the body in 16 KiB writes
  ``delay`` seconds apart);
- tracker: ``"no_storage"`` (the tracker is up but no storage is ACTIVE: errno 2);
- ``stop()`` / ``start()`` for refused connections and recovery.

Run it by itself: ``python -m tests.fdfs_emulator --dir /tmp/fdfs [--tracker-port 22122]
[--storage-port 23000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import errno
import os
import random
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER = struct.Struct("!QBB")
RESP = 100
GROUP_LEN = 16
IP_LEN = 15  # IPV4_ADDRESS_SIZE - 1 in query replies
MAX_PKG = 256 * 1024
CHUNK = 256 * 1024

# tracker commands
QUERY_STORE_WITHOUT_GROUP_ONE = 101
QUERY_FETCH_ONE = 102
QUERY_UPDATE = 103
QUERY_STORE_WITH_GROUP_ONE = 104
ACTIVE_TEST = 111
QUIT = 82
# storage commands
UPLOAD_FILE = 11
DELETE_FILE = 12
SET_METADATA = 13
DOWNLOAD_FILE = 14
GET_METADATA = 15
QUERY_FILE_INFO = 22
UPLOAD_APPENDER_FILE = 23
APPEND_FILE = 24
MODIFY_FILE = 34
TRUNCATE_FILE = 36
APPENDER_FLAG = 1 << 58
"""Set in the size field of an appender file's name (FastDFS's ``INFINITE_FILE_SIZE``)."""

_REMOTE = re.compile(r"M([0-9A-F]{2})/([0-9A-F]{2})/([0-9A-F]{2})/([^/]+)")
_EXT = re.compile(r"[A-Za-z0-9._-]*")


class _Close(Exception):
    """End the connection (after EINVAL on the storage, QUIT, or a fault)."""


def _pad(text: str | bytes, size: int) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return raw[:size].ljust(size, b"\0")


def _field(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace")


async def _reply(writer: asyncio.StreamWriter, status: int, body: bytes = b"") -> None:
    writer.write(HEADER.pack(len(body), RESP, status) + body)
    await writer.drain()


@dataclass
class _Server:
    host: str = "127.0.0.1"
    port: int = 0
    fault: str | None = None
    delay: float = 0
    _server: asyncio.Server | None = None
    _clients: set[asyncio.StreamWriter] = field(default_factory=set)
    requests: int = 0

    async def start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._serve, sock=sock)

    async def stop(self) -> None:
        """Stop listening and drop every connection: clients now get connection refused."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._clients):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while True:
                try:
                    head = await reader.readexactly(HEADER.size)
                except asyncio.IncompleteReadError:
                    return
                pkg_len, cmd, _status = HEADER.unpack(head)
                self.requests += 1
                if self.fault == "stall":
                    await asyncio.sleep(3600)
                if self.fault == "slow":
                    await asyncio.sleep(self.delay)
                if self.fault == "close_mid_header":
                    writer.write(HEADER.pack(0, RESP, 0)[:5])
                    await writer.drain()
                    return
                if cmd == QUIT:
                    return
                await self.handle(cmd, pkg_len, reader, writer)
        except (_Close, ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._clients.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def handle(
        self, cmd: int, pkg_len: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        raise NotImplementedError


@dataclass
class Storage(_Server):
    """One storage server of one group with one store path (M00)."""

    root: Path = Path(".")
    group: str = "group1"
    ip: str = "127.0.0.1"

    def path(self, remote: str) -> Path | None:
        match = _REMOTE.fullmatch(remote)
        if match is None or match.group(1) != "00":
            return None
        return self.root / "data" / match.group(2) / match.group(3) / match.group(4)

    async def handle(
        self, cmd: int, pkg_len: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if cmd in (UPLOAD_FILE, UPLOAD_APPENDER_FILE):
            await self._upload(pkg_len, reader, writer, appender=cmd == UPLOAD_APPENDER_FILE)
            return
        if cmd == ACTIVE_TEST:
            if pkg_len:
                await self._invalid(writer)
            await _reply(writer, 0)
            return
        if cmd in (APPEND_FILE, MODIFY_FILE, TRUNCATE_FILE):
            await self._change_appender(cmd, pkg_len, reader, writer)
            return
        if cmd not in (DELETE_FILE, SET_METADATA, DOWNLOAD_FILE, GET_METADATA, QUERY_FILE_INFO):
            await self._invalid(writer)
        if pkg_len > MAX_PKG:
            await self._invalid(writer)
        body = await reader.readexactly(pkg_len)
        if cmd == DOWNLOAD_FILE:
            await self._download(body, writer)
        elif cmd == SET_METADATA:
            await self._set_metadata(body, writer)
        else:
            await self._by_name(cmd, body, writer)

    async def _invalid(self, writer: asyncio.StreamWriter) -> None:
        await _reply(writer, errno.EINVAL)
        raise _Close

    def _locate(self, group: bytes, remote: bytes) -> Path | None:
        if _field(group) != self.group:
            return None
        return self.path(remote.decode("utf-8", "replace"))

    async def _upload(
        self, pkg_len: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        *, appender: bool,
    ) -> None:  # fmt: skip
        if pkg_len < 15:
            await self._invalid(writer)
        prefix = await reader.readexactly(15)
        index, size, ext_raw = struct.unpack("!bQ6s", prefix)
        ext = _field(ext_raw)
        if index not in (-1, 0) or size != pkg_len - 15 or _EXT.fullmatch(ext) is None:
            await self._invalid(writer)
        sub = f"{random.randrange(256):02X}/{random.randrange(256):02X}"
        directory = self.root / "data" / sub
        directory.mkdir(parents=True, exist_ok=True)
        temp = directory / f".upload-{os.getpid()}-{random.getrandbits(64):x}"
        crc, remaining = 0, size
        try:
            with temp.open("wb") as file:
                while remaining:
                    chunk = await reader.read(min(CHUNK, remaining))
                    if not chunk:
                        raise _Close  # the client vanished: a partial upload is discarded
                    file.write(chunk)
                    crc = zlib.crc32(chunk, crc)
                    remaining -= len(chunk)
            name = _remote_name(self.ip, size, crc, ext, appender)
            temp.rename(directory / name)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        await _reply(writer, 0, _pad(self.group, GROUP_LEN) + f"M00/{sub}/{name}".encode())

    async def _change_appender(
        self, cmd: int, pkg_len: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """24 APPEND_FILE, 34 MODIFY_FILE and 36 TRUNCATE_FILE: no group name in the request; the
        target must be an appender file; MODIFY may start at most at the end of the file, and
        TRUNCATE may only shorten it (else 22)."""
        fields = {APPEND_FILE: 2, MODIFY_FILE: 3, TRUNCATE_FILE: 2}[cmd]
        if pkg_len < 8 * fields:
            await self._invalid(writer)
        numbers = struct.unpack(f"!{fields}q", await reader.readexactly(8 * fields))
        name_len = numbers[0]
        size = 0 if cmd == TRUNCATE_FILE else numbers[-1]
        if not 0 < name_len < 128 or min(numbers) < 0 or pkg_len != 8 * fields + name_len + size:
            await self._invalid(writer)
        remote = (await reader.readexactly(name_len)).decode("utf-8", "replace")
        path = self.path(remote)
        if path is None or not _is_appender(path.name):
            await self._invalid(writer)
        assert path is not None
        if not path.is_file():
            await _reply(writer, errno.ENOENT)
            raise _Close
        current = path.stat().st_size
        if cmd == TRUNCATE_FILE:
            if numbers[1] > current:
                await self._invalid(writer)
            os.truncate(path, numbers[1])
            await _reply(writer, 0)
            return
        offset = current if cmd == APPEND_FILE else numbers[1]
        if offset > current:
            await self._invalid(writer)
        with path.open("r+b") as file:
            file.seek(offset)
            remaining = size
            while remaining:
                chunk = await reader.read(min(CHUNK, remaining))
                if not chunk:
                    raise _Close  # the client vanished: what arrived is written, as on a storage
                file.write(chunk)
                remaining -= len(chunk)
        await _reply(writer, 0)

    async def _download(self, body: bytes, writer: asyncio.StreamWriter) -> None:
        if len(body) < 16 + GROUP_LEN:
            await self._invalid(writer)
        offset, count = struct.unpack("!qq", body[:16])
        path = self._locate(body[16:32], body[32:])
        if path is None or offset < 0 or count < 0:
            await self._invalid(writer)
        assert path is not None
        if not path.is_file():
            await _reply(writer, errno.ENOENT)
            return
        size = path.stat().st_size
        if offset >= size:
            await self._invalid(writer)  # includes every download of a 0-byte file
        count = size - offset if count == 0 else min(count, size - offset)
        writer.write(HEADER.pack(count, RESP, 0))
        with path.open("rb") as file:
            file.seek(offset)
            sent = 0
            while sent < count:
                chunk = file.read(min(CHUNK, count - sent))
                if (
                    self.fault in ("eof_download", "stall_download")
                    and sent + len(chunk) >= count // 2
                ):
                    writer.write(chunk[: max(1, len(chunk) // 2)])
                    await writer.drain()
                    if self.fault == "stall_download":
                        await asyncio.sleep(3600)
                    raise _Close  # the header promised more: a disk error after the header
                if self.fault == "trickle_download":
                    for start in range(0, len(chunk), 16 * 1024):
                        writer.write(chunk[start : start + 16 * 1024])
                        await writer.drain()
                        await asyncio.sleep(self.delay)
                else:
                    writer.write(chunk)
                    await writer.drain()
                sent += len(chunk)

    async def _by_name(self, cmd: int, body: bytes, writer: asyncio.StreamWriter) -> None:
        if len(body) <= GROUP_LEN:
            await self._invalid(writer)
        path = self._locate(body[:GROUP_LEN], body[GROUP_LEN:])
        if path is None:
            await self._invalid(writer)
        assert path is not None
        meta = path.with_name(path.name + "-m")
        if cmd == DELETE_FILE:
            if not path.is_file():
                await _reply(writer, errno.ENOENT)
                return
            path.unlink()
            meta.unlink(missing_ok=True)
            await _reply(writer, 0)
        elif cmd == GET_METADATA:
            if not path.is_file() or not meta.is_file():
                await _reply(writer, errno.ENOENT)
                return
            data = meta.read_bytes()
            if self.fault == "eof_metadata":
                writer.write(HEADER.pack(len(data) + 1000, RESP, 0) + data)
                await writer.drain()
                raise _Close
            await _reply(writer, 0, data)
        else:  # QUERY_FILE_INFO
            if not path.is_file():
                await _reply(writer, errno.ENOENT)
                return
            st = path.stat()
            # Appender files change after their name is chosen: the storage computes their CRC.
            crc = _crc_of(path) if _is_appender(path.name) else _crc_from_name(path.name)
            signed = crc - (1 << 32) if crc >= 1 << 31 else crc  # a C int, sign-extended
            await _reply(
                writer,
                0,
                struct.pack("!qqq16s", st.st_size, int(st.st_mtime), signed, _pad(self.ip, 16)),
            )

    async def _set_metadata(self, body: bytes, writer: asyncio.StreamWriter) -> None:
        if len(body) < 33:
            await self._invalid(writer)
        name_len, meta_len = struct.unpack("!qq", body[:16])
        flag = body[16:17]
        if not 0 < name_len < 128 or meta_len != len(body) - 33 - name_len or flag not in b"OM":
            await self._invalid(writer)
        path = self._locate(body[17:33], body[33 : 33 + name_len])
        if path is None:
            await self._invalid(writer)
        assert path is not None
        if not path.is_file():
            await _reply(writer, errno.ENOENT)
            return
        meta = path.with_name(path.name + "-m")
        records = _records(body[33 + name_len :])
        if flag == b"M" and meta.is_file():
            records = {**_records(meta.read_bytes()), **records}
        if not records:
            meta.unlink(missing_ok=True)
        else:
            meta.write_bytes(b"\x01".join(k + b"\x02" + v for k, v in sorted(records.items())))
        await _reply(writer, 0)


def _crc_from_name(name: str) -> int:
    """For normal files the storage reads size, time and CRC32 from the name, not the content."""
    raw = base64.b64decode(name[:27] + "=", altchars=b"-_")
    return int(struct.unpack("!I", raw[16:20])[0])


def _is_appender(name: str) -> bool:
    try:
        raw = base64.b64decode(name[:27] + "=", altchars=b"-_")
    except ValueError:
        return False
    return len(raw) == 20 and bool(struct.unpack("!Q", raw[8:16])[0] & APPENDER_FLAG)


def _crc_of(path: Path) -> int:
    crc = 0
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _records(raw: bytes) -> dict[bytes, bytes]:
    if not raw:
        return {}
    pairs = (record.split(b"\x02", 1) for record in raw.split(b"\x01"))
    return {pair[0]: pair[1] if len(pair) > 1 else b"" for pair in pairs}


def _remote_name(ip: str, size: int, crc: int, ext: str, appender: bool) -> str:
    """27 characters of base64 over ip | timestamp | size | crc32, then the formatted ext."""
    high = APPENDER_FLAG if appender else (random.getrandbits(23) | 0x80000000) << 32
    size_field = high if appender else high | size
    raw = struct.pack("!4sIQI", socket.inet_aton(ip), int(time.time()), size_field, crc)
    encoded = base64.b64encode(raw, altchars=b"-_").decode().rstrip("=")
    digits = "".join(random.choice("0123456789") for _ in range(7 if not ext else 6 - len(ext)))
    return f"{encoded}{digits}" if not ext else f"{encoded}{digits}.{ext}"


@dataclass
class Tracker(_Server):
    """A tracker with one group served by ``storage``."""

    storage: Storage | None = None

    async def handle(
        self, cmd: int, pkg_len: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if pkg_len > MAX_PKG:
            raise _Close  # the real tracker logs "pkg length > max pkg size" and closes
        body = await reader.readexactly(pkg_len)
        storage = self.storage
        active = storage is not None and storage._server is not None and self.fault != "no_storage"
        if cmd == ACTIVE_TEST:
            await _reply(writer, 0 if not body else errno.EINVAL)
        elif cmd in (QUERY_STORE_WITHOUT_GROUP_ONE, QUERY_STORE_WITH_GROUP_ONE):
            wanted = None if cmd == QUERY_STORE_WITHOUT_GROUP_ONE else _field(body)
            if len(body) != (0 if wanted is None else GROUP_LEN):
                await _reply(writer, errno.EINVAL)
            elif not active or (wanted is not None and wanted != storage.group):  # type: ignore[union-attr]
                await _reply(writer, errno.ENOENT)
            else:
                assert storage is not None
                await _reply(writer, 0, self._address(storage) + b"\0")
        elif cmd in (QUERY_FETCH_ONE, QUERY_UPDATE):
            if not 38 <= pkg_len < 144:
                await _reply(writer, errno.EINVAL)
            elif not active or _field(body[:GROUP_LEN]) != storage.group:  # type: ignore[union-attr]
                await _reply(writer, errno.ENOENT)
            else:
                assert storage is not None
                await _reply(writer, 0, self._address(storage))
        else:
            await _reply(writer, errno.EINVAL)  # the tracker keeps the connection after EINVAL

    @staticmethod
    def _address(storage: Storage) -> bytes:
        return (
            _pad(storage.group, GROUP_LEN)
            + _pad(storage.ip, IP_LEN)
            + struct.pack("!Q", storage.port)
        )


@dataclass
class FastDFS:
    """A tracker and its storage, started together."""

    root: Path
    tracker_port: int = 0
    storage_port: int = 0
    storage: Storage = field(init=False)
    tracker: Tracker = field(init=False)
    _loop: asyncio.AbstractEventLoop = field(init=False)
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.storage = Storage(port=self.storage_port, root=self.root)
        self.tracker = Tracker(port=self.tracker_port, storage=self.storage)

    @property
    def tracker_address(self) -> str:
        return f"{self.tracker.host}:{self.tracker.port}"

    async def start(self) -> None:
        await self.storage.start()
        await self.tracker.start()

    async def stop(self) -> None:
        await self.tracker.stop()
        await self.storage.stop()

    def serve_in_thread(self) -> None:
        """Serve from a thread with its own event loop, so a client that blocks its loop (as
        aiofdfs does on a bad EOF) cannot stop the servers too."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.run(self.start())

    def run[T](self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine (``storage.stop()``, ``storage.start()``...) on the servers' loop."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def shutdown(self) -> None:
        self.run(self.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def stored_files(self) -> list[str]:
        """Every stored file (and metadata file), as ``M00/XX/YY/name``; partial uploads too."""
        data = self.root / "data"
        if not data.exists():
            return []
        return sorted(f"M00/{p.relative_to(data)}" for p in data.rglob("*") if p.is_file())


async def _main() -> None:
    parser = argparse.ArgumentParser(description="A FastDFS tracker + storage emulator.")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--tracker-port", type=int, default=22122)
    parser.add_argument("--storage-port", type=int, default=23000)
    args = parser.parse_args()
    fdfs = FastDFS(args.dir, args.tracker_port, args.storage_port)
    await fdfs.start()
    print(f"tracker {fdfs.tracker_address}, storage 127.0.0.1:{fdfs.storage.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
