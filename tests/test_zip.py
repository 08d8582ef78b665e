"""POST /files/download-zip: archives checked by Info-ZIP's ``unzip -t`` and Python's zipfile."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import time
import zipfile
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.storage.base import Loaded, ObjectInfo, ObjectRef, ObjectStream
from app.storage.ids import FileId
from app.storage.stored import StoredFile
from app.storage.zip import ZipEntry, ZipStream
from tests.conftest import Storage, serve, settings_for
from tests.fdfs_emulator import FastDFS
from tests.servers import Service
from tests.test_files import assert_error, uploaded

MiB = 1024 * 1024


def check_archive(data: bytes, tmp_path: Path) -> zipfile.ZipFile:
    """Both Info-ZIP and Python must accept the archive; returns it opened."""
    path = tmp_path / f"check-{time.monotonic_ns()}.zip"
    path.write_bytes(data)
    tested = subprocess.run(["unzip", "-t", str(path)], capture_output=True, timeout=600)
    assert tested.returncode == 0, tested.stdout.decode(errors="replace")
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    return archive


async def zip_of(
    client: httpx.AsyncClient, items: list[dict[str, str]], **params: str
) -> httpx.Response:
    return await client.post("/files/download-zip", json=items, params=params)


@pytest.mark.parametrize("compression", ["stored", "deflate"])
async def test_zip_contents_are_byte_equal(
    client: httpx.AsyncClient, storage: Storage, tmp_path: Path, compression: str
) -> None:
    blobs = {
        "empty.txt": b"",
        "one.bin": os.urandom(1),
        "text.txt": b"hello zip\n" * 1000,
        "big.bin": os.urandom(9 * MiB),  # a multipart upload on S3: CRC unknown up front
        "ünïcödé name.pdf": os.urandom(5000),
    }
    ids = {name: await uploaded(client, name, data) for name, data in blobs.items()}
    response = await zip_of(client, [{"file_id": i} for i in ids.values()], compression=compression)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"] == 'attachment; filename="files.zip"'
    assert response.headers["x-content-type-options"] == "nosniff"
    if compression == "stored":  # sizes known up front: a plain download, not chunked
        assert int(response.headers["content-length"]) == len(response.content)
    else:
        assert "content-length" not in response.headers
    archive = check_archive(response.content, tmp_path)
    assert archive.namelist() == list(blobs)
    for name, data in blobs.items():
        assert archive.read(name) == data
        info = archive.getinfo(name)
        assert info.flag_bits & 0x800  # UTF-8 names flagged
        if compression == "deflate":
            assert info.compress_type == zipfile.ZIP_DEFLATED
        else:  # every CRC-32 is known up front, S3 multipart uploads included: STORE
            assert info.compress_type == zipfile.ZIP_STORED, name
            assert info.compress_size == len(data)


async def test_entry_names_are_safe_and_unique(client: httpx.AsyncClient, tmp_path: Path) -> None:
    file_id = await uploaded(client, "report.pdf", b"%PDF-1.4")
    other = await uploaded(client, "Report.PDF", b"other")
    requested = [
        {"file_id": file_id},
        {"file_id": other},
        {"file_id": file_id, "file_name": "report (1).pdf"},
        {"file_id": file_id, "file_name": "../../etc/passwd"},
        {"file_id": file_id, "file_name": "/abs/path.txt"},
        {"file_id": file_id, "file_name": "C:\\Windows\\evil.exe"},
        {"file_id": file_id, "file_name": "dir\\sub\\x.txt"},
        {"file_id": file_id, "file_name": ".."},
        {"file_id": file_id, "file_name": "Отчёт 😀.pdf"},
        {"file_id": file_id, "file_name": "folder/a.txt"},
        {"file_id": file_id, "file_name": "FOLDER/A.TXT"},
    ]
    response = await zip_of(client, requested)
    assert response.status_code == 200, response.text
    names = check_archive(response.content, tmp_path).namelist()
    leaf = file_id.rsplit("/", 1)[-1]
    assert names == [
        "report.pdf",
        "Report (1).PDF",
        "report (1) (1).pdf",
        "etc/passwd",
        "abs/path.txt",
        "Windows/evil.exe",
        "dir/sub/x.txt",
        leaf,
        "Отчёт 😀.pdf",
        "folder/a.txt",
        "FOLDER/A (1).TXT",
    ]
    # a control character is refused by the text rules, not stripped (docs/api.md)
    refused = await zip_of(client, [{"file_id": file_id, "file_name": "bad\x01name\x7f.txt"}])
    assert refused.status_code == 400
    assert refused.json()["field"] == "zip_entry_name"


async def test_a_thousand_small_entries(tmp_path: Path) -> None:
    from app.settings import Settings

    async with serve(Settings(_env_file=None, local_root=tmp_path / "data")) as client:
        ids = [await uploaded(client, f"f{i}.txt", f"file {i}".encode()) for i in range(1000)]
        response = await zip_of(client, [{"file_id": i} for i in ids])
        assert response.status_code == 200
        archive = check_archive(response.content, tmp_path)
        assert len(archive.namelist()) == 1000
        assert archive.read("f999.txt") == b"file 999"
        too_many = await zip_of(client, [{"file_id": i} for i in [*ids, ids[0]]])
        assert_error(too_many, 413, "file_too_large")


async def test_everything_is_decided_before_the_first_byte(
    client: httpx.AsyncClient, storage: Storage
) -> None:
    present = await uploaded(client, "a.txt", b"a")
    missing = [
        storage.missing_id(),
        storage.missing_id().replace("335", "336").replace("_missing", "_gone"),
    ]
    response = await zip_of(client, [{"file_id": present}] + [{"file_id": m} for m in missing])
    body = assert_error(response, 404, "file_not_found")
    assert body["file_ids"] == missing
    assert_error(await zip_of(client, []), 400, "invalid_argument")
    assert_error(await zip_of(client, [{"file_id": "nonsense"}]), 400, "invalid_argument")
    assert_error(
        await client.post("/files/download-zip", json={"file_id": present}), 400, "invalid_argument"
    )
    assert_error(
        await zip_of(client, [{"file_id": present}], compression="zstd"), 400, "invalid_argument"
    )
    # an id of a backend this mode does not enable (every mode leaves one out)
    foreign = "s3:files/0123456789abcdef_x" if storage.mode == "local" else "local:files/k_x"
    assert_error(await zip_of(client, [{"file_id": foreign}]), 403, "route_not_supported")


async def test_total_size_limit(storage: Storage) -> None:
    async with serve(settings_for(storage, zip_max_total_size="1KiB", zip_max_entries=3)) as client:
        small = await uploaded(client, "a.txt", b"a" * 600)
        assert (await zip_of(client, [{"file_id": small}])).status_code == 200
        assert_error(await zip_of(client, [{"file_id": small}] * 2), 413, "file_too_large")
        assert_error(await zip_of(client, [{"file_id": small}] * 4), 413, "file_too_large")


async def test_mixed_backends_in_hybrid_mode(
    fastdfs: FastDFS, seaweed: Any, tmp_path: Path
) -> None:
    from tests.conftest import created_bucket
    from tests.test_fastdfs import hybrid, legacy_upload

    bucket = await created_bucket(seaweed.endpoint)
    legacy_data = os.urandom(100_000)
    legacy_id = await legacy_upload(fastdfs, legacy_data, "old contract.pdf")
    async with serve(hybrid(seaweed, bucket, fastdfs)) as client:
        new_id = await uploaded(client, "new.txt", b"new file")
        response = await zip_of(client, [{"file_id": legacy_id}, {"file_id": new_id}])
        assert response.status_code == 200
        archive = check_archive(response.content, tmp_path)
        assert archive.read("old contract.pdf") == legacy_data
        assert archive.read("new.txt") == b"new file"
    closed = hybrid(seaweed, bucket, fastdfs, fastdfs_download_enabled=False)
    async with serve(closed) as client:
        refused = await zip_of(client, [{"file_id": new_id}, {"file_id": legacy_id}])
        assert_error(refused, 403, "route_not_supported")


def _zip_request(url: str, items: list[dict[str, str]]) -> list[str]:
    return [
        "curl", "-sS", "-H", "Content-Type: application/json",
        "--data-binary", json.dumps(items), f"{url}/files/download-zip",
    ]  # fmt: skip


def test_backend_failure_mid_zip_fails_the_transfer(local_service: Service, tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(40 * MiB))
    ids = [local_service.upload(source, f"f{i}.bin") for i in range(2)]
    out = tmp_path / "out.zip"
    curl = subprocess.Popen(
        [*_zip_request(local_service.url, [{"file_id": i} for i in ids]),
         "--limit-rate", "8M", "-o", str(out)],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.5)
    os.truncate(tmp_path / "data" / ids[1].removeprefix("local:"), MiB)  # fails mid-archive
    assert curl.wait(timeout=120) != 0  # a failed transfer ...
    broken = subprocess.run(["unzip", "-t", str(out)], capture_output=True)
    assert broken.returncode != 0  # ... never a short archive that tests as complete
    subprocess.run(["curl", "-sS", "-f", f"{local_service.url}/healthz"], check=True)


def test_bytes_that_differ_from_their_crc_fail_the_archive(
    local_service: Service, tmp_path: Path
) -> None:
    """Stored entries are written on the event loop (app/storage/zip.py, ``_inline``); stream-zip
    still checks each one's bytes against the CRC-32 in its header."""
    source = tmp_path / "src.bin"
    data = os.urandom(3 * MiB)
    source.write_bytes(data)
    ids = [local_service.upload(source, f"f{i}.bin") for i in range(3)]
    stored = tmp_path / "data" / ids[1].removeprefix("local:")
    with stored.open("r+b") as file:  # same size, one byte changed: only the CRC can tell
        file.seek(2 * MiB)
        file.write(bytes([data[2 * MiB] ^ 0xFF]))
    out = tmp_path / "out.zip"
    curl = subprocess.run(
        [*_zip_request(local_service.url, [{"file_id": i} for i in ids]), "-o", str(out)],
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    assert curl.returncode != 0  # a cut transfer: fewer bytes than the announced length
    assert out.stat().st_size < 3 * len(data)
    broken = subprocess.run(["unzip", "-t", str(out)], capture_output=True)
    assert broken.returncode != 0


def _open_data_files(service: Service, root: Path) -> list[str]:
    assert service.process is not None
    fd_dir = Path(f"/proc/{service.process.pid}/fd")
    found = []
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(root)):
            found.append(target)
    return found


