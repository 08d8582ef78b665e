"""Resumable uploads (tus 1.0.0), spoken over ASGI against every storage mode: the real local
disk, SeaweedFS and the FastDFS emulator. Process-level tests (tuspy, replicas, races, cut
connections) are in tests/test_tus_e2e.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from app.storage.base import ObjectRef
from app.storage.budget import Budget
from app.storage.fastdfs.backend import FastDFSBackend
from tests.conftest import Storage, live_memory, s3_admin, serve, settings_for
from tests.test_files import assert_error

MiB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}


def meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


async def create(
    client: httpx.AsyncClient,
    length: int | None,
    *,
    headers: dict[str, str] | None = None,
    **m: str,
) -> httpx.Response:
    sized = {"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"}
    values = m or {"filename": "data.bin"}
    return await client.post(
        "/files/tus", headers={**TUS, **sized, "Upload-Metadata": meta(**values), **(headers or {})}
    )


def path_of(response: httpx.Response) -> str:
    location = response.headers["location"]
    return "/files/tus/" + location.rsplit("/files/tus/", 1)[1]


async def patch(
    client: httpx.AsyncClient, url: str, offset: int, data: bytes, **headers: str
) -> httpx.Response:
    return await client.patch(
        url, content=data, headers={**OCTETS, "Upload-Offset": str(offset), **headers}
    )


def _fastdfs_tus_state(storage: Storage, key: str) -> dict[str, Any] | None:
    """The state an appender file keeps in its metadata (``FilegateTusState000``…), if any."""
    assert storage.fastdfs is not None
    path = storage.fastdfs.storage.path(key)
    assert path is not None
    meta = path.with_name(path.name + "-m")
    if not meta.is_file():
        return None
    records = dict(r.split(b"\x02", 1) for r in meta.read_bytes().split(b"\x01"))
    parts = sorted((k, v) for k, v in records.items() if k.startswith(b"FilegateTusState"))
    return json.loads(b"".join(v for _, v in parts)) if parts else None


async def tus_leftovers(storage: Storage) -> list[str]:
    """Everything stored for resumable uploads: state, tails and pending multipart uploads (on
    FastDFS: the replica's index entries, and the files that still carry a state)."""
    if storage.backend == "fastdfs":
        assert storage.fastdfs is not None
        index = storage.fastdfs.root.parent / "data" / ".filegate-tus-fastdfs"
        indexed = sorted(p.name for p in index.iterdir()) if index.exists() else []
        states = [f"(state) {k}" for k in await storage.keys() if _fastdfs_tus_state(storage, k)]
        return indexed + states
    if storage.backend == "memory":
        return sorted(live_memory().uploads)
    if storage.root is not None:
        tus_dir = storage.root / ".filegate-tus"
        return sorted(p.name for p in tus_dir.iterdir()) if tus_dir.exists() else []
    assert storage.endpoint is not None
    async with s3_admin(storage.endpoint) as s3:
        listed = await s3.list_objects_v2(Bucket=storage.bucket, Prefix=".filegate-tus/")
        pending = await s3.list_multipart_uploads(Bucket=storage.bucket)
    return [i["Key"] for i in listed.get("Contents", [])] + [
        f"(pending) {u['Key']}" for u in pending.get("Uploads", [])
    ]


async def download(client: httpx.AsyncClient, file_id: str) -> bytes:
    response = await client.get(f"/files/{file_id}/download")
    assert response.status_code == 200, response.text
    return response.content


async def stored_files(storage: Storage) -> list[str]:
    """The stored files, without resumable uploads in progress."""
    keys = [k for k in await storage.keys() if not k.startswith(".filegate-tus/")]
    if storage.backend == "fastdfs":
        keys = [k for k in keys if (_fastdfs_tus_state(storage, k) or {"done": True})["done"]]
    return keys


@pytest.fixture(params=["local", "s3", "fastdfs", "hybrid", "memory"])
async def tus_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    from tests.conftest import make_storage

    return await make_storage(request.param, request, tmp_path)


async def test_options_announce_the_protocol(tmp_path: Path) -> None:
    storage = Storage("local", "local", "files", root=tmp_path / "data")
    async with serve(settings_for(storage, max_file_size="5MB")) as client:
        response = await client.options("/files/tus")
    assert response.status_code == 204
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["tus-version"] == "1.0.0"
    assert set(response.headers["tus-extension"].split(",")) == {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "checksum",
        "expiration",
    }
    assert response.headers["tus-checksum-algorithm"] == "sha1,sha256,md5,crc32"
    assert response.headers["tus-max-size"] == "5000000"


async def test_chunks_of_any_size_make_the_file(tus_storage: Storage) -> None:
    """1 byte, 100 KiB, 9 MiB (across an 8 MiB part) and the rest: HEAD follows every step, the
    last PATCH answers the file id, and the stored file is byte-identical, with its CRC-32."""
    data = os.urandom(20 * MiB + 123)
    async with serve(settings_for(tus_storage)) as client:
        created = await create(client, len(data), filename="big report.pdf", folder="tus/in")
        assert created.status_code == 201, created.text
        assert created.headers["upload-expires"].endswith("GMT")
        url = path_of(created)
        offset = 0
        for size in (1, 100 * 1024, 9 * MiB, 3 * MiB, 1, len(data)):
            chunk = data[offset : offset + size]
            answer = await patch(client, url, offset, chunk)
            assert answer.status_code == 204, answer.text
            offset += len(chunk)
            assert answer.headers["upload-offset"] == str(offset)
            head = await client.head(url, headers=TUS)
            assert head.headers["upload-offset"] == str(offset)
            assert head.headers["cache-control"] == "no-store"
            if offset == len(data):
                break
            assert "file-id" not in answer.headers
        file_id = unquote(answer.headers["file-id"])  # percent-encoded, as in a URL
        if tus_storage.backend == "fastdfs":  # FastDFS names the file (no folders)
            assert file_id.startswith(f"{tus_storage.prefix}M00/") and file_id.endswith(".pdf")
        else:
            assert file_id.startswith(f"{tus_storage.prefix}tus/in/")
            assert file_id.endswith("_big report.pdf")
            assert answer.headers["file-id"].endswith("_big%20report.pdf")
        assert unquote(head.headers["file-id"]) == file_id
        assert head.headers["upload-length"] == str(len(data))
        assert await tus_storage.read(file_id) == data
        assert await download(client, file_id) == data
        info = (await client.get(f"/files/{file_id}/info")).json()
        assert info["file_name"] == "big report.pdf"
        assert info["content_type"] == "application/pdf"
        assert info["crc32"] == f"{zlib.crc32(data):08x}"  # parts of any size: still known
        zipped = await client.post("/files/download-zip", json=[{"file_id": file_id}])
        assert zipped.status_code == 200
        # a stored entry carries the file's CRC-32 in its local header
        assert int.from_bytes(zipped.content[14:18], "little") == zlib.crc32(data)
        assert zipped.content[8:10] == b"\x00\x00"  # method: stored
        assert await stored_files(tus_storage) == [file_id.removeprefix(tus_storage.prefix)]
        # what stays until the upload expires: its state alone (HEAD still answers File-Id)
        leftovers = await tus_leftovers(tus_storage)
        if tus_storage.backend == "fastdfs":  # in the file's metadata, and the sweep's index
            assert leftovers == [url.rsplit("/", 1)[1], f"(state) {file_id.split('/', 1)[1]}"]
        elif tus_storage.backend == "memory":  # its state, holding no bytes
            assert leftovers == [url.rsplit("/", 1)[1]]
        else:
            assert len(leftovers) == 1
            assert leftovers[0].endswith((".info", ".json"))


async def test_small_and_empty_uploads(tus_storage: Storage) -> None:
    async with serve(settings_for(tus_storage)) as client:
        empty = await create(client, 0, filename="empty.txt")
        assert empty.status_code == 201, empty.text
        assert empty.headers["upload-offset"] == "0"
        assert await download(client, empty.headers["file-id"]) == b""
        # creation-with-upload: the whole file in the POST
        body = b"hello resumable world"
        created = await client.post(
            "/files/tus",
            content=body,
            headers={
                **OCTETS,
                "Upload-Length": str(len(body)),
                "Upload-Metadata": meta(filename="hello.txt", metadata='{"team": "a"}'),
            },
        )
        assert created.status_code == 201, created.text
        assert created.headers["upload-offset"] == str(len(body))
        file_id = created.headers["file-id"]
        assert await download(client, file_id) == body
        info = (await client.get(f"/files/{file_id}/info")).json()
        assert info["metadata"] == {"team": "a"}
        assert info["content_type"].startswith("text/plain")


async def test_deferred_length(tus_storage: Storage) -> None:
    data = os.urandom(9 * MiB)
    async with serve(settings_for(tus_storage)) as client:
        created = await create(client, None)
        url = path_of(created)
        head = await client.head(url, headers=TUS)
        assert head.headers["upload-defer-length"] == "1"
        assert (await patch(client, url, 0, data[: 5 * MiB])).status_code == 204
        last = await patch(
            client, url, 5 * MiB, data[5 * MiB :], **{"Upload-Length": str(len(data))}
        )
        assert last.status_code == 204, last.text
        assert await download(client, last.headers["file-id"]) == data


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5", "crc32"])
async def test_checksums(tmp_path: Path, algorithm: str) -> None:
    storage = Storage("local", "local", "files", root=tmp_path / "data")
    data = os.urandom(300_000)
    digest = (
        zlib.crc32(data).to_bytes(4, "big")
        if algorithm == "crc32"
        else hashlib.new(algorithm, data).digest()
    )
    good = f"{algorithm} {base64.b64encode(digest).decode()}"
    bad = f"{algorithm} {base64.b64encode(bytes(len(digest))).decode()}"
    async with serve(settings_for(storage)) as client:
        url = path_of(await create(client, len(data) * 2))
        refused = await patch(client, url, 0, data, **{"Upload-Checksum": bad})
        assert_error(refused, 460, "checksum_mismatch")
        head = await client.head(url, headers=TUS)
        assert head.headers["upload-offset"] == "0"
        accepted = await patch(client, url, 0, data, **{"Upload-Checksum": good})
        assert accepted.status_code == 204
        assert accepted.headers["upload-offset"] == str(len(data))


async def test_checksum_mismatch_discards_the_chunk_across_parts(tus_storage: Storage) -> None:
    """On S3 the refused chunk spans a whole part that was already sent: it must not become part
    of the file."""
    data = os.urandom(18 * MiB)
    wrong = hashlib.sha1(b"something else").digest()
    right = hashlib.sha1(data[MiB:]).digest()
    async with serve(settings_for(tus_storage)) as client:
        url = path_of(await create(client, len(data)))
        assert (await patch(client, url, 0, data[:MiB])).status_code == 204
        corrupt = bytes(len(data) - MiB)
        refused = await patch(
            client,
            url,
            MiB,
            corrupt,
            **{"Upload-Checksum": f"sha1 {base64.b64encode(wrong).decode()}"},
        )
        assert_error(refused, 460, "checksum_mismatch")
        assert (await client.head(url, headers=TUS)).headers["upload-offset"] == str(MiB)
        done = await patch(
            client,
            url,
            MiB,
            data[MiB:],
            **{"Upload-Checksum": f"sha1 {base64.b64encode(right).decode()}"},
        )
        assert done.status_code == 204, done.text
        assert await tus_storage.read(done.headers["file-id"]) == data


async def test_protocol_errors(tmp_path: Path) -> None:
    storage = Storage("local", "local", "files", root=tmp_path / "data")
    async with serve(settings_for(storage)) as client:
        url = path_of(await create(client, 10))
        assert_error(await patch(client, url, 3, b"abc"), 409, "offset_mismatch")
        assert (await patch(client, url, 0, b"abc")).status_code == 204
        assert_error(await patch(client, url, 0, b"abc"), 409, "offset_mismatch")
        wrong_type = await client.patch(
            url, content=b"x", headers={**TUS, "Upload-Offset": "3", "Content-Type": "text/plain"}
        )
        assert_error(wrong_type, 415, "unsupported_media_type")
        old = await client.patch(
            url,
            content=b"x",
            headers={**OCTETS, "Tus-Resumable": "0.2.2", "Upload-Offset": "3"},
        )
        assert_error(old, 412, "unsupported_version")
        assert old.headers["tus-version"] == "1.0.0"
        too_much = await patch(client, url, 3, b"12345678")
        assert_error(too_much, 413, "file_too_large")
        assert (await client.head(url, headers=TUS)).headers["upload-offset"] == "3"
        unknown = await client.head("/files/tus/" + "0" * 32, headers=TUS)
        assert unknown.status_code == 404
        no_length = await client.post(
            "/files/tus", headers={**TUS, "Upload-Metadata": meta(filename="a.txt")}
        )
        assert_error(no_length, 400, "invalid_argument")
        no_name = await client.post(
            "/files/tus", headers={**TUS, "Upload-Length": "3", "Upload-Metadata": meta(x="y")}
        )
        assert_error(no_name, 400, "invalid_argument")
        bad_meta = await client.post(
            "/files/tus",
            headers={**TUS, "Upload-Length": "3", "Upload-Metadata": "filename !!notbase64"},
        )
        assert_error(bad_meta, 400, "invalid_argument")


async def test_every_upload_rule_applies_at_creation(tus_storage: Storage) -> None:
    settings = settings_for(tus_storage, max_file_size="1MB", file_blacklist="exe")
    async with serve(settings) as client:
        assert_error(await create(client, 2_000_000), 413, "file_too_large")
        assert_error(await create(client, 10, filename="run.exe"), 400, "invalid_file_type")
        assert_error(await create(client, 10, filename="../x.txt"), 400, "invalid_argument")
        assert_error(
            await create(client, 10, filename="a.txt", folder="../up"), 400, "invalid_argument"
        )
        elsewhere = await create(client, 10, filename="a.txt", bucket="not-allowed-bucket")
        if tus_storage.backend == "fastdfs":  # FastDFS chooses the group
            assert_error(elsewhere, 400, "invalid_argument")
            long_value = json.dumps({"note": "x" * 300})  # FastDFS keeps 256 bytes a value
            assert_error(
                await create(client, 10, filename="a.txt", metadata=long_value),
                400,
                "invalid_argument",
            )
        else:
            assert_error(elsewhere, 403, "bucket_not_allowed")
        assert_error(
            await create(client, 10, filename="a.txt", metadata="[1]"), 400, "invalid_argument"
        )
        deferred = path_of(await create(client, None))
        over = await patch(client, deferred, 0, b"x", **{"Upload-Length": "2000000"})
        assert_error(over, 413, "file_too_large")
        big = await patch(client, deferred, 0, os.urandom(1_000_001))
        assert_error(big, 413, "file_too_large")
    assert await stored_files(tus_storage) == []


async def test_termination_leaves_nothing(tus_storage: Storage) -> None:
    data = os.urandom(10 * MiB)
    async with serve(settings_for(tus_storage)) as client:
        url = path_of(await create(client, 30 * MiB))
        assert (await patch(client, url, 0, data)).status_code == 204
        assert await tus_leftovers(tus_storage) != []
        gone = await client.delete(url, headers=TUS)
        assert gone.status_code == 204
        assert (await client.head(url, headers=TUS)).status_code == 404
        assert_error(await patch(client, url, len(data), b"x"), 404, "upload_not_found")
    assert await tus_leftovers(tus_storage) == []
    assert await tus_storage.keys() == []


async def test_expired_uploads_are_swept(tus_storage: Storage) -> None:
    """The in-process sweep removes an expired upload's state, tail and pending parts; a finished
    upload's state goes too, but its file stays."""
    settings = settings_for(tus_storage, tus_expires=2, tus_sweep_interval=3)
    data = os.urandom(9 * MiB)
    async with serve(settings) as client:
        url = path_of(await create(client, 20 * MiB))
        assert (await patch(client, url, 0, data)).status_code == 204
        finished = await client.post(
            "/files/tus",
            content=b"kept",
            headers={**OCTETS, "Upload-Length": "4", "Upload-Metadata": meta(filename="k.txt")},
        )
        kept = finished.headers["file-id"]
        assert await tus_leftovers(tus_storage) != []
        await asyncio.sleep(2.2)
        assert (await client.head(url, headers=TUS)).status_code == 410  # the first sweep is at 3 s
        assert_error(await patch(client, url, len(data), b"x"), 410, "upload_expired")
        for _ in range(100):
            if not await tus_leftovers(tus_storage):
                break
            await asyncio.sleep(0.1)
        assert await tus_leftovers(tus_storage) == []
        assert (await client.head(url, headers=TUS)).status_code == 404
        assert await download(client, kept) == b"kept"
    assert await tus_storage.keys() == [kept.removeprefix(tus_storage.prefix)]


async def _fastdfs_write(storage: Storage, file_id: str, offset: int, data: bytes) -> None:
    """What another writer does to an appender file behind filegate's back: MODIFY_FILE."""
    assert storage.fastdfs is not None
    backend = FastDFSBackend([storage.fastdfs.tracker_address], 2, 2, Budget(MiB, 1), 10)
    try:
        group, _, remote = file_id.partition("/")
        appender = await backend.appender(ObjectRef(group, remote))
        await appender.write(offset, memoryview(data))
    finally:
        await backend.close()


async def test_fastdfs_uploads_are_appender_files(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The upload id names the appender file; an ordinary file is no upload; bytes a crash left
    beyond the committed offset are written over or cut off; bytes changed under the committed
    offset are caught when the upload completes, and it starts again from 0."""
    from tests.conftest import make_storage
    from tests.test_files import uploaded

    storage = await make_storage("fastdfs", request, tmp_path)
    data = os.urandom(10 * MiB + 7)
    async with serve(settings_for(storage)) as client:
        plain = await uploaded(client, "plain.txt", b"plain")
        as_upload = base64.urlsafe_b64encode(plain.encode()).decode().rstrip("=")
        assert (await client.head(f"/files/tus/{as_upload}", headers=TUS)).status_code == 404
        assert_error(
            await patch(client, f"/files/tus/{as_upload}", 5, b"x"), 404, "upload_not_found"
        )
        assert (await client.head("/files/tus/" + "A" * 40, headers=TUS)).status_code == 404

        url = path_of(await create(client, len(data), filename="clip.mp4"))
        file_id = base64.urlsafe_b64decode(url.rsplit("/", 1)[1] + "==").decode()
        assert (await patch(client, url, 0, data[: 3 * MiB])).status_code == 204
        # not a file until complete, though FastDFS named it at creation
        assert_error(await client.get(f"/files/{file_id}/info"), 404, "file_not_found")
        assert_error(await client.get(f"/files/{file_id}/download"), 404, "file_not_found")
        zipped = await client.post("/files/download-zip", json=[{"file_id": file_id}])
        assert_error(zipped, 404, "file_not_found")
        assert_error(await client.post(f"/files/{file_id}/copy", json={}), 404, "file_not_found")
        # a PATCH that wrote and crashed before its commit: garbage beyond the offset
        await _fastdfs_write(storage, file_id, 3 * MiB, os.urandom(8 * MiB))
        assert (await client.head(url, headers=TUS)).headers["upload-offset"] == str(3 * MiB)
        assert (await patch(client, url, 3 * MiB, data[3 * MiB : 9 * MiB])).status_code == 204
        # a writer that changes acknowledged bytes: caught on completion, the upload restarts
        await _fastdfs_write(storage, file_id, MiB, b"not what was sent")
        last = await patch(client, url, 9 * MiB, data[9 * MiB :])
        assert_error(last, 409, "offset_mismatch")
        assert (await client.head(url, headers=TUS)).headers["upload-offset"] == "0"
        done = await patch(client, url, 0, data)
        assert done.status_code == 204, done.text
        assert done.headers["file-id"] == file_id
        assert await storage.read(file_id) == data
        assert await download(client, file_id) == data
        info = (await client.get(f"/files/{file_id}/info")).json()
        assert (info["file_name"], info["content_type"]) == ("clip.mp4", "video/mp4")
        assert info["metadata"] == {}  # the state records are the upload's, not the file's
        assert info["crc32"] == f"{zlib.crc32(data):08x}"


async def test_a_patch_in_progress_holds_the_upload(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """While one PATCH streams (its body paused midway), a second at the same offset is 423 and
    changes nothing; the first then completes the file with its own bytes (FastDFS: the lease
    in the appender's metadata)."""
    from tests.conftest import make_storage

    storage = await make_storage("fastdfs", request, tmp_path)
    data = os.urandom(6 * MiB)
    resume = asyncio.Event()

    async def paused() -> AsyncIterator[bytes]:
        yield data[: 5 * MiB]
        await resume.wait()
        yield data[5 * MiB :]

    async with serve(settings_for(storage)) as client:
        url = path_of(await create(client, len(data)))
        first = asyncio.create_task(
            client.patch(
                url,
                content=paused(),
                headers={**OCTETS, "Upload-Offset": "0", "Content-Length": str(len(data))},
            )
        )
        assert storage.fastdfs is not None
        for _ in range(500):  # until the first PATCH has written its first piece
            paths = [storage.fastdfs.storage.path(k) for k in await storage.keys()]
            if any(p and p.stat().st_size for p in paths):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the first PATCH wrote nothing")
        second = await patch(client, url, 0, os.urandom(MiB))
        assert_error(second, 423, "upload_locked")
        resume.set()
        answer = await first
        assert answer.status_code == 204, answer.text
        assert await download(client, answer.headers["file-id"]) == data


async def test_an_upload_belongs_to_its_key(tmp_path: Path) -> None:
    keys: list[dict[str, Any]] = [
        {"name": "alice", "key": "alice-key-0123456789", "scopes": ["read", "write"]},
        {"name": "bob", "key": "bob-key-0123456789ab", "scopes": ["read", "write"]},
        {"name": "reader", "key": "reader-key-012345678", "scopes": ["read"]},
        {"name": "team", "key": "team-key-0123456789a", "scopes": ["write"], "folders": ["t"]},
    ]
    storage = Storage("local", "local", "files", root=tmp_path / "data")
    async with serve(settings_for(storage, api_keys=keys)) as client:
        alice = {"X-API-Key": "alice-key-0123456789"}
        bob = {"X-API-Key": "bob-key-0123456789ab"}
        assert_error(await create(client, 3), 401, "unauthorized")
        reader = await create(client, 3, headers={"X-API-Key": "reader-key-012345678"})
        assert_error(reader, 403, "forbidden")
        team = {"X-API-Key": "team-key-0123456789a"}
        assert_error(await create(client, 3, headers=team), 403, "forbidden")
        assert (await create(client, 3, headers=team, filename="a", folder="t")).status_code == 201
        url = path_of(await create(client, 3, headers=alice))
        assert (await client.head(url, headers={**TUS, **bob})).status_code == 403
        assert_error(await patch(client, url, 0, b"abc", **bob), 403, "forbidden")
        assert_error(await client.delete(url, headers={**TUS, **bob}), 403, "forbidden")
        done = await patch(client, url, 0, b"abc", **alice)
        assert done.status_code == 204
        assert "file-id" in done.headers


async def test_cors_exposes_the_tus_headers(tmp_path: Path) -> None:
    storage = Storage("local", "local", "files", root=tmp_path / "data")
    origin = "http://app.example"
    async with serve(settings_for(storage, cors_allow_origins=[origin])) as client:
        preflight = await client.options(
            "/files/tus/" + "0" * 32,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "tus-resumable,upload-offset,content-type",
            },
        )
        assert preflight.status_code == 200
        assert "PATCH" in preflight.headers["access-control-allow-methods"]
        created = await create(client, 3, headers={"Origin": origin})
        exposed = created.headers["access-control-expose-headers"].lower()
        for name in ("location", "upload-offset", "upload-expires", "file-id", "tus-resumable"):
            assert name in exposed
