"""Bounded waits, fail-fast, honest readiness and faults in the middle of a request, against real
SeaweedFS (stopped with SIGTERM, frozen with SIGSTOP), the FastDFS emulator and real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import created_bucket, fastdfs_settings, s3_admin, s3_settings, serve
from tests.fdfs_emulator import FastDFS
from tests.servers import SeaweedFS, Service
from tests.test_e2e import _eventually
from tests.test_fastdfs import fdfs_only, legacy_upload

MiB = 1024 * 1024


@contextmanager
def frozen(server: SeaweedFS) -> Iterator[None]:
    """SeaweedFS stops answering (it keeps its connections and accepts new ones)."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "backend_unavailable"
    assert int(response.headers["retry-after"]) > 0


async def pending_and_stored(endpoint: str, bucket: str) -> tuple[list[str], list[str]]:
    async with s3_admin(endpoint) as s3:
        listed = await s3.list_objects_v2(Bucket=bucket)
        pending = await s3.list_multipart_uploads(Bucket=bucket)
    stored = [item["Key"] for item in listed.get("Contents", [])]
    return [up["Key"] for up in pending.get("Uploads", [])], stored


async def test_a_frozen_s3_answers_503_within_the_deadline(private_seaweed: SeaweedFS) -> None:
    bucket = await created_bucket(private_seaweed.endpoint)
    settings = s3_settings(
        private_seaweed.endpoint, bucket, backend_timeout=2, breaker_failures=100
    )
    async with serve(settings) as client:
        kept = (await client.put("/files/upload/kept.bin", content=b"kept")).json()["file_id"]
        gone = (await client.put("/files/upload/gone.bin", content=b"gone")).json()["file_id"]
        with frozen(private_seaweed):
            for call in (
                client.get(f"/files/{kept}/info"),
                client.get(f"/files/{kept}/download"),
                client.get(f"/files/{kept}/download", headers={"Range": "bytes=0-1"}),
                client.delete(f"/files/{gone}"),  # 503: it may or may not happen after the thaw
                client.put("/files/upload/new.bin", content=b"new"),
            ):
                started = time.monotonic()
                response = await call
                assert_unavailable(response)
                assert time.monotonic() - started < 2 + 1.5  # BACKEND_TIMEOUT, retries included
        # thawed: everything works again, and the upload S3 received while frozen (it stores it
        # once it wakes) is deleted again: the client was told it failed
        assert (await client.get(f"/files/{kept}/download")).content == b"kept"

        async def only_the_kept_file() -> bool:
            pending, stored = await pending_and_stored(private_seaweed.endpoint, bucket)
            names = sorted(k.rsplit("_", 1)[1] for k in stored if not k.endswith("_gone.bin"))
            return pending == [] and names == ["kept.bin"]

        for _ in range(60):
            if await only_the_kept_file():
                break
            await asyncio.sleep(0.5)
        assert await only_the_kept_file()


async def test_a_failing_backend_is_cut_off_then_retried(
    private_seaweed: SeaweedFS, fastdfs: FastDFS
) -> None:
    """Fail fast: after BREAKER_FAILURES failures S3 gets 503 at once for BREAKER_BACKOFF
    seconds; FastDFS (hybrid mode) is not affected; S3 is used again when it is back."""
    bucket = await created_bucket(private_seaweed.endpoint)
    legacy = await legacy_upload(fastdfs, b"legacy bytes", "legacy.txt")
    settings = s3_settings(
        private_seaweed.endpoint,
        bucket,
        **fastdfs_settings(fastdfs, storage_mode="hybrid"),
        backend_timeout=2,
        breaker_failures=2,
        breaker_backoff=4,
    )
    async with serve(settings) as client:
        kept = (await client.put("/files/upload/k.bin", content=b"k")).json()["file_id"]
        private_seaweed.stop()
        for _ in range(2):
            assert_unavailable(await client.get(f"/files/{kept}/info"))
        started = time.monotonic()
        cut_off = await client.get(f"/files/{kept}/info")
        assert time.monotonic() - started < 0.2  # no connection attempt at all
        assert_unavailable(cut_off)
        assert "kept failing" in cut_off.json()["detail"]
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["backends"]["s3"]["breaker"] == "open"
        assert ready.json()["backends"]["fastdfs"] == {
            **ready.json()["backends"]["fastdfs"],
            "ok": True,
            "breaker": "closed",
        }
        metrics = (await client.get("/metrics")).text
        assert 'filegate_backend_breaker_open{backend="s3"} 1.0' in metrics
        assert (await client.get(f"/files/{legacy}/download")).content == b"legacy bytes"

        private_seaweed.start()
        await asyncio.sleep(4.1)  # the back-off passes; the next request is the trial
        assert (await client.get(f"/files/{kept}/download")).content == b"k"
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["backends"]["s3"]["breaker"] == "closed"


