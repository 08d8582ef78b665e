"""``filegate-client`` end to end: the installed console script as a subprocess against filegate
as a process (local disk, SeaweedFS, and the FastDFS emulator for tus), bytes compared on both
sides (docs/client.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from filegate_client.crc import crc32_combine
from tests.conftest import unique_bucket
from tests.servers import SeaweedFS, Service

MiB = 1024 * 1024


def client_command() -> str:
    return shutil.which("filegate-client") or str(Path(sys.executable).parent / "filegate-client")


def client_env(service: Service, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILEGATE_")}
    env.update(FILEGATE_URL=service.url, XDG_CACHE_HOME=str(cache))
    return env


def run(service: Service, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [client_command(), *args],
        env=client_env(service, cache),
        capture_output=True,
        text=True,
        timeout=300,
    )


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(params=["local", "s3"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    if request.param == "local":
        service = Service({"LOCAL_ROOT": str(tmp_path / "data")})
    else:
        seaweed: SeaweedFS = request.getfixturevalue("seaweed")
        service = Service(seaweed.service_env(seaweed.create_bucket(unique_bucket())))
    service.start(tmp_path)
    yield service
    service.stop()


def bucket_of(service: Service) -> str:
    """The default bucket in file-id form: ``local:files/`` or ``s3:<bucket>/``."""
    if service.env.get("STORAGE_MODE") == "s3":
        return f"s3:{service.env['S3_DEFAULT_BUCKET']}/"
    return "local:files/"


def test_folder_up_and_down_byte_identical(service: Service, tmp_path: Path) -> None:
    """A directory with nested folders (one file large enough for tus) goes up with ``--json``
    and comes back down with ``download --prefix``, byte for byte."""
    source = tmp_path / "album"
    (source / "2024" / "summer").mkdir(parents=True)
    (source / "one.bin").write_bytes(os.urandom(3000))
    (source / "2024" / "big.bin").write_bytes(os.urandom(20 * MiB + 17))  # above TUS_THRESHOLD
    (source / "2024" / "summer" / "ünï köde.txt").write_bytes(b"hello\n" * 100)
    cache = tmp_path / "cache"
    up = run(service, cache, "upload", str(source), "--folder", "trips", "--json")
    assert up.returncode == 0, up.stderr
    uploaded = json.loads(up.stdout)
    assert sorted(item["file_name"] for item in uploaded) == ["big.bin", "one.bin", "ünï köde.txt"]
    bucket_prefix = uploaded[0]["file_id"].split("/", 1)[0] + "/trips/"
    assert all(item["file_id"].startswith(bucket_prefix) for item in uploaded)

    listed = run(service, cache, "ls", bucket_prefix, "-r", "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(f["file_id"] for f in json.loads(listed.stdout)) == sorted(
        item["file_id"] for item in uploaded
    )

    out = tmp_path / "out"
    down = run(service, cache, "download", "--prefix", bucket_prefix, "-o", str(out), "--quiet")
    assert down.returncode == 0, down.stderr
    assert tree(out / "album") == tree(source)
    assert not list(out.rglob("*.part*"))


def test_errors_are_one_line_with_the_code(service: Service, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    missing = run(service, cache, "info", f"{bucket_of(service)}nothing_here.bin")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
    assert missing.stderr.startswith("error: file_not_found: ")
    bad_id = run(service, cache, "info", "no-bucket")
    assert (bad_id.returncode, bad_id.stderr.split(":")[:2]) == (1, ["error", " invalid_argument"])
    usage = run(service, cache, "frobnicate")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
    # flags before the command name count (a sub-command must not reset them)
    unreachable = run(service, cache, "--url", "http://127.0.0.1:1", "ls")
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("error: unreachable: ")
    assert run(service, cache, "ls", "--url", "http://127.0.0.1:1").returncode == 1
    for command in ("upload", "download", "ls", "info", "rm", "link", "zip", "cp"):
        helped = run(service, cache, command, "--help")
        assert helped.returncode == 0 and "example" in helped.stdout, command


def wait_for(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def kill_a_download(service: Service, cache: Path, file_id: str, target: Path) -> list[str]:
    """Start a one-connection download of ``file_id`` to ``target`` and SIGKILL it once its
    checkpoint records two blocks; the command's arguments, to run it again."""
    checkpoint = target.with_name(target.name + ".part.json")
    args = ["download", file_id, "-o", str(target), "--connections", "1", "--quiet"]
    process = subprocess.Popen([client_command(), *args], env=client_env(service, cache))

    def some_blocks() -> bool:
        try:
            return len(json.loads(checkpoint.read_text())["done"]) >= 2
        except (OSError, ValueError):
            return False

    wait_for(some_blocks)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return args


