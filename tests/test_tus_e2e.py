"""Resumable uploads end to end: filegate as real processes, tuspy as an independent client,
SeaweedFS, the FastDFS emulator and the local disk underneath.

- an upload started on one replica, continued on another and finished on the first;
- two PATCHes racing at the same offset on two replicas;
- a PATCH cut off midway (the client vanishes), and a replica killed midway;
- every mode: local, s3, fastdfs (appender files, the FastDFS emulator) and hybrid.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from tusclient import client as tus_client

from tests.conftest import created_bucket
from tests.fdfs_emulator import FastDFS
from tests.servers import SeaweedFS, Service

MiB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}


@dataclass
class Replicas:
    """Two filegate processes on the same storage."""

    first: Service
    second: Service
    bucket: str
    prefix: str


def _env(mode: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[dict[str, str], str]:
    if mode == "local":
        return {"LOCAL_ROOT": str(tmp_path / "data")}, "local:files/"
    if mode == "fastdfs":
        emulator: FastDFS = request.getfixturevalue("fastdfs")
        env = {"STORAGE_MODE": "fastdfs", "FASTDFS_TRACKER_SERVERS": emulator.tracker_address}
        return env | {"LOCAL_ROOT": str(tmp_path / "data")}, "group1/"
    seaweed: SeaweedFS = request.getfixturevalue("seaweed")
    bucket = _run(created_bucket(seaweed.endpoint))
    env = seaweed.service_env(bucket)
    if mode == "hybrid":
        fastdfs: FastDFS = request.getfixturevalue("fastdfs")
        env |= {"STORAGE_MODE": "hybrid", "FASTDFS_TRACKER_SERVERS": fastdfs.tracker_address}
    return env, f"s3:{bucket}/"


def _run(coroutine: Any) -> Any:
    import asyncio

    return asyncio.run(coroutine)


@pytest.fixture(params=["local", "s3", "fastdfs", "hybrid"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Replicas]:
    env, prefix = _env(request.param, request, tmp_path)
    first, second = Service(dict(env)), Service(dict(env))
    first.start(tmp_path)
    second.start(tmp_path)
    try:
        yield Replicas(first, second, prefix.split(":")[-1].rstrip("/"), prefix)
    finally:
        first.stop()
        second.stop()


def _on(service: Service, url: str) -> str:
    """The same upload URL, on another replica."""
    return service.url + urlsplit(url).path


def _download(service: Service, file_id: str) -> bytes:
    answer = httpx.get(f"{service.url}/files/{file_id}/download", timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.content


def _head(url: str) -> httpx.Response:
    return httpx.head(url, headers=TUS, timeout=30)


def test_tuspy_continues_on_any_replica(replicas: Replicas, tmp_path: Path) -> None:
    """tuspy starts on the first replica, resumes on the second (a new client that knows only
    the URL), and finishes on the first; every replica then serves the file."""
    source = tmp_path / "large video.mp4"
    data = os.urandom(21 * MiB + 5)
    source.write_bytes(data)
    stream = source.open("rb")
    request_cleanup = stream.close
    first = tus_client.TusClient(f"{replicas.first.url}/files/tus")
    uploader = first.uploader(
        file_stream=stream,
        chunk_size=3 * MiB,
        metadata={"filename": source.name, "folder": "clips"},
    )
    uploader.upload(stop_at=7 * MiB)
    url = uploader.url
    assert url is not None
    assert int(_head(url).headers["upload-offset"]) == uploader.offset >= 7 * MiB

    second = tus_client.TusClient(f"{replicas.second.url}/files/tus")
    resumed = second.uploader(file_stream=stream, chunk_size=5 * MiB, url=_on(replicas.second, url))
    assert resumed.offset == uploader.offset
    resumed.upload(stop_at=15 * MiB)
    assert int(_head(url).headers["upload-offset"]) == resumed.offset

    last = first.uploader(file_stream=stream, chunk_size=4 * MiB, url=url)
    assert last.offset == resumed.offset
    last.upload()
    request_cleanup()
    head = _head(url)
    file_id = unquote(head.headers["file-id"])  # percent-encoded, as in a URL (docs/tus.md)
    if replicas.prefix == "group1/":  # FastDFS names the file
        assert file_id.startswith("group1/M00/") and file_id.endswith(".mp4")
    else:
        assert file_id.startswith(f"{replicas.prefix}clips/")
        assert file_id.endswith("_large video.mp4")
    assert _download(replicas.first, file_id) == data
    assert _download(replicas.second, file_id) == data
    info = httpx.get(f"{replicas.second.url}/files/{file_id}/info").json()
    assert info["content_type"] == "video/mp4"
    assert info["file_size"] == len(data)


def _slow_body(data: bytes, piece: int, pause: float) -> Iterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]
        time.sleep(pause)


def test_racing_patches_on_two_replicas_never_corrupt(replicas: Replicas) -> None:
    """Two PATCHes at offset 0, each with its own 12 MiB, sent at the same time to different
    replicas: one is stored, the other gets 409 or 423, and the file is the winner's bytes."""
    length = 16 * MiB
    created = httpx.post(
        f"{replicas.first.url}/files/tus",
        headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": "filename cmFjZS5iaW4="},
    )
    assert created.status_code == 201, created.text
    url = created.headers["location"]
    bodies = {"first": os.urandom(12 * MiB), "second": os.urandom(12 * MiB)}
    answers: dict[str, httpx.Response] = {}
    start = threading.Barrier(2)

    def send(name: str, service: Service) -> None:
        start.wait()
        answers[name] = httpx.patch(
            _on(service, url),
            content=_slow_body(bodies[name], MiB, 0.05),
            headers={**OCTETS, "Upload-Offset": "0", "Content-Length": str(12 * MiB)},
            timeout=120,
        )

    threads = [
        threading.Thread(target=send, args=("first", replicas.first)),
        threading.Thread(target=send, args=("second", replicas.second)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(answer.status_code for answer in answers.values())
    assert statuses[0] == 204 and statuses[1] in (409, 423), {
        k: (v.status_code, v.text) for k, v in answers.items()
    }
    loser = next(a for a in answers.values() if a.status_code != 204)
    assert loser.json()["code"] in ("offset_mismatch", "upload_locked")
    winner = next(k for k, a in answers.items() if a.status_code == 204)
    assert _head(url).headers["upload-offset"] == str(12 * MiB)
    rest = os.urandom(length - 12 * MiB)
    done = httpx.patch(
        url, content=rest, headers={**OCTETS, "Upload-Offset": str(12 * MiB)}, timeout=60
    )
    assert done.status_code == 204, done.text
    assert _download(replicas.second, done.headers["file-id"]) == bodies[winner] + rest


def _cut_patch(url: str, offset: int, data: bytes, send: int) -> None:
    """A PATCH that announces all of ``data`` and sends only ``send`` bytes of it, then the
    client vanishes (the connection is closed)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        head = (
            f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        sock.sendall(head.encode())
        view = memoryview(data)[:send]
        for start in range(0, len(view), 256 * 1024):
            sock.sendall(view[start : start + 256 * 1024])
        time.sleep(0.5)  # let the server take in what was sent


def _resume(url: str, data: bytes) -> httpx.Response:
    """HEAD, then send the rest from the offset the server reports (retrying a held lock)."""
    for _ in range(120):
        offset = int(_head(url).headers["upload-offset"])
        answer = httpx.patch(
            url, content=data[offset:], headers={**OCTETS, "Upload-Offset": str(offset)}, timeout=60
        )
        if answer.status_code != 423:
            return answer
        time.sleep(1)
    raise AssertionError("the upload stayed locked")


def test_a_patch_cut_off_midway_keeps_a_prefix(replicas: Replicas) -> None:
    """The client vanishes after 10 of 12 MiB: HEAD reports what was kept (on S3 a full 8 MiB
    part plus a tail), and resuming from there gives a byte-identical file."""
    data = os.urandom(12 * MiB)
    created = httpx.post(
        f"{replicas.first.url}/files/tus",
        headers={
            **TUS,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": "filename Y3V0LmJpbg==",
        },
    )
    url = created.headers["location"]
    _cut_patch(url, 0, data, 10 * MiB)
    offset = -1
    for _ in range(50):  # the server commits what it received once it sees the disconnect
        time.sleep(0.3)
        now = int(_head(url).headers["upload-offset"])
        if now and now == offset:
            break
        offset = now
    assert 8 * MiB < offset <= 10 * MiB
    done = _resume(_on(replicas.second, url), data)
    assert done.status_code == 204, done.text
    assert _download(replicas.first, done.headers["file-id"]) == data


@pytest.mark.parametrize("mode", ["local", "s3", "fastdfs"])
def test_a_replica_killed_midway(mode: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """SIGKILL in the middle of a PATCH: nothing is committed beyond what the state says, a new
    process resumes the upload (on S3 and FastDFS once the dead PATCH's lock goes stale:
    BACKEND_TIMEOUT=1 makes that 27 s and 15 s), and the file is byte-identical."""
    env, _ = _env(mode, request, tmp_path)
    env["BACKEND_TIMEOUT"] = "1"
    service = Service(env)
    service.start(tmp_path)
    data = os.urandom(24 * MiB)
    created = httpx.post(
        f"{service.url}/files/tus",
        headers={
            **TUS,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": "filename a2lsbC5iaW4=",
        },
    )
    url = created.headers["location"]
    assert (
        httpx.patch(url, content=data[:MiB], headers={**OCTETS, "Upload-Offset": "0"}).status_code
        == 204
    )
    killer = threading.Timer(1.0, lambda: os.kill(service.process.pid, signal.SIGKILL))  # type: ignore[union-attr]
    killer.start()
    with pytest.raises(httpx.TransportError):
        httpx.patch(
            url,
            content=_slow_body(data[MiB:], MiB, 0.1),
            headers={**OCTETS, "Upload-Offset": str(MiB), "Content-Length": str(len(data) - MiB)},
            timeout=60,
        )
    killer.join()
    service.stop()
    again = Service(env, port=service.port)
    again.start(tmp_path)
    try:
        done = _resume(url, data)
        assert done.status_code == 204, done.text
        assert _download(again, done.headers["file-id"]) == data
    finally:
        again.stop()
