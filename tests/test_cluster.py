"""Scale-out under faults: filegate replicas behind HAProxy over a replicated SeaweedFS cluster,
all started here on loopback (tests/cluster.py).

Mixed traffic runs through the balancer while a replica is stopped (SIGTERM, a rolling restart),
killed (SIGKILL), or a volume server dies. Every upload answered 201 must download byte for
byte at the end; no download may be short yet look complete; any error during a fault must be a
503 with Retry-After, a 502/504 from the balancer, or a connection or stream the client saw fail.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.cluster import Balanced, SeaweedCluster

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedCluster]:
    """One cluster for the module: each test brings back what it stopped."""
    seaweed = SeaweedCluster(tmp_path_factory.mktemp("seaweedfs"))
    try:
        seaweed.start(count=2)
        seaweed.create_bucket("files")
        yield seaweed
    finally:
        seaweed.stop()


@pytest.fixture
def balanced(cluster: SeaweedCluster, tmp_path: Path) -> Iterator[Balanced]:
    replicas = Balanced(tmp_path / "replicas", cluster.service_env("files"))
    try:
        replicas.start(2)
        yield replicas
    finally:
        replicas.stop()


@dataclass
class Traffic:
    """Clients looping over upload, download, range, info and delete through the balancer."""

    url: str
    clients: int = 4
    max_bytes: int = 2 * MiB
    stored: dict[str, str] = field(default_factory=dict)
    """Every file answered 201 and not deleted: id → SHA-256."""
    ops: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[float, str]] = field(default_factory=list)
    """(time, what) of every request that failed in an allowed way."""
    wrong: list[str] = field(default_factory=list)
    """What must never happen: wrong bytes presented as complete, an unexpected status."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._loop, args=(n,)) for n in range(self.clients)]
        for thread in threads:
            thread.start()
        return threads

    def stop(self, threads: list[threading.Thread]) -> None:
        self._stop.set()
        for thread in threads:
            thread.join(timeout=120)

    def _failed(self, what: str, response: httpx.Response | None = None) -> None:
        if response is not None:
            allowed = response.status_code in (502, 504) or (
                response.status_code == 503 and "retry-after" in response.headers
            )
            if not allowed:
                self.wrong.append(f"{what}: {response.status_code} {response.text[:200]}")
                return
            what = f"{what} {response.status_code}"
        with self._lock:
            self.failures.append((time.monotonic(), what))

    def _loop(self, n: int) -> None:
        rng = random.Random(n)
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self._stop.is_set():
                data = rng.randbytes(rng.randrange(1, self.max_bytes))
                try:
                    answer = http.put(
                        f"/files/upload/c{n}-{rng.randrange(10**9)}.bin", content=data
                    )
                except httpx.HTTPError as exc:
                    self._failed(f"upload {type(exc).__name__}")
                    continue
                self.ops["upload"] += 1
                if answer.status_code != 201:
                    self._failed("upload", answer)
                    continue
                file_id = answer.json()["file_id"]
                with self._lock:
                    self.stored[file_id] = hashlib.sha256(data).hexdigest()
                path = f"/files/{quote(file_id)}/download"
                start = rng.randrange(len(data))
                for headers, want in (({}, data), ({"Range": f"bytes={start}-"}, data[start:])):
                    try:
                        got = http.get(path, headers=headers)
                    except httpx.HTTPError as exc:  # a cut stream is seen as one
                        self._failed(f"download {type(exc).__name__}")
                        continue
                    self.ops["download"] += 1
                    if got.status_code in (200, 206):
                        if got.content != want:
                            self.wrong.append(f"download {file_id}: other bytes, looking complete")
                    else:
                        self._failed("download", got)
                if rng.random() < 0.2:
                    try:
                        gone = http.delete(f"/files/{quote(file_id)}")
                    except httpx.HTTPError as exc:
                        self._failed(f"delete {type(exc).__name__}")
                        continue
                    self.ops["delete"] += 1
                    if gone.status_code == 200:
                        with self._lock:
                            del self.stored[file_id]
                    else:
                        self._failed("delete", gone)

    def verify(self) -> None:
        """Every file answered 201 (and not deleted) downloads byte for byte now."""
        with httpx.Client(base_url=self.url, timeout=60) as http:
            for file_id, digest in self.stored.items():
                got = http.get(f"/files/{quote(file_id)}/download")
                assert got.status_code == 200, (file_id, got.status_code, got.text[:200])
                assert hashlib.sha256(got.content).hexdigest() == digest, file_id


def _report(traffic: Traffic, fault: float) -> str:
    after = [t - fault for t, _ in traffic.failures]
    kinds = Counter(what for _, what in traffic.failures)
    last = max(after, default=0.0)
    return f"ops {dict(traffic.ops)}; failed {len(after)} {dict(kinds)}; last {last:.1f} s after"