async def test_readiness_sees_a_dead_fastdfs_storage(fastdfs: FastDFS) -> None:
    async with serve(fdfs_only(fastdfs)) as client:
        assert (await client.get("/readyz")).status_code == 200
        fastdfs.run(fastdfs.storage.stop())
        down = await client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["backends"]["fastdfs"]["ok"] is False
        fastdfs.run(fastdfs.storage.start())
        assert (await client.get("/readyz")).status_code == 200


def test_a_frozen_s3_aborts_a_download_mid_stream(
    private_seaweed: SeaweedFS, tmp_path: Path
) -> None:
    """BACKEND_IDLE_TIMEOUT: a body the backend stops sending is cut off, never passed off as
    complete."""
    bucket = asyncio.run(created_bucket(private_seaweed.endpoint))
    env = {**private_seaweed.service_env(bucket), "BACKEND_IDLE_TIMEOUT": "2"}
    service = Service(env)
    service.start(tmp_path)
    try:
        source = tmp_path / "big.bin"
        source.write_bytes(os.urandom(256 * MiB))
        file_id = service.upload(source, "big.bin")
        received = 0
        started = time.monotonic()
        with pytest.raises(httpx.HTTPError):  # the connection ends before Content-Length
            url = f"{service.url}/files/{quote(file_id)}/download"
            with httpx.stream("GET", url, timeout=30) as response:
                assert response.status_code == 200
                for chunk in response.iter_bytes():
                    if not received:
                        os.kill(private_seaweed.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
                    received += len(chunk)
        assert received < 256 * MiB
        assert time.monotonic() - started < 15
    finally:
        os.kill(private_seaweed.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
        service.stop()


def _slow_put(url: str, path: str, size: int, *, rate: int) -> subprocess.Popen[bytes]:
    """curl uploading ``size`` random bytes at ``rate`` bytes per second."""
    data = Path(f"/tmp/filegate-slow-{os.getpid()}-{time.monotonic_ns()}.bin")
    data.write_bytes(os.urandom(size))
    return subprocess.Popen(
        ["curl", "-sS", "--limit-rate", str(rate), "-T", str(data), "-o", "-", "-w",
         "\n%{http_code}", f"{url}{path}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.parametrize("fault", ["stop", "freeze"])
def test_s3_failing_mid_upload_leaves_nothing(
    private_seaweed: SeaweedFS, tmp_path: Path, fault: str
) -> None:
    """The multipart upload is aborted: right away, or once S3 can be reached again."""
    bucket = asyncio.run(created_bucket(private_seaweed.endpoint))
    service = Service({**private_seaweed.service_env(bucket), "BACKEND_TIMEOUT": "2"})
    service.start(tmp_path)
    try:
        upload = _slow_put(service.url, "/files/upload/cut.bin", 40 * MiB, rate=8 * MiB)
        time.sleep(2.5)  # two parts are on their way
        assert private_seaweed.process is not None
        if fault == "stop":
            private_seaweed.stop()
        else:
            os.kill(private_seaweed.process.pid, signal.SIGSTOP)
        out, _ = upload.communicate(timeout=60)
        assert out.rsplit(b"\n", 1)[-1] == b"503", out[-300:]
        if fault == "stop":
            private_seaweed.start()
        else:
            os.kill(private_seaweed.process.pid, signal.SIGCONT)

        def clean() -> bool:
            pending, stored = asyncio.run(pending_and_stored(private_seaweed.endpoint, bucket))
            return pending == [] and stored == []

        assert _eventually(clean, timeout=30)  # the abort, retried until S3 answered again
    finally:
        if private_seaweed.process is not None:
            os.kill(private_seaweed.process.pid, signal.SIGCONT)
        service.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_before_it_stops(tmp_path: Path, workers: int) -> None:
    """With SHUTDOWN_DRAIN_SECONDS, a SIGTERM first makes /readyz 503 while requests are still
    served, each closing its connection, so a balancer takes the replica out before its socket
    closes (docs/scaling.md); a second SIGTERM stops at once. Also the check that uvicorn
    installs its handler before the lifespan starts (app/server.py, ``drain_on_sigterm``)."""
    env = {"LOCAL_ROOT": str(tmp_path / "data"), "SHUTDOWN_DRAIN_SECONDS": "3",
           "FILEGATE_WORKERS": str(workers)}  # fmt: skip
    service = Service(env)
    service.start(tmp_path)
    try:
        assert service.process is not None
        with httpx.Client(base_url=service.url, timeout=10) as http:
            assert http.get("/readyz").status_code == 200
            stored = http.put("/files/upload/before.txt", content=b"before").json()["file_id"]
            signalled = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            ready = http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "draining", ready.text
            assert ready.headers["connection"] == "close"
            answer = http.put("/files/upload/during.txt", content=b"during")  # still served
            assert answer.status_code == 201, answer.text
            assert answer.headers["connection"] == "close"
            got = http.get(f"/files/{quote(stored)}/download")
            assert got.content == b"before"
        service.process.wait(timeout=30)
        assert time.monotonic() - signalled >= 3
        service.process = None
        if workers > 1:
            return  # uvicorn's supervisor passes one SIGTERM on to its workers, not a second
        service.start(tmp_path)  # a second SIGTERM stops without waiting for the drain
        assert service.process is not None
        service.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        service.process.wait(timeout=30)
        assert time.monotonic() - signalled < 2.5
        service.process = None
    finally:
        service.stop()


def test_sigterm_mid_upload_finishes_it_or_leaves_nothing(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    """A graceful stop lets an upload finish within SHUTDOWN_GRACE_SECONDS; one that cannot is
    cancelled and rolled back."""
    bucket = asyncio.run(created_bucket(seaweed.endpoint))
    env = {**seaweed.service_env(bucket), "SHUTDOWN_GRACE_SECONDS": "3"}
    service = Service(env)
    service.start(tmp_path)
    try:
        finishes = _slow_put(service.url, "/files/upload/fits.bin", 12 * MiB, rate=6 * MiB)
        too_slow = _slow_put(service.url, "/files/upload/slow.bin", 40 * MiB, rate=4 * MiB)
        time.sleep(1)
        assert service.process is not None
        service.process.send_signal(signal.SIGTERM)
        out, _ = finishes.communicate(timeout=60)
        assert out.rsplit(b"\n", 1)[-1] == b"201", out[-300:]
        too_slow.communicate(timeout=60)  # cut off when the grace period ends
        service.process.wait(timeout=30)
        service.process = None
    finally:
        service.stop()

    def only_the_finished_one() -> bool:
        pending, stored = asyncio.run(pending_and_stored(seaweed.endpoint, bucket))
        return pending == [] and [k.rsplit("_", 1)[1] for k in stored] == ["fits.bin"]

    assert _eventually(only_the_finished_one)


async def test_fastdfs_storage_or_tracker_stopping_mid_request(
    fastdfs: FastDFS, tmp_path: Path
) -> None:
    async with serve(fdfs_only(fastdfs)) as client:
        kept = (await client.put("/files/upload/k.bin", content=os.urandom(MiB))).json()["file_id"]
        before = fastdfs.stored_files()
        # the storage goes away in the middle of an upload's body
        fastdfs.storage.fault, fastdfs.storage.delay = "slow", 0.5

        async def body() -> AsyncIterator[bytes]:
            yield os.urandom(MiB)
            fastdfs.run(fastdfs.storage.stop())
            yield os.urandom(MiB)

        cut = await client.put("/files/upload/cut.bin", content=body())
        assert_unavailable(cut)
        fastdfs.storage.fault = None
        fastdfs.run(fastdfs.storage.start())
        assert fastdfs.stored_files() == before
        # the tracker goes away
        fastdfs.run(fastdfs.tracker.stop())
        assert_unavailable(await client.get(f"/files/{kept}/info"))
        assert_unavailable(await client.put("/files/upload/x.bin", content=b"x"))
        fastdfs.run(fastdfs.tracker.start())
        assert (await client.get(f"/files/{kept}/info")).status_code == 200
        assert fastdfs.stored_files() == before


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _slow_connections(url: str, count: int) -> list[socket.socket]:
    """Connections that start a request head and send no more of it."""
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        sockets.append(sock)
    return sockets


def _answers(sockets: list[socket.socket], wait: float) -> list[bytes]:
    answers = []
    for sock in sockets:
        sock.settimeout(wait)
        try:
            answers.append(sock.recv(4096))
        except OSError:
            answers.append(b"(nothing)")
    return answers


def test_slow_clients_cannot_exhaust_the_service(tmp_path: Path) -> None:
    """2,000 connections that send their request head a line at a time hold no more than
    CLIENT_HEADER_TIMEOUT each, and normal requests are served all along."""
    env = {"LOCAL_ROOT": str(tmp_path / "data"), "CLIENT_HEADER_TIMEOUT": "3"}
    service = Service(env)
    service.start(tmp_path)
    assert service.process is not None
    sockets = _slow_connections(service.url, 2000)
    try:
        started = time.monotonic()
        for sock in sockets[::2]:
            sock.sendall(b"X-Slow: 1\r\n")
        while time.monotonic() - started < 2:
            normal = httpx.get(f"{service.url}/healthz", timeout=5)
            assert normal.status_code == 200
            assert normal.elapsed.total_seconds() < 1
        answers = _answers(sockets, wait=10)
        assert answers == [b""] * 2000  # every one closed by the server, none answered
        assert time.monotonic() - started < 15
        assert _eventually(lambda: _fds(service.process.pid) < 100)  # type: ignore[union-attr]
    finally:
        for sock in sockets:
            sock.close()
        service.stop()


def test_connections_beyond_the_cap_are_refused_at_once(tmp_path: Path) -> None:
    service = Service({"LOCAL_ROOT": str(tmp_path / "data"), "MAX_CONNECTIONS": "100"})
    service.start(tmp_path)
    assert service.process is not None
    sockets = _slow_connections(service.url, 150)
    try:
        answers = _answers(sockets, wait=0.5)
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        assert len(refused) == 50
        assert b'"code": "server_busy"' in refused[0] and b"Retry-After: 1" in refused[0]
        assert _fds(service.process.pid) < 150
    finally:
        for sock in sockets:
            sock.close()
        service.stop()


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def _upload_all(source: Path, url: str, count: int) -> list[tuple[int, bytes]]:
    """``count`` uploads of ``source`` at once with ``curl -T``: (exit status, answer) each."""
    command = ["curl", "-sS", "--fail-with-body", "-T", str(source)]
    running = [
        subprocess.Popen([*command, f"{url}/load-{n}.bin"], stdout=subprocess.PIPE)
        for n in range(count)
    ]
    answers = [p.communicate(timeout=300)[0] for p in running]
    return [(p.returncode, answer) for p, answer in zip(running, answers, strict=True)]


@pytest.mark.slow
async def test_memory_stays_bounded_under_32_concurrent_100_mib_uploads(
    private_seaweed: SeaweedFS, tmp_path: Path
) -> None:
    """The upload budget (UPLOAD_MEMORY, app/storage/budget.py) bounds the buffers of all uploads
    together: 32 uploads of 100 MiB at once stay under 256 MiB of RSS, every one is stored whole
    (uploads wait for budget, none fails)."""
    bucket = await created_bucket(private_seaweed.endpoint)
    service = Service(private_seaweed.service_env(bucket))
    service.start(tmp_path)
    source = tmp_path / "source.bin"
    with source.open("wb") as out:
        for _ in range(100):
            out.write(os.urandom(1024 * 1024))
    try:
        assert service.process is not None
        url = f"{service.url}/files/upload"
        results = await asyncio.to_thread(_upload_all, source, url, 32)
        assert [code for code, _ in results] == [0] * 32, results
        answers = [answer for _, answer in results]
        peak = _peak_rss_mib(service.process.pid)
        ids = [httpx.Response(201, content=answer).json()["file_id"] for answer in answers]
        async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
            for file_id in ids:
                info = (await client.get(f"/files/{quote(file_id)}/info")).json()
                assert info["file_size"] == 100 * 1024 * 1024
            sample = await client.get(f"/files/{quote(ids[-1])}/download")
            assert sample.content == source.read_bytes()
    finally:
        service.stop()
    assert peak < 256, f"peak RSS {peak:.0f} MiB"


@pytest.mark.slow
async def test_a_60_second_soak_has_no_errors_and_flat_memory(
    private_seaweed: SeaweedFS, tmp_path: Path
) -> None:
    """bench/soak.py for 60 s in S3 mode: uploads by PUT, form and tus, downloads, ranges, zips,
    listings and deletes, every byte checked, RSS and fds sampled."""
    from bench.soak import report, soak

    service = Service(private_seaweed.service_env(await created_bucket(private_seaweed.endpoint)))
    service.start(tmp_path)
    try:
        assert service.process is not None
        tally = await asyncio.to_thread(
            soak, service.url, service.process.pid, 60, clients=8, max_mib=8, key=None
        )
    finally:
        service.stop()
    print(report(tally))
    assert not tally.errors, report(tally)
    assert sum(tally.ops.values()) > 100
    assert all(tally.ops[op] for op in ("put", "form", "tus", "zip", "list", "delete", "gone"))
    # 8 clients, each with an upload in flight (a tus PATCH holds an 8 MiB part buffer): the RSS
    # levels off at 240-258 MiB (a 240 s run: no higher after 60 s than at 60 s) and must not
    # go on growing.
    settled = [rss for seconds, rss, _ in tally.samples if seconds > 10]
    assert max(settled) < 320, report(tally)
    early = max(rss for seconds, rss, _ in tally.samples if 10 < seconds <= 30)
    assert max(rss for seconds, rss, _ in tally.samples if seconds > 30) < early + 48, report(tally)
    # Connection pools to S3 fill in the first seconds; after that nothing may grow (a leaked
    # socket or file would, with every operation)
    warm = max(fd for seconds, _, fd in tally.samples if seconds <= 10)
    later = [fd for seconds, _, fd in tally.samples if seconds > 10]
    assert max(later) <= warm + 10, report(tally)