@pytest.mark.parametrize("mode", ["local", "fastdfs"])
def test_client_disconnect_mid_zip_closes_backend_streams(
    request: pytest.FixtureRequest, tmp_path: Path, mode: str
) -> None:
    """Open file handles (local) and storage connections (FastDFS) go when the client does."""
    service: Service = request.getfixturevalue(f"{mode}_service")
    if mode == "local":

        def still_open() -> bool:
            return bool(_open_data_files(service, tmp_path / "data"))
    else:
        emulator: FastDFS = request.getfixturevalue("fastdfs")

        def still_open() -> bool:
            return bool(emulator.storage._clients)

    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(20 * MiB))
    ids = [service.upload(source, f"f{i}.bin") for i in range(6)]
    body = json.dumps([{"file_id": i} for i in ids]).encode()
    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"POST /files/download-zip HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = 0
        while received < 5 * MiB:
            received += len(sock.recv(65536))
        assert still_open()  # entries are being read now
    deadline = time.monotonic() + 10
    while still_open() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not still_open()


@pytest.mark.slow
def test_zip64_archive_over_4_gib(local_service: Service, tmp_path: Path) -> None:
    """A 4.2 GiB sparse file (zip64 entry) followed by a small one (zip64 offset)."""
    size = 4 * 1024 * MiB + 200 * MiB
    small = tmp_path / "small.txt"
    small.write_bytes(b"after the big one")
    big_id = local_service.upload(small, "big.bin")  # then made big and sparse on disk
    small_id = local_service.upload(small, "small.txt")
    big_path = tmp_path / "data" / big_id.removeprefix("local:")
    with big_path.open("r+b") as file:
        file.truncate(0)
        file.truncate(size)  # all zeros, and sparse
    crc, left = 0, size
    zeros = bytes(64 * MiB)
    while left:
        crc = zlib.crc32(zeros[: min(left, len(zeros))], crc)
        left -= min(left, len(zeros))
    record = json.loads(os.getxattr(big_path, "user.filegate"))
    record.update(crc32=crc, etag='"sparse"')
    os.setxattr(big_path, "user.filegate", json.dumps(record).encode())

    out = tmp_path / "big.zip"
    done = subprocess.run(
        [*_zip_request(local_service.url, [{"file_id": big_id}, {"file_id": small_id}]),
         "-f", "-o", str(out)],
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0
    assert out.stat().st_size > size
    tested = subprocess.run(["unzip", "-t", str(out)], capture_output=True, timeout=600)
    assert tested.returncode == 0, tested.stdout
    with zipfile.ZipFile(out) as archive:
        assert [i.file_size for i in archive.infolist()] == [size, len(b"after the big one")]
        assert archive.read("small.txt") == b"after the big one"
        assert archive.infolist()[1].header_offset > 0xFFFFFFFF
    out.unlink()


@pytest.mark.parametrize("zip64", [False, True])
@pytest.mark.parametrize(
    "sizes", [[0], [1, 0, 1000], [70_000, 3, 5000, 0, 12345]], ids=["empty", "small", "mixed"]
)
async def test_the_announced_length_is_what_stream_zip_writes(
    tmp_path: Path, zip64: bool, sizes: list[int]
) -> None:
    """The Content-Length of a stored zip is computed before the first byte; stream-zip must write
    exactly that many bytes, in the zip32 and the zip64 layout (or uvicorn would abort)."""
    contents = [os.urandom(size) for size in sizes]
    names = ["a.txt", "Отчёт 😀.pdf", "dir/sub/b.bin", "c", "d" * 200]
    entries = []
    for index, data in enumerate(contents):
        ref = ObjectRef("files", f"k{index}")
        info = ObjectInfo(
            ref, len(data), '"e"', datetime(2026, 11, 24, tzinfo=UTC), crc32=zlib.crc32(data)
        )
        entries.append(ZipEntry(names[index], StoredFile(FileId("local", ref), info)))

    async def opener(stored: StoredFile) -> ObjectStream:
        return Loaded(contents[int(stored.file_id.ref.key[1:])])

    stream = ZipStream(opener, entries, "stored", zip64=zip64)
    written = b"".join([chunk async for chunk in stream])
    assert stream.length == len(written)
    archive = check_archive(written, tmp_path)
    assert [archive.read(info) for info in archive.infolist()] == contents
    assert ZipStream(opener, entries, "deflate").length is None