def test_a_rolling_restart_fails_no_request(balanced: Balanced) -> None:
    """SIGTERM one replica, start it again, then the other: requests in flight finish, new ones
    go to the other replica, and not one request fails."""
    traffic = Traffic(balanced.url)
    threads = traffic.run()
    try:
        time.sleep(3)
        for n in (0, 1):
            seconds = balanced.terminate(n)
            assert seconds < 30
            balanced.restart(n)
            balanced.up(n)
            time.sleep(2)
    finally:
        traffic.stop(threads)
    assert traffic.wrong == []
    assert traffic.failures == [], _report(traffic, 0)
    assert traffic.ops["upload"] > 20
    traffic.verify()


def test_a_killed_replica_loses_no_acknowledged_file(balanced: Balanced) -> None:
    """SIGKILL a replica mid-traffic: requests it had fail (as a cut connection or the
    balancer's 502/503), nothing answered 201 is lost, and once the balancer has taken it out
    the traffic is error-free."""
    traffic = Traffic(balanced.url)
    threads = traffic.run()
    try:
        time.sleep(3)
        killed = time.monotonic()
        balanced.kill(0)
        time.sleep(4)
        balanced.restart(0)
        balanced.up(0)
        time.sleep(2)
    finally:
        traffic.stop(threads)
    assert traffic.wrong == []
    late = [what for t, what in traffic.failures if t - killed > 2.5]
    assert late == [], _report(traffic, killed)  # error-free once the checks took it out
    traffic.verify()
    print(_report(traffic, killed))


def test_a_resumable_upload_goes_on_through_another_replica(balanced: Balanced) -> None:
    """A tus upload whose replica dies: its state is in S3, so the next PATCH, on the other
    replica, goes on from the offset, and the file is whole."""
    from tusclient.client import TusClient

    data = os.urandom(24 * MiB)
    client = TusClient(f"{balanced.url}/files/tus")
    uploader = client.uploader(
        file_stream=io.BytesIO(data),
        chunk_size=4 * MiB,
        metadata={"filename": "resumed.bin"},
        retries=10,
        retry_delay=0.5,
    )
    uploader.upload(stop_at=8 * MiB)
    assert uploader.offset == 8 * MiB and uploader.url is not None
    balanced.kill(0)  # whichever replica served those, the next chunks reach the other
    uploader.upload()
    file_id = httpx.head(uploader.url, headers={"Tus-Resumable": "1.0.0"}).headers["file-id"]
    got = httpx.get(f"{balanced.url}/files/{file_id}/download", timeout=60)
    assert got.status_code == 200 and got.content == data


def test_a_dead_volume_server_keeps_reads_going(
    balanced: Balanced, cluster: SeaweedCluster
) -> None:
    """Every file has a copy on the other volume server: with one dead, reads go on byte for
    byte; a write either lands (and is whole later) or is refused with a 503."""
    stored: dict[str, bytes] = {}
    with httpx.Client(base_url=balanced.url, timeout=60) as http:
        for n in range(20):
            data = os.urandom(random.randrange(1, 3 * MiB))
            answer = http.put(f"/files/upload/v{n}.bin", content=data)
            assert answer.status_code == 201, answer.text
            stored[answer.json()["file_id"]] = data
        cluster.kill_volume(cluster.volumes[1])
        failed, error_free = _read_until_whole(http, stored)
        written: dict[str, bytes] = {}
        refused = 0
        for n in range(4):
            data = os.urandom(200_000)
            answer = http.put(f"/files/upload/w{n}.bin", content=data)
            if answer.status_code == 201:
                written[answer.json()["file_id"]] = data
            else:
                assert answer.status_code == 503 and "retry-after" in answer.headers, answer.text
                refused += 1
        cluster.start_volume(cluster.volumes[1])
        after, back = _read_until_whole(http, {**stored, **written})
        deadline = time.monotonic() + 60
        while (answer := http.put("/files/upload/again.bin", content=b"again")).status_code != 201:
            assert answer.status_code == 503 and time.monotonic() < deadline, answer.text
            time.sleep(0.5)  # writes recover once the second copy can be placed again
        assert http.get(f"/files/{quote(answer.json()['file_id'])}/download").content == b"again"
    print(
        f"a volume server down: {failed} reads were 503 (Retry-After), every read whole after "
        f"{error_free:.1f} s; {len(written)} of 4 writes landed, {refused} were 503; after it "
        f"came back, {after} reads were 503, every read whole after {back:.1f} s"
    )


def _read_until_whole(http: httpx.Client, files: dict[str, bytes]) -> tuple[int, float]:
    """Read every file until each comes whole (at most 60 s); a read that fails meanwhile must
    be a 503 with Retry-After. Returns the failed reads and the seconds until none failed."""
    started = time.monotonic()
    failed = 0
    while True:
        pending = []
        for file_id, data in files.items():
            got = http.get(f"/files/{quote(file_id)}/download")
            if got.status_code == 200:
                assert got.content == data, f"{file_id}: other bytes, looking complete"
                continue
            assert got.status_code == 503 and "retry-after" in got.headers, got.text
            failed += 1
            pending.append(file_id)
        if not pending:
            return failed, time.monotonic() - started
        assert time.monotonic() - started < 60, f"{len(pending)} files unreadable for 60 s"
        time.sleep(0.5)