def test_a_download_killed_midway_resumes(service: Service, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(160 * MiB))
    file_id = service.upload(source, "big.bin")
    target = tmp_path / "got.bin"
    checkpoint = tmp_path / "got.bin.part.json"
    args = kill_a_download(service, tmp_path / "c", file_id, target)
    done_before = json.loads(checkpoint.read_text())["done"]
    assert 2 <= len(done_before) < 20 and not target.exists()
    again = run(service, tmp_path / "c", *args)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr
    assert target.read_bytes() == source.read_bytes()
    assert not checkpoint.exists() and not (tmp_path / "got.bin.part").exists()


def test_a_download_of_a_file_changed_since_starts_again(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    """The object is replaced behind the service between two runs: its ETag no longer matches
    the checkpoint's, so the client starts again cleanly with the new version (never a mix of
    the two). Within a run, ``If-Range`` guards the same way."""
    bucket = seaweed.create_bucket(unique_bucket())
    service = Service(seaweed.service_env(bucket))
    service.start(tmp_path)
    try:
        old, new = os.urandom(96 * MiB), os.urandom(80 * MiB)
        (tmp_path / "v1.bin").write_bytes(old)
        file_id = service.upload(tmp_path / "v1.bin", "doc.bin")
        target, checkpoint = tmp_path / "doc.bin", tmp_path / "doc.bin.part.json"
        args = kill_a_download(service, tmp_path, file_id, target)
        assert not target.exists()
        seaweed.admin().put_object(Bucket=bucket, Key=file_id.split("/", 1)[1], Body=new)
        again = run(service, tmp_path, *args)
        assert again.returncode == 0, again.stderr
        assert "resuming" not in again.stderr
        assert target.read_bytes() == new
        assert not checkpoint.exists()
    finally:
        service.stop()


def test_a_corrupted_part_is_caught_and_the_old_file_kept(service: Service, tmp_path: Path) -> None:
    """A ``.part`` whose checkpoint says every block is written, but one byte of it is wrong:
    verification refuses it, removes it and leaves the file already at the target untouched."""
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(12 * MiB))
    file_id = service.upload(source, "data.bin")
    info = httpx.get(f"{service.url}/files/{file_id}/info").json()
    target = tmp_path / "data.out"
    target.write_bytes(b"the old version")
    corrupt = bytearray(source.read_bytes())
    corrupt[5 * MiB] ^= 0xFF
    (tmp_path / "data.out.part").write_bytes(corrupt)
    (tmp_path / "data.out.part.json").write_text(
        json.dumps({"etag": info["etag"], "size": info["file_size"], "done": [0, 1]})
    )
    answer = run(service, tmp_path / "c", "download", file_id, "-o", str(target), "--quiet")
    assert answer.returncode == 1
    assert "error: corrupt: verification failed for data.out" in answer.stderr
    assert "the existing file is untouched" in answer.stderr
    assert target.read_bytes() == b"the old version"
    assert not (tmp_path / "data.out.part").exists()
    fresh = run(service, tmp_path / "c", "download", file_id, "-o", str(target), "--quiet")
    assert fresh.returncode == 0, fresh.stderr
    assert target.read_bytes() == source.read_bytes()


