"""Leaving FastDFS: moved files keep their ids, and ``filegate-client migrate`` moves many.

Everything runs as real processes: filegate in hybrid mode over SeaweedFS and the FastDFS
emulator, and the client as a command. Old ids are read back with FastDFS stopped, so a read that
still reached it would fail (docs/fastdfs.md, "Leaving FastDFS").
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import random
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import SIGNING_SECRET, created_bucket, s3_admin
from tests.fdfs_emulator import FastDFS
from tests.servers import SeaweedFS, Service
from tests.test_fastdfs import legacy_upload

MiB = 1024 * 1024


def hybrid_env(seaweed: SeaweedFS, bucket: str, fastdfs: FastDFS, **extra: str) -> dict[str, str]:
    return {
        **seaweed.service_env(bucket),
        "STORAGE_MODE": "hybrid",
        "FASTDFS_TRACKER_SERVERS": fastdfs.tracker_address,
        "FASTDFS_NETWORK_TIMEOUT": "3",
        "SIGNING_SECRET": SIGNING_SECRET,
        "BACKEND_TIMEOUT": "5",
        **extra,
    }


@pytest.fixture
def bucket(seaweed: SeaweedFS) -> str:
    return asyncio.run(created_bucket(seaweed.endpoint))


@pytest.fixture
def hybrid(seaweed: SeaweedFS, bucket: str, fastdfs: FastDFS, tmp_path: Path) -> Iterator[Service]:
    service = Service(hybrid_env(seaweed, bucket, fastdfs))
    service.start(tmp_path)
    yield service
    service.stop()


def legacy(fastdfs: FastDFS, data: bytes, name: str) -> str:
    return asyncio.run(legacy_upload(fastdfs, data, name))


def objects(seaweed: SeaweedFS, bucket: str, prefix: str) -> dict[str, int]:
    """Key → size of every object under ``prefix``, as S3 itself lists them."""

    async def listed() -> dict[str, int]:
        found: dict[str, int] = {}
        async with s3_admin(seaweed.endpoint) as s3:
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    found[item["Key"]] = item["Size"]
        return found

    return asyncio.run(listed())


def migrate(http: httpx.Client, old: str, **body: Any) -> httpx.Response:
    return http.post(f"/files/{quote(old)}/migrate", json=body)


def test_a_moved_file_keeps_its_id_on_every_endpoint_with_fastdfs_stopped(
    hybrid: Service, fastdfs: FastDFS, seaweed: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    data = {"Отчёт за год.pdf": os.urandom(3 * MiB + 17), "notes.txt": b"legacy notes"}
    old = {name: legacy(fastdfs, body, name) for name, body in data.items()}
    with httpx.Client(base_url=hybrid.url, timeout=30) as http:
        paths = http.get("/openapi.json").json()["paths"]  # hybrid mode's document only
        assert paths["/files/{file_id}/migrate"]["post"]["operationId"] == "migrate_file"
        moved = {}
        for name, old_id in old.items():
            answer = migrate(http, old_id, folder="legacy", delete_source=True)
            assert answer.status_code == 200, answer.text
            result = answer.json()
            assert result["moved_from"] == old_id and result["copied"] is True
            assert result["source_deleted"] is True
            assert result["file_size"] == len(data[name])
            assert result["file_id"].startswith(f"s3:{bucket}/legacy/")
            moved[name] = result["file_id"]
        remote = [old_id.split("/", 1)[1] for old_id in old.values()]
        assert not any(r in f for f in fastdfs.stored_files() for r in remote)  # gone from FastDFS

        fastdfs.run(fastdfs.stop())  # from here on, a read that reaches FastDFS fails
        for name, old_id in old.items():
            got = http.get(f"/files/{quote(old_id)}/download")
            assert got.status_code == 200 and got.content == data[name]
            assert "filename*=UTF-8''" + quote(name) in got.headers["content-disposition"]
            head = http.head(f"/files/{quote(old_id)}/download")
            assert head.status_code == 200 and head.headers["content-length"] == str(
                len(data[name])
            )
            ranged = http.get(f"/files/{quote(old_id)}/download", headers={"Range": "bytes=2-5"})
            assert ranged.status_code == 206 and ranged.content == data[name][2:6]
            info = http.get(f"/files/{quote(old_id)}/info").json()
            assert info["file_id"] == moved[name] and info["moved_from"] == old_id
            assert info["file_name"] == name and info["metadata"].get("owner") == "legacy"
        archive = http.post("/files/download-zip", json=[{"file_id": i} for i in old.values()])
        assert archive.status_code == 200, archive.text
        with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
            assert {n: z.read(n) for n in z.namelist()} == data
        link = http.post(f"/files/{quote(old['notes.txt'])}/link", json={"expires_in": 60}).json()
        assert httpx.get(link["url"]).content == b"legacy notes"
        copy = http.post(f"/files/{quote(old['notes.txt'])}/copy", json={"folder": "copies"})
        assert copy.status_code == 201, copy.text
        assert (
            http.get(f"/files/{quote(copy.json()['file_id'])}/download").content == b"legacy notes"
        )

        # Deleting through the old id deletes the file; the old id then stays a 404.
        gone = http.delete(f"/files/{quote(old['notes.txt'])}")
        assert gone.status_code == 200
        for file_id in (old["notes.txt"], moved["notes.txt"]):
            answer = http.get(f"/files/{quote(file_id)}/info")
            assert answer.status_code == 404, answer.text
        # Deleting through the new id: the old id is a 404 too, never FastDFS.
        assert http.delete(f"/files/{quote(moved['Отчёт за год.pdf'])}").status_code == 200
        answer = http.get(f"/files/{quote(old['Отчёт за год.pdf'])}/download")
        assert answer.status_code == 404 and answer.json()["code"] == "file_not_found"


def test_records_survive_a_restart_and_serve_on_every_replica_even_with_downloads_off(
    seaweed: SeaweedFS, bucket: str, fastdfs: FastDFS, tmp_path: Path
) -> None:
    moved_body, kept_body = os.urandom(200_000), b"never moved"
    moved_id = legacy(fastdfs, moved_body, "moved.bin")
    kept_id = legacy(fastdfs, kept_body, "kept.txt")
    first = Service(hybrid_env(seaweed, bucket, fastdfs))
    second = Service(hybrid_env(seaweed, bucket, fastdfs, FASTDFS_DOWNLOAD_ENABLED="false"))
    first.start(tmp_path)
    second.start(tmp_path)
    try:
        with httpx.Client(base_url=first.url, timeout=30) as http:
            # the second replica looked first: what it saw must not stick
            assert httpx.get(f"{second.url}/files/{quote(moved_id)}/info").status_code == 403
            answer = migrate(http, moved_id, delete_source=True)
            assert answer.status_code == 200, answer.text
        for service in (first, second):
            got = httpx.get(f"{service.url}/files/{quote(moved_id)}/download")
            assert got.status_code == 200 and got.content == moved_body
        refused = httpx.get(f"{second.url}/files/{quote(kept_id)}/download")
        assert refused.status_code == 403 and refused.json()["code"] == "route_not_supported"
        assert httpx.get(f"{first.url}/files/{quote(kept_id)}/download").content == kept_body
        second.stop()
        second.start(tmp_path)  # a new process: the record is in S3, not in memory
        got = httpx.get(f"{second.url}/files/{quote(moved_id)}/download")
        assert got.status_code == 200 and got.content == moved_body
    finally:
        first.stop()
        second.stop()


def test_migrating_again_copies_nothing_twice(
    hybrid: Service, fastdfs: FastDFS, seaweed: SeaweedFS, bucket: str
) -> None:
    body = os.urandom(9 * MiB)  # a multipart upload in S3
    old_id = legacy(fastdfs, body, "big.bin")
    with httpx.Client(base_url=hybrid.url, timeout=60) as http:
        first = migrate(http, old_id, folder="again").json()
        assert first["copied"] is True and first["source_deleted"] is False
        again = migrate(http, old_id, folder="again").json()
        assert again["copied"] is False and again["file_id"] == first["file_id"]
        last = migrate(http, old_id, folder="again", delete_source=True).json()
        assert last["copied"] is False and last["source_deleted"] is True
        assert http.get(f"/files/{quote(old_id)}/download").content == body
    assert list(objects(seaweed, bucket, "again/").values()) == [len(body)]


def test_a_source_that_does_not_match_its_crc_is_kept_and_reported(
    hybrid: Service, fastdfs: FastDFS, seaweed: SeaweedFS, bucket: str
) -> None:
    body = b"the original bytes " * 1000
    old_id = legacy(fastdfs, body, "corrupt.txt")
    stored = fastdfs.storage.path(old_id.split("/", 1)[1])
    assert stored is not None and stored.read_bytes() == body
    damaged = bytearray(body)
    damaged[100] ^= 0xFF  # one bit-flipped byte on the storage server's disk
    stored.write_bytes(bytes(damaged))
    with httpx.Client(base_url=hybrid.url, timeout=30) as http:
        answer = migrate(http, old_id, folder="corrupt", delete_source=True)
        assert answer.status_code == 422, answer.text
        assert answer.json()["code"] == "source_corrupt"
        assert answer.json()["file_id"] == old_id
        info = http.get(f"/files/{quote(old_id)}/info").json()
        assert info["backend"] == "fastdfs" and info.get("moved_from") is None
    assert stored.exists()  # the source stays
    assert objects(seaweed, bucket, "corrupt/") == {}
    assert objects(seaweed, bucket, ".filegate-moved/") == {}


def test_a_move_through_copy_keeps_the_id_too(hybrid: Service, fastdfs: FastDFS) -> None:
    old_id = legacy(fastdfs, b"moved by cp --move", "cp.txt")
    with httpx.Client(base_url=hybrid.url, timeout=30) as http:
        answer = http.post(f"/files/{quote(old_id)}/copy", json={"delete_source": True})
        assert answer.status_code == 201, answer.text
        new_id = answer.json()["file_id"]
        info = http.get(f"/files/{quote(old_id)}/info").json()
        assert info["file_id"] == new_id and info["moved_from"] == old_id
        assert http.get(f"/files/{quote(old_id)}/download").content == b"moved by cp --move"
        # moving it again moves the S3 file: the old id follows the file it names
        assert http.post(f"/files/{quote(old_id)}/migrate", json={}).json()["file_id"] == new_id


# --- filegate-client migrate -----------------------------------------------------------------


def client_command(*args: str) -> list[str]:
    command = Path(sys.executable).parent / "filegate-client"
    return [str(command), "migrate", *args]


async def _upload_many(fastdfs: FastDFS, bodies: list[bytes]) -> list[str]:
    from aiofdfs import Async_Fdfs_Client, FastDfsConf

    conf = FastDfsConf(tracker_servers=[fastdfs.tracker_address])
    ids = []
    async with Async_Fdfs_Client(conf) as client:
        for n, body in enumerate(bodies):
            answer = await client.upload_by_buffer(
                body, file_ext_name="bin", meta_dict={"OriginFileName": f"файл {n:04d}.bin"}
            )
            ids.append(answer["file_id"])
    return ids


def _journal(path: Path) -> dict[str, list[dict[str, Any]]]:
    records: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        records.setdefault(record["old_id"], []).append(record)
    return records


@pytest.mark.slow
def test_a_thousand_files_killed_midway_and_run_again_all_served_with_fastdfs_stopped(
    hybrid: Service, fastdfs: FastDFS, seaweed: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    rng = random.Random(1000)
    sizes = [
        rng.choice([1, 2, 4096]) if n % 97 == 0  # aiofdfs cannot store an empty file
        else rng.randint(MiB, 3 * MiB) if n % 40 == 0
        else rng.randint(1, 64 * 1024)
        for n in range(1000)
    ]  # fmt: skip
    bodies = [rng.randbytes(size) for size in sizes]
    ids = asyncio.run(_upload_many(fastdfs, bodies))
    id_list = tmp_path / "ids.txt"
    id_list.write_text("\n".join(ids) + "\n")
    env = {**os.environ, "FILEGATE_URL": hybrid.url}
    command = client_command("--ids", str(id_list), "--folder", "moved", "--concurrency", "8",
                             "--delete-source", "--json")  # fmt: skip

    first = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, cwd=tmp_path)
    assert first.stdout is not None
    seen = 0
    for _ in first.stdout:
        seen += 1
        if seen == 300:
            break
    first.kill()  # SIGKILL: no chance to tidy up
    first.wait()
    first.stdout.close()
    assert seen == 300
    journal = tmp_path / "ids.txt.journal"
    assert 300 <= len(journal.read_text().splitlines()) < 1000

    second = subprocess.run(command, capture_output=True, env=env, cwd=tmp_path, timeout=600)
    assert second.returncode == 0, second.stderr.decode()
    lines = second.stdout.decode().splitlines()
    summary = json.loads(lines[-1])
    assert summary["not_moved"] == 0 and summary["mapped"] == 1000
    assert 0 < len(lines) - 1 <= 700  # the ids done before the kill were skipped

    records = _journal(journal)
    assert set(records) == set(ids)
    for tries in records.values():
        assert tries[-1]["status"] == "moved", tries
        assert sum(bool(r.get("copied")) for r in tries) <= 1, tries  # never copied twice
    with (tmp_path / "ids.txt.csv").open(newline="") as out:
        mapping = {row["old_id"]: row for row in csv.DictReader(out)}
    assert set(mapping) == set(ids)
    stored = objects(seaweed, bucket, "moved/")
    assert len(stored) == 1000  # one object per file, whatever the kill interrupted
    assert sorted(stored.values()) == sorted(sizes)
    assert not [f for f in fastdfs.stored_files() if not f.endswith("-m")]  # sources deleted

    fastdfs.run(fastdfs.stop())
    with httpx.Client(base_url=hybrid.url, timeout=30) as http:
        for old_id, body in zip(ids, bodies, strict=True):
            got = http.get(f"/files/{quote(old_id)}/download")
            assert got.status_code == 200 and got.content == body, old_id
        for old_id, body in list(zip(ids, bodies, strict=True))[:50]:
            head = http.head(f"/files/{quote(old_id)}/download")
            assert int(head.headers["content-length"]) == len(body)
            info = http.get(f"/files/{quote(old_id)}/info").json()
            assert info["file_id"] == mapping[old_id]["new_id"] and info["moved_from"] == old_id
        archive = http.post("/files/download-zip", json=[{"file_id": i} for i in ids[:100]])
        with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
            assert sorted(len(z.read(n)) for n in z.namelist()) == sorted(sizes[:100])


def test_bad_lines_missing_and_corrupt_ids_are_reported_and_the_run_goes_on(
    hybrid: Service, fastdfs: FastDFS, tmp_path: Path
) -> None:
    good = [legacy(fastdfs, f"file {n}".encode() * 100, f"{n}.txt") for n in range(3)]
    corrupt = legacy(fastdfs, b"will be damaged" * 100, "bad.txt")
    stored = fastdfs.storage.path(corrupt.split("/", 1)[1])
    assert stored is not None
    stored.write_bytes(b"X" + stored.read_bytes()[1:])
    missing = good[0].rsplit("/", 1)[0] + "/wKgAAWsFKtSATKktAAAADgWKGpg335.txt"
    id_list = tmp_path / "ids.txt"
    id_list.write_text(
        f"# legacy ids\n{good[0]}\nnot an id\n{missing}\n\n{good[1]}\n{corrupt}\n{good[2]}\n"
    )
    env = {**os.environ, "FILEGATE_URL": hybrid.url}
    done = subprocess.run(client_command("--ids", str(id_list), "--delete-source"),
                          capture_output=True, env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    assert done.returncode == 1  # not everything moved
    report = done.stderr.decode()
    assert "line 3: not an id: invalid: not a FastDFS id" in report
    assert f"{missing}: missing:" in report
    assert f"{corrupt}: corrupt: The bytes read" in report
    with (tmp_path / "ids.txt.csv").open(newline="") as out:
        assert {row["old_id"] for row in csv.DictReader(out)} == set(good)
    assert stored.exists()  # the corrupt source is kept
    with httpx.Client(base_url=hybrid.url, timeout=30) as http:
        for n, old_id in enumerate(good):
            assert (
                http.get(f"/files/{quote(old_id)}/download").content == f"file {n}".encode() * 100
            )


def test_503_from_a_stopped_fastdfs_is_waited_out(
    hybrid: Service, fastdfs: FastDFS, tmp_path: Path
) -> None:
    ids = [legacy(fastdfs, os.urandom(5000), f"{n}.bin") for n in range(5)]
    id_list = tmp_path / "ids.txt"
    id_list.write_text("\n".join(ids))
    fastdfs.run(fastdfs.storage.stop())  # refused connections: filegate answers 503 Retry-After
    env = {**os.environ, "FILEGATE_URL": hybrid.url}
    run = subprocess.Popen(client_command("--ids", str(id_list), "--json"), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env, cwd=tmp_path)  # fmt: skip
    time.sleep(4)
    assert run.poll() is None  # still waiting, not failed
    fastdfs.run(fastdfs.storage.start())
    out, err = run.communicate(timeout=180)
    assert run.returncode == 0, err.decode()
    assert json.loads(out.decode().splitlines()[-1])["this_run"] == {"copied": 5}


def test_a_terminal_shows_progress_and_ctrl_c_then_the_same_command_finishes(
    hybrid: Service, fastdfs: FastDFS, tmp_path: Path
) -> None:
    from tests.test_client_terminal import Terminal, ended

    ids = asyncio.run(_upload_many(fastdfs, [os.urandom(200_000) for _ in range(150)]))
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    env = {
        "FILEGATE_URL": hybrid.url,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "TERM": "xterm-256color",
        "COLUMNS": "120",
    }
    shell = Terminal(tmp_path / "tmux.sock", env)
    try:
        shell.type(f"cd {tmp_path}")
        shell.type(
            "filegate-client migrate --ids ids.txt --concurrency 1 --delete-source; echo A=$?"
        )
        # files done/total, bytes moved, the rate, elapsed and time left
        bar = re.compile(
            r"migrate .*━.* (\d+)/150 files +[\d.]+ [KM]iB +[\d.]+ MiB/s +\d:\d\d:\d\d"
        )
        screen = shell.wait_for(lambda s: (m := bar.search(s)) is not None and int(m[1]) >= 5)
        shell.ctrl_c()
        screen = shell.wait_for(ended("A"))
        assert "A=130" in screen and "interrupted: run the same command again" in screen
        shell.type("clear; filegate-client migrate --ids ids.txt --delete-source; echo B=$?")
        screen = shell.wait_for(ended("B"))
        assert "B=0" in screen
        assert re.search(r"\d+ ids done by an earlier run \(journal\): skipped", screen), screen
        assert "150 mapped in ids.txt.csv" in screen
    finally:
        shell.close()
    with httpx.Client(base_url=hybrid.url, timeout=30) as http:
        assert all(http.head(f"/files/{quote(i)}/download").status_code == 200 for i in ids)


def test_legacy_downloads_in_a_row_leave_no_memory_behind(
    hybrid: Service, fastdfs: FastDFS
) -> None:
    """Each FastDFS download's 1 MiB read buffer goes when its connection does. The reply and
    its transport refer to each other, and filegate makes the cyclic collector rare
    (docs/performance.md); in hybrid mode (a record lookup before every legacy read) the
    buffers of 200 downloads stayed, 200 MiB more, until a collection."""
    old_id = legacy(fastdfs, os.urandom(MiB), "one.bin")
    with httpx.Client(base_url=hybrid.url, timeout=30) as http:
        for _ in range(5):  # the heap's working size
            http.get(f"/files/{quote(old_id)}/download")
        before = hybrid.rss_kib() / 1024
        for _ in range(200):
            answer = http.get(f"/files/{quote(old_id)}/download")
            assert answer.status_code == 200 and len(answer.content) == MiB
    grown = hybrid.rss_kib() / 1024 - before
    assert grown < 48, f"RSS grew {grown:.0f} MiB over 200 downloads of 1 MiB"


def test_with_s3_down_legacy_files_are_still_served_and_moved_ones_are_503_not_404(
    private_seaweed: SeaweedFS, fastdfs: FastDFS, tmp_path: Path
) -> None:
    """S3 holds the records: while it is down, a FastDFS id is read on FastDFS as before. One
    that FastDFS no longer has may have moved, so it is a 503 with Retry-After, never a 404; a
    delete through an old id is refused the same way (it might delete nothing while the S3 copy
    stays)."""
    bucket = asyncio.run(created_bucket(private_seaweed.endpoint))
    service = Service(hybrid_env(private_seaweed, bucket, fastdfs))
    service.start(tmp_path)
    try:
        moved = legacy(fastdfs, b"moved away", "moved.txt")
        kept = legacy(fastdfs, b"still on fastdfs", "kept.txt")
        with httpx.Client(base_url=service.url, timeout=30) as http:
            assert migrate(http, moved, delete_source=True).status_code == 200
            private_seaweed.stop()
            got = http.get(f"/files/{quote(kept)}/download")
            assert got.status_code == 200 and got.content == b"still on fastdfs"
            assert http.get(f"/files/{quote(kept)}/info").status_code == 200
            for answer in (
                http.get(f"/files/{quote(moved)}/download"),
                http.get(f"/files/{quote(moved)}/info"),
                http.delete(f"/files/{quote(moved)}"),
            ):
                assert answer.status_code == 503, answer.text
                assert "retry-after" in answer.headers
            private_seaweed.start()
            deadline = time.monotonic() + 30
            while (got := http.get(f"/files/{quote(moved)}/download")).status_code != 200:
                assert time.monotonic() < deadline, got.text
                time.sleep(0.5)
            assert got.content == b"moved away"
    finally:
        service.stop()
