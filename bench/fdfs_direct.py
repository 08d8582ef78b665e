"""A lean FastDFS client over raw sockets: the stand-in for FastDFS's own C tools in the benchmark.

It does what ``fdfs_upload_file`` and ``fdfs_download_file`` do (docs/fastdfs.md): ask the tracker
where to store or read, then send the file with ``sendfile`` or receive it with ``recv_into`` into
one reused buffer, with no per-chunk work in Python beyond the loop itself. Against the same
storage in the same run, it is the direct figure that filegate's FastDFS path is compared with.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

HEADER = struct.Struct("!QBB")
GROUP_LEN = 16
QUERY_STORE = 101
QUERY_FETCH = 102
UPLOAD = 11
DOWNLOAD = 14


def _exchange(sock: socket.socket, cmd: int, body: bytes) -> bytes:
    sock.sendall(HEADER.pack(len(body), cmd, 0) + body)
    length, _, status = HEADER.unpack(_exactly(sock, HEADER.size))
    if status:
        raise OSError(status, os.strerror(status))
    return _exactly(sock, length)


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        piece = sock.recv(size - len(data))
        if not piece:
            raise ConnectionError("closed mid-reply")
        data += piece
    return bytes(data)


def _storage(reply: bytes) -> tuple[str, int, int]:
    ip = reply[GROUP_LEN : GROUP_LEN + 15].rstrip(b"\0").decode()
    (port,) = struct.unpack("!Q", reply[GROUP_LEN + 15 : GROUP_LEN + 23])
    index = reply[GROUP_LEN + 23] if len(reply) > GROUP_LEN + 23 else 0
    return ip, port, index


def upload(tracker: tuple[str, int], path: Path) -> str:
    """Store ``path``; returns its FastDFS id."""
    with socket.create_connection(tracker) as sock:
        ip, port, index = _storage(_exchange(sock, QUERY_STORE, b""))
    size = path.stat().st_size
    ext = path.suffix.removeprefix(".")[:6].encode()
    with socket.create_connection((ip, port)) as sock, path.open("rb") as file:
        prefix = struct.pack("!BQ6s", index, size, ext)
        sock.sendall(HEADER.pack(len(prefix) + size, UPLOAD, 0) + prefix)
        sock.sendfile(file)
        length, _, status = HEADER.unpack(_exactly(sock, HEADER.size))
        if status:
            raise OSError(status, os.strerror(status))
        reply = _exactly(sock, length)
    group = reply[:GROUP_LEN].rstrip(b"\0").decode()
    return f"{group}/{reply[GROUP_LEN:].decode()}"


def download(tracker: tuple[str, int], file_id: str, chunk: int = 1024 * 1024) -> int:
    """Read a whole file and throw it away (as to /dev/null); returns the bytes received."""
    group, _, remote = file_id.partition("/")
    name = group.encode().ljust(GROUP_LEN, b"\0") + remote.encode()
    with socket.create_connection(tracker) as sock:
        ip, port, _ = _storage(_exchange(sock, QUERY_FETCH, name))
    with socket.create_connection((ip, port)) as sock:
        body = struct.pack("!QQ", 0, 0) + name
        sock.sendall(HEADER.pack(len(body), DOWNLOAD, 0) + body)
        header: tuple[int, int, int] = HEADER.unpack(_exactly(sock, HEADER.size))
        length, _, status = header
        if status:
            raise OSError(status, os.strerror(status))
        buffer = memoryview(bytearray(chunk))
        left = length
        while left:
            got = sock.recv_into(buffer, min(chunk, left))
            if not got:
                raise ConnectionError("closed mid-body")
            left -= got
    return length