def test_a_file_whose_etag_cannot_be_recomputed_is_verified_by_its_crc32(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    """An S3 copy made in 5 MiB parts (``S3_COPY_MAX_SIZE`` at its floor) has an ETag of 5 MiB
    parts' MD5s, which the client's 8 MiB blocks cannot recompute; the CRC-32 that ``info``
    reports still catches a damaged ``.part``, and a clean download passes."""
    from tests.servers import ADMIN

    bucket = seaweed.create_bucket(unique_bucket())
    env = seaweed.service_env(bucket)
    env.update(S3_ACCESS_KEY_ID=ADMIN[0], S3_SECRET_ACCESS_KEY=ADMIN[1], S3_COPY_MAX_SIZE="5MiB")
    service = Service(env)
    service.start(tmp_path)
    try:
        data = os.urandom(12 * MiB)
        (tmp_path / "data.bin").write_bytes(data)
        source_id = service.upload(tmp_path / "data.bin", "data.bin")
        copied = run(service, tmp_path / "c", "cp", source_id, "--folder", "copies", "--json")
        assert copied.returncode == 0, copied.stderr
        file_id = json.loads(copied.stdout)["file_id"]
        info = httpx.get(f"{service.url}/files/{file_id}/info").json()
        assert info["etag"].endswith('-3"') and info["crc32"] == f"{zlib.crc32(data):08x}"
        target = tmp_path / "data.out"
        corrupt = bytearray(data)
        corrupt[9 * MiB] ^= 0xFF
        (tmp_path / "data.out.part").write_bytes(corrupt)
        (tmp_path / "data.out.part.json").write_text(
            json.dumps({"etag": info["etag"], "size": info["file_size"], "done": [0, 1]})
        )
        args = ["download", file_id, "-o", str(target), "--quiet"]
        refused = run(service, tmp_path / "c", *args)
        assert refused.returncode == 1
        assert "error: corrupt: verification failed for data.out" in refused.stderr
        assert not target.exists()
        fresh = run(service, tmp_path / "c", *args)
        assert fresh.returncode == 0, fresh.stderr
        assert target.read_bytes() == data
    finally:
        service.stop()


def _upload_killed_and_resumed(service: Service, tmp_path: Path) -> dict[str, Any]:
    """Kill the client between tus PATCHes, run the same command again: it continues from the
    service's offset, and the stored file is byte-identical."""
    source = tmp_path / "large.bin"
    source.write_bytes(os.urandom(96 * MiB))
    cache = tmp_path / "cache"
    state = cache / "filegate-client" / "uploads.json"
    args = ["upload", str(source), "--chunk-size", "1MiB", "--json", "--quiet"]
    process = subprocess.Popen([client_command(), *args], env=client_env(service, cache))

    def some_offset() -> bool:
        try:
            url = next(iter(json.loads(state.read_text()).values()))
        except (OSError, ValueError, StopIteration):
            return False
        head = httpx.head(url, headers={"Tus-Resumable": "1.0.0"})
        return int(head.headers.get("upload-offset", 0)) >= 4 * MiB

    wait_for(some_offset)
    process.send_signal(signal.SIGKILL)
    process.wait()
    url = next(iter(json.loads(state.read_text()).values()))
    offset = int(httpx.head(url, headers={"Tus-Resumable": "1.0.0"}).headers["upload-offset"])
    assert 0 < offset < source.stat().st_size
    again = run(service, cache, *args)
    assert again.returncode == 0, again.stderr
    assert "resuming at" in again.stderr
    [stored] = json.loads(again.stdout)
    assert stored["file_size"] == source.stat().st_size
    body = httpx.get(f"{service.url}/files/{stored['file_id']}/download").content
    assert body == source.read_bytes()
    assert json.loads(state.read_text()) == {}
    back = tmp_path / "back"
    fetched = run(service, cache, "download", stored["file_id"], "-o", str(back), "--quiet")
    assert fetched.returncode == 0, fetched.stderr  # verified by the CRC-32 info reports
    assert back.read_bytes() == source.read_bytes()
    return dict(stored)


def test_an_upload_killed_midway_resumes(service: Service, tmp_path: Path) -> None:
    """The result is one file: the listing of its folder holds it alone."""
    stored = _upload_killed_and_resumed(service, tmp_path)
    folder = stored["file_id"].rsplit("/", 1)[0] + "/"
    listing = httpx.get(f"{service.url}/files", params={"prefix": folder}).json()
    assert [f["file_id"] for f in listing["files"]] == [stored["file_id"]]


def test_an_upload_to_fastdfs_killed_midway_resumes(
    fastdfs_service: Service, tmp_path: Path
) -> None:
    """fastdfs mode: the tus upload is an appender file (docs/tus.md, "FastDFS")."""
    stored = _upload_killed_and_resumed(fastdfs_service, tmp_path)
    assert stored["file_id"].startswith("group1/M00/")


@given(st.binary(max_size=3000), st.binary(max_size=3000), st.binary(max_size=3000))
def test_crc32_combine_is_zlibs(a: bytes, b: bytes, c: bytes) -> None:
    """The client verifies blocks fetched out of order: their CRC-32s combine to the file's."""
    combined = crc32_combine(
        crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)), zlib.crc32(c), len(c)
    )
    assert combined == zlib.crc32(a + b + c)
