"""A scaled-out filegate on loopback, for tests and benchmarks: a SeaweedFS cluster (``weed
master``, volume servers with ``-defaultReplication=001`` so that every file has a second copy on
another server, ``weed filer``, and ``weed s3`` as its S3 gateway), several filegate replicas
in S3 mode with the same settings and signing secret, and Debian's HAProxy in front of them,
round-robin, checking ``/readyz``.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import SIGNING_SECRET
from tests.servers import (
    ADMIN,
    HOST,
    Service,
    _stop,
    free_ports,
    s3_env,
    s3_identities,
    wait_http,
    weed_binary,
)

HAPROXY = "/usr/sbin/haproxy"


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


@dataclass
class Volume:
    directory: Path
    port: int
    grpc: int
    process: subprocess.Popen[bytes] | None = None


@dataclass
class SeaweedCluster:
    """``weed master`` + ``volumes`` volume servers + ``weed filer -s3``, replication 001."""

    directory: Path
    volumes: list[Volume] = field(default_factory=list)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, count: int = 2) -> None:
        ports = free_ports(8 + 2 * count)
        self.master, self.master_grpc = ports[0], ports[1]
        self.filer, self.filer_grpc, self.s3, self.s3_grpc = ports[2:6]
        self.s3_extra = ports[6:8]
        weed = weed_binary()
        base = ["-ip", HOST, "-ip.bind", HOST]
        (self.directory / "master").mkdir(parents=True, exist_ok=True)
        self.processes["master"] = _spawn(
            [weed, "master", *base, f"-port={self.master}", f"-port.grpc={self.master_grpc}",
             f"-mdir={self.directory / 'master'}", "-defaultReplication=001",
             "-volumeSizeLimitMB=64", "-volumePreallocate=false"],
            self.directory / "master.log",
        )  # fmt: skip
        wait_http(f"http://{HOST}:{self.master}/cluster/status", 30, self.processes["master"])
        for n in range(count):
            port, grpc = ports[8 + 2 * n], ports[9 + 2 * n]
            volume = Volume(self.directory / f"volume{n}", port, grpc)
            volume.directory.mkdir(parents=True, exist_ok=True)
            self.volumes.append(volume)
            self.start_volume(volume)
        config = self.directory / "s3.json"
        config.write_text(json.dumps(s3_identities()))
        (self.directory / "filer").mkdir(exist_ok=True)
        self.processes["filer"] = _spawn(
            [weed, "filer", *base, f"-port={self.filer}", f"-port.grpc={self.filer_grpc}",
             f"-master={HOST}:{self.master}.{self.master_grpc}",
             f"-defaultStoreDir={self.directory / 'filer'}"],
            self.directory / "filer.log",
        )  # fmt: skip
        wait_http(f"http://{HOST}:{self.filer}", 60, self.processes["filer"])
        self.processes["s3"] = _spawn(  # the filer's S3 gateway, as a process of its own
            [weed, "s3", *base, f"-port={self.s3}", f"-port.grpc={self.s3_grpc}",
             f"-filer={HOST}:{self.filer}.{self.filer_grpc}", f"-config={config}",
             f"-port.iceberg={self.s3_extra[0]}", f"-port.lance={self.s3_extra[1]}"],
            self.directory / "s3.log",
        )  # fmt: skip
        wait_http(f"http://{HOST}:{self.s3}", 60, self.processes["s3"])

    def start_volume(self, volume: Volume) -> None:
        volume.process = _spawn(
            [weed_binary(), "volume", "-ip", HOST, "-ip.bind", HOST, f"-port={volume.port}",
             f"-port.grpc={volume.grpc}", f"-dir={volume.directory}", "-max=30",
             f"-mserver={HOST}:{self.master}.{self.master_grpc}"],
            volume.directory / "volume.log",
        )  # fmt: skip
        wait_http(f"http://{HOST}:{volume.port}/status", 30, volume.process)

    def kill_volume(self, volume: Volume) -> None:
        assert volume.process is not None
        volume.process.kill()
        volume.process.wait()
        volume.process = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.s3}"

    def create_bucket(self, name: str) -> None:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                          aws_access_key_id=ADMIN[0], aws_secret_access_key=ADMIN[1])  # fmt: skip
        deadline = time.monotonic() + 60
        while True:  # the filer takes a moment to see writable volumes
            try:
                s3.create_bucket(Bucket=name)
                s3.put_object(Bucket=name, Key=".probe", Body=b"x")
                s3.delete_object(Bucket=name, Key=".probe")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def service_env(self, bucket: str) -> dict[str, str]:
        return s3_env(self.endpoint, bucket)

    def stop(self) -> None:
        for name in ("s3", "filer"):
            if name in self.processes:
                _stop(self.processes.pop(name))
        for volume in self.volumes:
            if volume.process is not None:
                _stop(volume.process)
                volume.process = None
        if "master" in self.processes:
            _stop(self.processes.pop("master"))


HAPROXY_CONFIG = Path(__file__).parent.parent / "docker" / "haproxy.cfg"
"""The configuration the compose profile ships; run here with loopback ``bind`` and ``server``
lines in place of its own."""


def haproxy_config(port: int, servers: list[int]) -> str:
    """docker/haproxy.cfg listening on ``HOST:port``, balancing over replicas at ``servers``."""
    lines = HAPROXY_CONFIG.read_text().splitlines()
    kept = [line for line in lines if not line.lstrip().startswith("server ")]
    assert len(lines) - len(kept) == 3, "docker/haproxy.cfg names three replicas"
    text = "\n".join(kept) + "\n"
    assert text.count("    bind :8080\n") == 1
    text = text.replace("    bind :8080\n", f"    bind {HOST}:{port}\n")
    return text + "".join(
        f"    server filegate-{n} {HOST}:{p} check\n" for n, p in enumerate(servers, 1)
    )


@dataclass
class Balanced:
    """filegate replicas behind HAProxy."""

    directory: Path
    env: dict[str, str]
    replicas: list[Service] = field(default_factory=list)
    haproxy: subprocess.Popen[bytes] | None = None
    port: int = 0

    def start(self, count: int) -> None:
        env = {
            **self.env,
            "SIGNING_SECRET": SIGNING_SECRET,
            "SHUTDOWN_GRACE_SECONDS": "30",
            "SHUTDOWN_DRAIN_SECONDS": "3",
        }
        for n in range(count):
            work = self.directory / f"replica{n}"
            work.mkdir(parents=True, exist_ok=True)
            replica = Service(env)
            replica.start(work)
            self.replicas.append(replica)
        self.port = free_ports(1)[0]
        config = self.directory / "haproxy.cfg"
        config.write_text(haproxy_config(self.port, [r.port for r in self.replicas]))
        assert shutil.which(HAPROXY) or Path(HAPROXY).exists(), "apt-get install haproxy (.ci/run)"
        self.haproxy = _spawn([HAPROXY, "-db", "-f", str(config)], self.directory / "haproxy.log")
        wait_http(f"{self.url}/healthz", 30, self.haproxy)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def kill(self, n: int) -> None:
        replica = self.replicas[n]
        assert replica.process is not None
        replica.process.kill()
        replica.process.wait()
        replica.process = None

    def terminate(self, n: int) -> float:
        """SIGTERM replica ``n`` and wait for it to exit; the seconds it took."""
        replica = self.replicas[n]
        assert replica.process is not None
        started = time.monotonic()
        replica.process.send_signal(signal.SIGTERM)
        replica.process.wait(timeout=60)
        replica.process = None
        return time.monotonic() - started

    def restart(self, n: int) -> None:
        replica = self.replicas[n]
        assert replica.log_path is not None
        replica.start(replica.log_path.parent)

    def up(self, n: int, timeout: float = 30) -> None:
        """Until replica ``n`` is ready and HAProxy's checks have let it back in."""
        replica = self.replicas[n]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{replica.url}/readyz", timeout=2).status_code == 200:
                    time.sleep(1.5)  # two checks, 500 ms apart ("rise 2")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"replica {n} never became ready")

    def stop(self) -> None:
        if self.haproxy is not None:
            _stop(self.haproxy)
            self.haproxy = None
        for replica in self.replicas:
            replica.stop()
