"""Scale-out under faults: filegate replicas behind HAProxy over a replicated SeaweedFS cluster,
all started here on loopback (tests/cluster.py).

The project's soak traffic (bench/soak.py: uploads by PUT, form and tus, whole and ranged
downloads, zips, listings, deletes) runs through the balancer while a replica is stopped (SIGTERM,
a rolling restart) or killed (SIGKILL); and reads and writes go on while a volume server dies.
Every upload answered 201 must download byte for byte at the end; no download may be short yet
look complete; any error during a fault must be a 503 with Retry-After, a 502/504 from the
balancer, or a connection or stream the client saw fail.
"""

from __future__ import annotations

import io
import os
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import yaml

from bench.soak import Traffic
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


def _report(traffic: Traffic, fault: float) -> str:
    after = [t - fault for t, _ in traffic.failures]
    kinds = Counter(what for _, what in traffic.failures)
    last = max(after, default=0.0)
    locked = [t - fault for t in traffic.locked]
    waited = f"; tus 423 {len(locked)}, the last {max(locked):.1f} s after" if locked else ""
    return (
        f"ops {dict(traffic.ops)}; failed {len(after)} {dict(kinds)}; last {last:.1f} s after"
        + waited
    )


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
    assert traffic.failures == [] and traffic.locked == [], _report(traffic, 0)
    assert min(traffic.ops[kind] for kind in ("put", "form", "zip", "list")) > 3
    traffic.verify()
    print(f"rolling restart: {_report(traffic, 0)}; {len(traffic.stored)} files verified")


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
    print(f"SIGKILL: {_report(traffic, killed)}; {len(traffic.stored)} files verified")


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


def test_the_compose_cluster_has_the_tested_shape() -> None:
    """docker-compose.yml's profile ``cluster`` is what these tests run: HAProxy with
    docker/haproxy.cfg in front of three replicas with one S3-mode environment, over SeaweedFS with
    replication 001 on two volume servers, and the balancer's servers are those replicas."""
    root = Path(__file__).resolve().parent.parent
    services = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]
    cluster = {name: s for name, s in services.items() if "cluster" in s.get("profiles", [])}
    replicas = sorted(name for name in cluster if name.startswith("filegate-"))
    assert replicas == ["filegate-1", "filegate-2", "filegate-3"]
    env = cluster["filegate-1"]["environment"]
    assert all(cluster[name]["environment"] == env for name in replicas)
    assert env["STORAGE_MODE"] == "s3" and float(env["SHUTDOWN_DRAIN_SECONDS"]) > 1.5
    assert env["S3_ENDPOINT"] == "http://seaweedfs-s3:8333"
    assert "-port=8333" in cluster["seaweedfs-s3"]["command"][0]
    assert "-defaultReplication=001" in cluster["seaweedfs-master"]["command"]
    assert len([name for name in cluster if name.startswith("seaweedfs-volume-")]) >= 2
    balancer = cluster["balancer"]
    assert "./docker/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in balancer["volumes"]
    assert sorted(balancer["depends_on"]) == replicas
    config = (root / "docker" / "haproxy.cfg").read_text()
    servers = re.findall(r"^\s*server (\S+) (\S+) check$", config, re.MULTILINE)
    assert servers == [(name, f"{name}:8000") for name in replicas]
    assert "    bind :8080\n" in config and "127.0.0.1:8080:8080" in balancer["ports"]
    for check in ("/healthz", "/readyz"):
        assert f"http-check send meth GET uri {check}\n" in config
    assert "\n    option http-buffer-request" not in config  # uploads stream through
