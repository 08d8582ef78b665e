"""What only FastDFS has: legacy files in hybrid mode, the mode switches, aiofdfs's defects
contained, fail-over, outages and recovery. Everything goes through the real aiofdfs client
over sockets to the protocol emulator."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiofdfs import Async_Fdfs_Client, FastDfsConf

from tests.conftest import (
    fastdfs_settings,
    s3_settings,
    serve,
)
from tests.fdfs_emulator import FastDFS
from tests.servers import SeaweedFS, Service, free_port, free_ports

MiB = 1024 * 1024


async def legacy_upload(fastdfs: FastDFS, data: bytes, name: str) -> str:
    """A file stored the way the seed library stored them: aiofdfs with Origin* metadata."""
    conf = FastDfsConf(tracker_servers=[fastdfs.tracker_address])
    async with Async_Fdfs_Client(conf) as client:
        ext = name.rsplit(".", 1)[-1]
        answer = await client.upload_by_buffer(
            data, file_ext_name=ext, meta_dict={"OriginFileName": name, "owner": "legacy"}
        )
    file_id: str = answer["file_id"]
    return file_id


def fdfs_only(fastdfs: FastDFS, **overrides: Any) -> Any:
    from app.settings import Settings

    values = fastdfs_settings(fastdfs, storage_mode="fastdfs", **overrides)
    return Settings(_env_file=None, **values)


def hybrid(seaweed: SeaweedFS, bucket: str, fastdfs: FastDFS, **overrides: Any) -> Any:
    return s3_settings(
        seaweed.endpoint, bucket, **fastdfs_settings(fastdfs, storage_mode="hybrid", **overrides)
    )


async def test_hybrid_reads_legacy_fastdfs_and_new_s3_files(
    seaweed: SeaweedFS, bucket: str, fastdfs: FastDFS
) -> None:
    legacy_data = os.urandom(300_000)
    legacy_id = await legacy_upload(fastdfs, legacy_data, "legacy contract.pdf")
    async with serve(hybrid(seaweed, bucket, fastdfs)) as client:
        new = (await client.post("/files/upload", files={"file": ("new.txt", b"new")})).json()
        assert new["file_id"].startswith(f"s3:{bucket}/")

        legacy = await client.get(f"/files/{legacy_id}/download")
        assert legacy.status_code == 200
        assert legacy.content == legacy_data
        assert "legacy%20contract.pdf" in legacy.headers["content-disposition"]
        assert legacy.headers["etag"] == f'"{zlib.crc32(legacy_data):08x}"'
        info = (await client.get(f"/files/{legacy_id}/info")).json()
        assert info["backend"] == "fastdfs"
        assert info["file_name"] == "legacy contract.pdf"
        assert info["metadata"] == {"owner": "legacy"}
        assert info["storage_class"] is None
        ranged = await client.get(f"/files/{legacy_id}/download", headers={"Range": "bytes=10-19"})
        assert ranged.content == legacy_data[10:20]
        assert (await client.get(f"/files/{new['file_id']}/download")).content == b"new"

        assert (await client.delete(f"/files/{legacy_id}")).status_code == 200
        assert fastdfs.stored_files() == []
        assert (await client.get(f"/files/{legacy_id}/info")).status_code == 404


async def test_hybrid_switches_guard_legacy_files(
    seaweed: SeaweedFS, bucket: str, fastdfs: FastDFS
) -> None:
    legacy_id = await legacy_upload(fastdfs, b"old", "old.txt")
    no_reads = hybrid(seaweed, bucket, fastdfs, fastdfs_download_enabled=False)
    async with serve(no_reads) as client:
        for response in (
            await client.get(f"/files/{legacy_id}/download"),
            await client.get(f"/files/{legacy_id}/info"),
            await client.head(f"/files/{legacy_id}/download"),
        ):
            assert response.status_code == 403
        body = (await client.get(f"/files/{legacy_id}/info")).json()
        assert body["code"] == "route_not_supported"
        s3_file = (await client.post("/files/upload", files={"file": ("a.txt", b"a")})).json()
        assert (await client.get(f"/files/{s3_file['file_id']}/download")).content == b"a"

    no_deletes = hybrid(seaweed, bucket, fastdfs, fastdfs_delete_enabled=False)
    async with serve(no_deletes) as client:
        refused = await client.delete(f"/files/{legacy_id}")
        assert refused.status_code == 403
        assert refused.json()["code"] == "delete_not_supported"
        assert (await client.get(f"/files/{legacy_id}/download")).content == b"old"
        s3_file = (await client.post("/files/upload", files={"file": ("b.txt", b"b")})).json()
        assert (await client.delete(f"/files/{s3_file['file_id']}")).status_code == 200
    assert len([f for f in fastdfs.stored_files() if not f.endswith("-m")]) == 1


async def test_metadata_fastdfs_would_corrupt_is_refused(fastdfs: FastDFS) -> None:
    async with serve(fdfs_only(fastdfs)) as client:
        long_value = '{"note": "' + "é" * 200 + '"}'  # 400 bytes: over FastDFS's 256
        response = await client.post(
            "/files/upload", data={"metadata": long_value}, files={"file": ("a.txt", b"x")}
        )
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_argument"
        ok = '{"note": "' + "é" * 128 + '"}'  # exactly 256 bytes
        stored = await client.post(
            "/files/upload", data={"metadata": ok}, files={"file": ("a.txt", b"x")}
        )
        assert stored.status_code == 201
        info = (await client.get(f"/files/{stored.json()['file_id']}/info")).json()
        assert info["metadata"] == {"note": "é" * 128}
    assert len(fastdfs.stored_files()) == 2  # the file and its -m metadata file, nothing else


async def test_raw_put_streams_with_its_declared_length(fastdfs: FastDFS) -> None:
    data = os.urandom(3 * MiB)
    async with serve(fdfs_only(fastdfs)) as client:
        response = await client.put("/files/upload/raw.bin", content=data)
        assert response.status_code == 201
        file_id = response.json()["file_id"]
        assert (await client.get(f"/files/{file_id}/download")).content == data
        assert response.json()["etag"] == f'"{zlib.crc32(data):08x}"'


async def test_missing_file_is_404_but_no_storage_is_503(fastdfs: FastDFS) -> None:
    async with serve(fdfs_only(fastdfs)) as client:
        file_id = (await client.post("/files/upload", files={"file": ("a.txt", b"a")})).json()[
            "file_id"
        ]
        missing = "group1/M00/00/00/fwAAAWsFKtSATKktAAAADgWKGpg335.txt"
        assert (await client.get(f"/files/{missing}/info")).status_code == 404
        assert (await client.delete(f"/files/{missing}")).status_code == 200  # idempotent

        fastdfs.tracker.fault = "no_storage"  # errno 2 from the tracker, not from a storage
        for response in (
            await client.get(f"/files/{file_id}/info"),
            await client.get(f"/files/{file_id}/download"),
            await client.delete(f"/files/{file_id}"),
            await client.post("/files/upload", files={"file": ("b.txt", b"b")}),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "backend_unavailable"
            assert "retry-after" in response.headers
        fastdfs.tracker.fault = None
        assert (await client.get(f"/files/{file_id}/download")).content == b"a"


async def test_storage_down_is_503_and_the_service_recovers(fastdfs: FastDFS) -> None:
    async with serve(fdfs_only(fastdfs)) as client:
        file_id = (await client.post("/files/upload", files={"file": ("a.txt", b"a")})).json()[
            "file_id"
        ]
        fastdfs.run(fastdfs.storage.stop())  # connection refused; the tracker still names it
        assert (await client.get(f"/files/{file_id}/info")).status_code == 503
        upload = await client.post("/files/upload", files={"file": ("b.txt", b"b")})
        assert upload.status_code == 503
        fastdfs.run(fastdfs.storage.start())
        assert (await client.get(f"/files/{file_id}/download")).content == b"a"


async def test_tracker_fail_over_in_order(fastdfs: FastDFS) -> None:
    dead = f"127.0.0.1:{free_port()}"
    settings = fdfs_only(fastdfs, fastdfs_tracker_servers=[dead, fastdfs.tracker_address])
    async with serve(settings) as client:
        response = await client.post("/files/upload", files={"file": ("a.txt", b"a")})
        assert response.status_code == 201
        assert (await client.get(f"/files/{response.json()['file_id']}/download")).content == b"a"
    only_dead = fdfs_only(fastdfs, fastdfs_tracker_servers=[dead])
    async with serve(only_dead) as client:
        refused = await client.post("/files/upload", files={"file": ("a.txt", b"a")})
        assert refused.status_code == 503


@pytest.mark.parametrize(
    ("server", "fault"),
    [
        ("tracker", "stall"),
        ("tracker", "close_mid_header"),
        ("storage", "stall"),
        ("storage", "close_mid_header"),
        ("storage", "eof_metadata"),
    ],
)
async def test_every_connection_failure_is_503_within_the_deadline(
    fastdfs: FastDFS, server: str, fault: str
) -> None:
    async with serve(fdfs_only(fastdfs)) as client:
        file_id = (await client.post("/files/upload", files={"file": ("a.txt", b"a")})).json()[
            "file_id"
        ]
        getattr(fastdfs, server).fault = fault
        started = time.monotonic()
        response = await asyncio.wait_for(client.get(f"/files/{file_id}/info"), 30)
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "backend_unavailable"
        assert time.monotonic() - started < 10  # deadline: connect + 2 x network timeout
        getattr(fastdfs, server).fault = None
        assert (await client.get(f"/files/{file_id}/info")).status_code == 200


def test_eof_mid_download_fails_the_transfer_without_freezing_the_loop(
    fastdfs: FastDFS, fastdfs_service: Service, tmp_path: Path
) -> None:
    """aiofdfs alone spins forever on this EOF with the event loop blocked (docs/fastdfs.md, D1)."""
    service = fastdfs_service
    source = tmp_path / "a.bin"
    source.write_bytes(os.urandom(4 * MiB))
    url = f"{service.url}/files/{service.upload(source, 'a.bin')}/download"
    fastdfs.storage.fault = "eof_download"
    started = time.monotonic()
    cut = subprocess.run(["curl", "-sS", "-o", str(tmp_path / "out"), url], timeout=30)
    assert cut.returncode != 0  # a failed transfer, not a short file that looks complete
    assert time.monotonic() - started < 10
    health = subprocess.run(["curl", "-sS", "-f", f"{service.url}/healthz"], timeout=10)
    assert health.returncode == 0  # the event loop is alive
    fastdfs.storage.fault = None
    whole = subprocess.run(["curl", "-sS", "-f", url], capture_output=True, timeout=30)
    assert whole.stdout == source.read_bytes()


def test_a_download_fails_once_the_storage_goes_silent_not_while_it_trickles(
    fastdfs: FastDFS, tmp_path: Path
) -> None:
    """A download's reply is read by filegate itself (app/storage/fastdfs/download.py): no byte
    for the network timeout fails it; a slow but steady reply does not."""
    service = Service(
        {
            "STORAGE_MODE": "fastdfs",
            "FASTDFS_TRACKER_SERVERS": fastdfs.tracker_address,
            "FASTDFS_NETWORK_TIMEOUT": "2",
        }
    )
    service.start(tmp_path)
    try:
        source = tmp_path / "a.bin"
        data = os.urandom(3 * MiB + 5)
        source.write_bytes(data)
        url = f"{service.url}/files/{service.upload(source, 'a.bin')}/download"
        fastdfs.storage.fault = "stall_download"
        started = time.monotonic()
        out = tmp_path / "out"
        cut = subprocess.run(["curl", "-sS", "-o", str(out), url], timeout=30)
        assert cut.returncode != 0  # a failed transfer, not a short file that looks complete
        assert 2 <= time.monotonic() - started < 10
        assert data.startswith(out.read_bytes())
        fastdfs.storage.fault, fastdfs.storage.delay = "trickle_download", 0.25
        started = time.monotonic()
        ranged = subprocess.run(
            ["curl", "-sS", "-f", "-r", "100-200099", url], capture_output=True, timeout=30
        )
        assert ranged.stdout == data[100:200100]  # 13 writes 0.25 s apart: past the 2 s timeout
        assert time.monotonic() - started > 2.5
        fastdfs.storage.fault = None
        whole = subprocess.run(["curl", "-sS", "-f", url], capture_output=True, timeout=30)
        assert whole.stdout == data
    finally:
        fastdfs.storage.fault = None
        service.stop()


async def test_tracker_connection_is_not_reused_after_a_timeout(fastdfs: FastDFS) -> None:
    """A late reply must never be read as the answer to the next request (docs/fastdfs.md, D2)."""
    async with serve(fdfs_only(fastdfs)) as client:
        file_id = (await client.post("/files/upload", files={"file": ("a.txt", b"abc")})).json()[
            "file_id"
        ]
        fastdfs.tracker.fault, fastdfs.tracker.delay = "slow", 5  # > the 2 s network timeout
        timed_out = await client.post("/files/upload", files={"file": ("b.txt", b"b")})
        assert timed_out.status_code == 503
        fastdfs.tracker.fault = None
        # A reused connection would now deliver the 40-byte upload answer to this 39-byte query.
        for _ in range(3):
            response = await client.get(f"/files/{file_id}/download")
            assert response.status_code == 200
            assert response.content == b"abc"


async def test_tracker_connection_is_not_reused_after_a_cancellation(fastdfs: FastDFS) -> None:
    async with serve(fdfs_only(fastdfs)) as client:
        file_id = (await client.post("/files/upload", files={"file": ("a.txt", b"abc")})).json()[
            "file_id"
        ]
        fastdfs.tracker.fault, fastdfs.tracker.delay = "slow", 1
        with pytest.raises(TimeoutError):  # the client gives up: the request is cancelled
            await asyncio.wait_for(client.post("/files/upload", files={"file": ("b", b"b")}), 0.3)
        fastdfs.tracker.fault = None
        await asyncio.sleep(1.2)  # the late reply has arrived on the abandoned connection
        for _ in range(3):
            assert (await client.get(f"/files/{file_id}/download")).content == b"abc"


async def test_failed_uploads_leave_nothing(fastdfs: FastDFS) -> None:
    async with serve(fdfs_only(fastdfs, max_file_size="1MiB")) as client:

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(40):
                yield os.urandom(64 * 1024)

        streamed = await client.put("/files/upload/big.bin", content=chunks())
        assert streamed.status_code == 413
        form = await client.post(
            "/files/batch-upload",
            files=[("files", ("a.txt", b"a")), ("files", ("b.bin", os.urandom(2 * MiB)))],
        )
        assert form.status_code == 413
    assert fastdfs.stored_files() == []


def test_emulator_speaks_the_wire_protocol(fastdfs: FastDFS) -> None:
    """Byte layouts of docs/fastdfs.md, checked over a raw socket."""
    header = struct.Struct("!QBB")

    def exchange(port: int, cmd: int, body: bytes, status: int = 0) -> tuple[int, int, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(header.pack(len(body), cmd, status) + body)
            length, resp, code = header.unpack(sock.recv(10, socket.MSG_WAITALL))
            assert resp == 100
            payload = sock.recv(length, socket.MSG_WAITALL) if length else b""
            return code, length, payload

    tracker, storage = fastdfs.tracker.port, fastdfs.storage.port
    assert exchange(tracker, 111, b"")[:2] == (0, 0)  # ACTIVE_TEST
    code, length, body = exchange(tracker, 101, b"")  # QUERY_STORE_WITHOUT_GROUP_ONE
    assert (code, length) == (0, 40)
    assert body[:16].rstrip(b"\0") == b"group1"
    assert struct.unpack("!Q", body[31:39])[0] == storage

    content = b"hello protocol"
    code, length, body = exchange(
        storage, 11, struct.pack("!bQ6s", -1, len(content), b"txt") + content
    )
    assert (code, length) == (0, 60)  # group(16) + 44-character remote name
    remote = body[16:]
    assert remote.startswith(b"M00/") and remote.endswith(b".txt")

    group = b"group1".ljust(16, b"\0")
    code, _, body = exchange(storage, 14, struct.pack("!qq", 6, 4) + group + remote)
    assert (code, body) == (0, b"prot")  # DOWNLOAD_FILE with offset and length
    code, _, body = exchange(storage, 22, group + remote)  # QUERY_FILE_INFO
    assert code == 0
    assert struct.unpack("!q", body[:8])[0] == len(content)
    assert struct.unpack("!q", body[16:24])[0] & 0xFFFFFFFF == zlib.crc32(content)
    assert exchange(storage, 15, group + remote)[0] == 2  # no metadata: ENOENT
    assert exchange(tracker, 102, group + b"short")[0] == 22  # name shorter than 22

    code, _, body = exchange(storage, 11, struct.pack("!bQ6s", -1, 0, b"") + b"")
    empty = body[16:]
    assert exchange(storage, 14, struct.pack("!qq", 0, 0) + group + empty)[0] == 22  # 0-byte file


def test_emulator_runs_by_itself(tmp_path: Path) -> None:
    tracker_port, storage_port = free_ports(2)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fdfs_emulator", "--dir", str(tmp_path),
         "--tracker-port", str(tracker_port), "--storage-port", str(storage_port)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert b"tracker 127.0.0.1:" in process.stdout.readline()
        with socket.create_connection(("127.0.0.1", tracker_port), timeout=5) as sock:
            sock.sendall(struct.pack("!QBB", 0, 111, 0))
            assert sock.recv(10, socket.MSG_WAITALL) == struct.pack("!QBB", 0, 100, 0)
    finally:
        process.terminate()
        process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()


def test_large_transfers_keep_memory_bounded(fastdfs: FastDFS, tmp_path: Path) -> None:
    """200 MiB through the real process, streamed (curl -T) and spooled (curl -F)."""
    service = Service(
        {
            "STORAGE_MODE": "fastdfs",
            "FASTDFS_TRACKER_SERVERS": fastdfs.tracker_address,
        }
    )
    source = tmp_path / "big.bin"
    with source.open("wb") as file:
        for _ in range(200):
            file.write(os.urandom(MiB))
    service.start(tmp_path)
    try:
        for args in (["-T", str(source), f"{service.url}/files/upload/big.bin"],
                     ["-F", f"file=@{source}", f"{service.url}/files/upload"]):  # fmt: skip
            done = subprocess.run(["curl", "-sS", "-f", *args], capture_output=True, check=True)
            file_id = done.stdout.decode().split('"file_id":"')[1].split('"')[0]
            out = tmp_path / "out.bin"
            subprocess.run(
                ["curl", "-sS", "-f", "-o", str(out), f"{service.url}/files/{file_id}/download"],
                check=True,
            )
            assert out.stat().st_size == source.stat().st_size
            assert zlib.crc32(out.read_bytes()) == zlib.crc32(source.read_bytes())
        peak_mib = service.peak_rss_kib() / 1024
        assert peak_mib < 150, f"peak RSS {peak_mib:.0f} MiB"
    finally:
        service.stop()


def test_a_client_that_takes_nothing_holds_back_the_storage_not_memory(
    fastdfs_service: Service, tmp_path: Path
) -> None:
    """docs/fastdfs.md, "Downloads": while the client reads nothing, a download holds at most two
    1 MiB pieces and stops reading the storage's socket, so the storage server waits instead
    of filegate's memory filling up. Then the client reads on and gets every byte."""
    size = 192 * MiB
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(size))
    file_id = fastdfs_service.upload(source, "big.bin")
    url = f"{fastdfs_service.url}/files/{file_id}/download"
    subprocess.run(["curl", "-sS", "-f", "-o", os.devnull, url], check=True)  # the heap's size
    before = fastdfs_service.rss_kib() / 1024

    host, port = fastdfs_service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.sendall(f"GET /files/{file_id}/download HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received:
            received += client.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        grown = 0.0
        for _ in range(30):  # 3 s of taking nothing
            time.sleep(0.1)
            grown = max(grown, fastdfs_service.rss_kib() / 1024 - before)
        parts = [body]
        got = len(body)
        while got < size:
            chunk = client.recv(MiB)
            assert chunk, f"the download ended after {got} bytes"
            parts.append(chunk)
            got += len(chunk)
    assert zlib.crc32(b"".join(parts)) == zlib.crc32(source.read_bytes())
    assert grown < 24, f"RSS grew {grown:.0f} MiB while the client took nothing"
