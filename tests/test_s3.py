"""What only the S3 backend has: separate key pairs, bucket creation, an outage and recovery."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import socket
import threading
import zipfile
import zlib
from urllib.parse import urlsplit

import httpx
from asgi_lifespan import LifespanManager

from app.main import create_app
from app.storage.s3.client import LazyClient
from tests.conftest import (
    SIGNING_SECRET as SECRET,
)
from tests.conftest import (
    created_bucket,
    s3_admin,
    s3_settings,
    serve,
    unique_bucket,
)
from tests.servers import ADMIN, READER, WRITER, SeaweedFS


async def _every_read(client: httpx.AsyncClient, file_id: str, data: bytes) -> None:
    """Download, HEAD, range, info, zip, a signed link and a direct (presigned) link."""
    assert (await client.get(f"/files/{file_id}/download")).content == data
    assert (await client.head(f"/files/{file_id}/download")).status_code == 200
    ranged = await client.get(f"/files/{file_id}/download", headers={"Range": "bytes=1-"})
    assert ranged.content == data[1:]
    assert (await client.get(f"/files/{file_id}/info")).json()["file_size"] == len(data)
    archive = await client.post("/files/download-zip", json=[{"file_id": file_id}])
    assert archive.status_code == 200, archive.text
    with zipfile.ZipFile(io.BytesIO(archive.content)) as unpacked:
        assert unpacked.read(unpacked.namelist()[0]) == data
    signed = (await client.post(f"/files/{file_id}/link", json={})).json()["url"]
    assert (await client.get(signed.removeprefix("http://filegate"))).content == data
    direct = (await client.post(f"/files/{file_id}/link", json={"direct": True})).json()["url"]
    async with httpx.AsyncClient() as plain:
        assert (await plain.get(direct)).content == data


async def test_reads_go_through_the_read_only_pair(seaweed: SeaweedFS, bucket: str) -> None:
    """The write identity may not read, the read identity may not write: every read that
    succeeds used the read pair, and uploads and deletes need nothing but the write pair."""
    split = s3_settings(seaweed.endpoint, bucket, signing_secret=SECRET)
    async with serve(split) as client:
        attach = (await client.post("/files/upload", files={"file": ("a.txt", b"abc")})).json()
        file_id = attach["file_id"]
        await _every_read(client, file_id, b"abc")
        assert (await client.delete(f"/files/{file_id}")).status_code == 200
        assert (await client.get(f"/files/{file_id}/info")).status_code == 404

    # Proof that the identities really are split: the writer alone uploads and deletes but
    # cannot read ...
    write_only = s3_settings(
        seaweed.endpoint,
        bucket,
        s3_read_access_key_id=None,
        s3_read_secret_access_key=None,
        signing_secret=SECRET,
    )
    async with serve(write_only) as client:
        attach = (await client.post("/files/upload", files={"file": ("b.txt", b"bbb")})).json()
        doomed = (await client.post("/files/upload", files={"file": ("d.txt", b"d")})).json()
        assert (await client.delete(f"/files/{doomed['file_id']}")).status_code == 200
        for denied in (
            await client.get(f"/files/{attach['file_id']}/info"),
            await client.get(f"/files/{attach['file_id']}/download"),
            await client.post("/files/download-zip", json=[{"file_id": attach["file_id"]}]),
            await client.post(f"/files/{attach['file_id']}/link", json={}),
        ):
            assert denied.status_code == 500
            assert denied.json()["code"] == "storage_error"
            assert WRITER[1] not in denied.text
    async with s3_admin(seaweed.endpoint) as s3:
        listed = await s3.list_objects_v2(Bucket=bucket)
    assert [item["Key"] for item in listed["Contents"]] == [attach["file_id"].split("/", 1)[1]]

    # ... and the reader alone serves every read but cannot write or delete.
    read_only = s3_settings(
        seaweed.endpoint,
        bucket,
        s3_access_key_id=READER[0],
        s3_secret_access_key=READER[1],
        signing_secret=SECRET,
    )
    async with serve(read_only) as client:
        await _every_read(client, attach["file_id"], b"bbb")
        for refused in (
            await client.post("/files/upload", files={"file": ("c.txt", b"c")}),
            await client.delete(f"/files/{attach['file_id']}"),
        ):
            assert refused.status_code == 500
            assert refused.json()["code"] == "storage_error"
        assert (await client.get(f"/files/{attach['file_id']}/download")).content == b"bbb"


async def test_create_bucket_at_startup(seaweed: SeaweedFS) -> None:
    name = unique_bucket()
    settings = s3_settings(
        seaweed.endpoint,
        name,
        s3_access_key_id=ADMIN[0],
        s3_secret_access_key=ADMIN[1],
        s3_create_bucket=True,
    )
    async with serve(settings) as client:
        response = await client.post("/files/upload", files={"file": ("a.txt", b"abc")})
        assert response.status_code == 201
    async with serve(settings) as client:  # a second start finds it and carries on
        assert (await client.get(f"/files/{response.json()['file_id']}/download")).content == b"abc"
    async with s3_admin(seaweed.endpoint) as s3:
        await s3.head_bucket(Bucket=name)


async def test_file_in_a_missing_allowed_bucket_is_404(seaweed: SeaweedFS, bucket: str) -> None:
    missing = unique_bucket()
    settings = s3_settings(seaweed.endpoint, bucket, s3_buckets=[bucket, missing])
    async with serve(settings) as client:
        response = await client.get(f"/files/s3:{missing}/0123456789abcdef_a.txt/info")
        assert response.status_code == 404
        assert response.json()["code"] == "file_not_found"


async def test_s3_outage_is_503_and_the_service_recovers(private_seaweed: SeaweedFS) -> None:
    bucket = await created_bucket(private_seaweed.endpoint)
    app = create_app(s3_settings(private_seaweed.endpoint, bucket))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://filegate") as client:
            data = os.urandom(1000)
            attach = (await client.post("/files/upload", files={"file": ("a.bin", data)})).json()
            file_id = attach["file_id"]

            private_seaweed.stop()
            for response in (
                await client.get(f"/files/{file_id}/info"),
                await client.get(f"/files/{file_id}/download"),
                await client.post("/files/upload", files={"file": ("b.bin", b"b")}),
                await client.delete(f"/files/{file_id}"),
            ):
                assert response.status_code == 503, response.text
                assert response.json()["code"] == "backend_unavailable"
                assert int(response.headers["retry-after"]) > 0
                assert "Traceback" not in response.text
                assert WRITER[1] not in response.text
            metrics = (await client.get("/metrics")).text
            assert 'filegate_backend_errors_total{backend="s3",code="backend_unavailable"} 4.0' in (
                metrics
            )

            private_seaweed.start()  # same ports, same data
            recovered = await client.get(f"/files/{file_id}/download")
            assert recovered.status_code == 200
            assert recovered.content == data


class FaultyS3:
    """An HTTP relay on loopback in front of SeaweedFS that answers ``503 SlowDown`` (and closes
    the connection) instead of forwarding the first ``failures`` requests whose request line
    contains ``marker``; it records every request line it sees."""

    def __init__(self, endpoint: str, marker: bytes, failures: int) -> None:
        self._upstream = urlsplit(endpoint)
        self._marker = marker
        self._failures = failures
        self.seen: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        host, port = self._upstream.hostname, self._upstream.port
        with client, socket.create_connection((host, port)) as server:
            threading.Thread(target=_pump, args=(server, client), daemon=True).start()
            reader = client.makefile("rb")
            while head := _read_head(reader):
                line = head.split(b"\r\n", 1)[0]
                self.seen.append(line)
                declared = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                length = int(declared[1]) if declared else 0  # obstore's GET and HEAD send none
                if self._marker in line and self._failures > 0:
                    self._failures -= 1
                    reader.read(length)
                    error = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                    client.sendall(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(error), error)
                    )
                    return
                server.sendall(head + reader.read(length))


def _read_head(reader: io.BufferedReader) -> bytes:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline()
        if not line:
            return b""
        head += line
    return head


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(1 << 16):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


async def test_a_part_s3_refuses_once_is_sent_again(seaweed: SeaweedFS, bucket: str) -> None:
    """Parts go out as memoryviews, which botocore cannot rewind for its retry: the backend
    makes the retry itself (docs/performance.md). S3 refuses the second part once with a 503;
    the upload still succeeds, byte-identical, with that part sent twice. Refused every time,
    the upload is a 503 that leaves no object and no pending multipart upload."""
    data = os.urandom(20 * 2**20 + 3)  # three 8 MiB parts
    relay = FaultyS3(seaweed.endpoint, b"&partNumber=2 ", failures=1)
    try:
        async with serve(s3_settings(relay.endpoint, bucket)) as client:
            answer = await client.put("/files/upload/retried.bin", content=data)
            assert answer.status_code == 201, answer.text
            key = answer.json()["file_id"].removeprefix(f"s3:{bucket}/")
        assert sum(b"&partNumber=2 " in line for line in relay.seen) == 2
        async with s3_admin(seaweed.endpoint) as s3:
            stored = await s3.get_object(Bucket=bucket, Key=key)
            async with stored["Body"] as body:
                assert await body.read() == data
            await s3.delete_object(Bucket=bucket, Key=key)
    finally:
        relay.close()
    relay = FaultyS3(seaweed.endpoint, b"&partNumber=2 ", failures=10)
    try:
        async with serve(s3_settings(relay.endpoint, bucket)) as client:
            refused = await client.put("/files/upload/refused.bin", content=data)
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "backend_unavailable"
            assert sum(b"&partNumber=2 " in line for line in relay.seen) == 3
            # S3 answered "unavailable": the abort is left to the background clean-up
            async with s3_admin(seaweed.endpoint) as s3:
                for _ in range(100):
                    pending = await s3.list_multipart_uploads(Bucket=bucket)
                    if not pending.get("Uploads"):
                        break
                    await asyncio.sleep(0.1)
                assert pending.get("Uploads", []) == []
                assert (await s3.list_objects_v2(Bucket=bucket)).get("Contents", []) == []
    finally:
        relay.close()


async def test_a_multipart_files_crc_is_remembered_for_its_etag(
    seaweed: SeaweedFS, bucket: str
) -> None:
    """S3 tells a multipart object's CRC-32 only when asked in a request of its own; filegate
    remembers what it completed or asked for, by ETag (app/storage/s3/core.py, ``KnownCrcs``).
    An object replaced behind filegate's back has a new ETag, so its own CRC is asked for."""
    data = os.urandom(9 * 2**20)  # two parts
    relay = FaultyS3(seaweed.endpoint, b"never matches", failures=0)

    def heads() -> int:
        return sum(line.startswith(b"HEAD ") for line in relay.seen)

    try:
        async with serve(s3_settings(relay.endpoint, bucket)) as client:
            answer = await client.put("/files/upload/m.bin", content=data)
            assert answer.status_code == 201, answer.text
            file_id = answer.json()["file_id"]
            relay.seen.clear()
            info = await client.get(f"/files/{file_id}/info")
            assert info.json()["crc32"] == f"{zlib.crc32(data):08x}"
            assert heads() == 1  # the object's: its CRC-32 is known from the upload
            archive = await client.post("/files/download-zip", json=[{"file_id": file_id}])
            entry = zipfile.ZipFile(io.BytesIO(archive.content)).infolist()[0]
            assert entry.compress_type == zipfile.ZIP_STORED
            assert zlib.crc32(data) == entry.CRC

            other = os.urandom(5000)
            async with s3_admin(seaweed.endpoint) as s3:
                key = file_id.removeprefix(f"s3:{bucket}/")
                await s3.put_object(Bucket=bucket, Key=key, Body=other, ChecksumAlgorithm="CRC32")
            relay.seen.clear()
            info = await client.get(f"/files/{file_id}/info")
            assert info.json()["crc32"] == f"{zlib.crc32(other):08x}"
            assert heads() == 2  # a new ETag: the CRC-32 is asked for
            relay.seen.clear()
            again = await client.get(f"/files/{file_id}/info")
            assert again.json()["crc32"] == f"{zlib.crc32(other):08x}"
            assert heads() == 1  # and remembered
    finally:
        relay.close()


async def test_small_files_and_readiness_never_open_the_aiobotocore_clients(
    seaweed: SeaweedFS, bucket: str
) -> None:
    """Small uploads, downloads, HEAD, info, delete and /readyz go through obstore: botocore's
    models (about 12 MiB) are loaded only by what needs aiobotocore, here a listing."""
    app = create_app(s3_settings(seaweed.endpoint, bucket))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://filegate") as client:
            backend = app.state.routes.targets["s3"].backend
            clients = (backend.write_client, backend.read_client)
            assert all(isinstance(c, LazyClient) for c in clients)
            stored = await client.put("/files/upload/small.txt", content=b"small")
            file_id = stored.json()["file_id"]
            assert (await client.get(f"/files/{file_id}/download")).content == b"small"
            assert (await client.head(f"/files/{file_id}/download")).status_code == 200
            assert (await client.get(f"/files/{file_id}/info")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.delete(f"/files/{file_id}")).status_code == 200
            assert not any(c.opened for c in clients)
            listed = await client.get("/files", params={"prefix": f"s3:{bucket}/"})
            assert listed.status_code == 200
            assert backend.read_client.opened
