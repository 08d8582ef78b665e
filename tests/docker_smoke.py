"""The built image, run as documented (docker/ci.sh runs this with DOCKER_HOST set):

    uv run python -m tests.docker_smoke --image filegate:ci

Against SeaweedFS on the host: the container runs as uid 10001, becomes healthy, takes an upload,
serves a byte range and a zip, and `docker stop` lets a download in flight finish. A second
container in local mode writes to its data volume. Each step prints one line; any failure raises.
Containers share the host's network (dockerd runs without a bridge here) and bind 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import quote

import httpx
import yaml

from tests.fdfs_emulator import FastDFS
from tests.servers import ADMIN, SeaweedFS, free_port

DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
MiB = 1024 * 1024


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=300)
    if check and done.returncode:
        raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def say(line: str) -> None:
    print(f"docker: {line}", flush=True)


def run_container(image: str, name: str, env: dict[str, str], *volume: str) -> tuple[str, float]:
    """Start ``name``; returns its URL and the seconds from ``docker run`` to a 200 /healthz."""
    port = free_port()
    env = {**env, "FILEGATE_HOST": "127.0.0.1", "FILEGATE_PORT": str(port)}
    flags = [f"--env={k}={v}" for k, v in env.items()] + [f"--volume={v}" for v in volume]
    started = time.monotonic()
    docker("run", "--detach", "--name", name, "--network", "host", *flags, image)
    url = f"http://127.0.0.1:{port}"
    while time.monotonic() - started < 60:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return url, time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    logs = subprocess.run([DOCKER, "logs", "--tail", "20", name], capture_output=True, text=True)
    raise RuntimeError(f"{name} did not answer /healthz: {logs.stdout}{logs.stderr}")


def wait_healthy(name: str, limit: float = 90) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        state = docker("inspect", "--format", "{{.State.Health.Status}}", name)
        if state == "healthy":
            return time.monotonic() - started
        time.sleep(1)
    raise RuntimeError(f"{name} is not healthy: {state}")


ROOT = Path(__file__).resolve().parent.parent
_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")


def compose_environment(variables: dict[str, str]) -> dict[str, str]:
    """filegate's environment as docker-compose.yml and docker/compose.host.yml set it, with
    ``${VAR}`` and ``${VAR:-default}`` filled from ``variables`` (Compose's own rules)."""
    merged: dict[str, str] = {}
    for name in ("docker-compose.yml", "docker/compose.host.yml"):
        service = yaml.safe_load((ROOT / name).read_text())["services"]["filegate"]
        merged |= {k: str(v) for k, v in service["environment"].items()}

    def fill(match: re.Match[str]) -> str:
        return variables.get(match.group(1)) or (match.group(2) or "")

    return {k: _VARIABLE.sub(fill, v) for k, v in merged.items()}


def compose_config(image: str, seaweed: SeaweedFS, work: Path) -> None:
    """filegate in the compose file's hybrid configuration, its S3 (SeaweedFS here) and FastDFS
    (the emulator) on the host: the bucket is created at start-up, uploads go to S3 and a legacy
    FastDFS file is served."""
    fastdfs = FastDFS(work / "fastdfs")
    fastdfs.serve_in_thread()
    name = "filegate-ci-compose"
    port = free_port()
    env = compose_environment({
        "MINIO_ROOT_USER": ADMIN[0], "MINIO_ROOT_PASSWORD": ADMIN[1],  # the root pair
        "S3_DEFAULT_BUCKET": "compose-files", "HOST_S3_ENDPOINT": seaweed.endpoint,
        "HOST_FASTDFS_TRACKER": fastdfs.tracker_address, "HOST_FILEGATE_PORT": str(port),
    })  # fmt: skip
    try:
        url, seconds = run_container(image, name, env)
        assert env["STORAGE_MODE"] == "hybrid" and env["FILEGATE_PORT"] == str(port)
        ready = httpx.get(f"{url}/readyz", timeout=10).json()
        assert ready["status"] == "ok" and set(ready["backends"]) == {"s3", "fastdfs"}, ready
        new = httpx.put(f"{url}/files/upload/new.txt", content=b"new", timeout=10).json()
        assert new["file_id"].startswith("s3:compose-files/"), new
        legacy = fastdfs.run(_legacy_upload(fastdfs, b"legacy bytes"))
        served = httpx.get(f"{url}/files/{legacy}/download", timeout=10)
        assert served.content == b"legacy bytes", served.text
        say(f"compose configuration (hybrid, {env['FILEGATE_WORKERS']} workers) with "
            f"docker/compose.host.yml: ready in {seconds:.1f} s, upload to S3 and a legacy "
            "FastDFS download work")  # fmt: skip
    finally:
        docker("rm", "--force", name, check=False)
        fastdfs.run(fastdfs.stop())


async def _legacy_upload(fastdfs: FastDFS, data: bytes) -> str:
    from tests.test_fastdfs import legacy_upload

    return await legacy_upload(fastdfs, data, "legacy.txt")


def smoke(image: str, work: Path) -> None:
    size = docker("image", "inspect", "--format", "{{.Size}}", image)
    say(f"image {image}: {int(size) / MiB:.0f} MiB")
    seaweed = SeaweedFS(work / "seaweedfs")
    seaweed.start()
    names = ["filegate-ci-s3", "filegate-ci-local"]
    volume = "filegate-ci-data"
    try:
        seaweed.create_bucket("docker")
        env = {**seaweed.service_env("docker"), "SHUTDOWN_GRACE_SECONDS": "30"}
        url, seconds = run_container(image, names[0], env)
        say(f"{names[0]} answered /healthz {seconds:.1f} s after docker run")
        user = docker("exec", names[0], "id", "-u")
        assert user == "10001", user
        say(f"{names[0]} runs as uid {user}")
        say(f"{names[0]} is healthy ({wait_healthy(names[0]):.0f} s after start-up)")

        data = os.urandom(48 * MiB)
        answer = httpx.put(f"{url}/files/upload/big.bin", content=data, timeout=60)
        assert answer.status_code == 201, answer.text
        big = answer.json()["file_id"]
        small = httpx.put(f"{url}/files/upload/small.txt", content=b"hello", timeout=10).json()
        ranged = httpx.get(f"{url}/files/{quote(big)}/download",
                           headers={"Range": "bytes=1000-1999"}, timeout=30)  # fmt: skip
        assert ranged.status_code == 206 and ranged.content == data[1000:2000]
        archive = httpx.post(
            f"{url}/files/download-zip",
            json=[{"file_id": big}, {"file_id": small["file_id"], "file_name": "s.txt"}],
            timeout=60,
        )
        assert archive.status_code == 200, archive.text
        with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
            assert z.read("big.bin") == data and z.read("s.txt") == b"hello"
        say(
            f"smoke: upload 201 ({big}), range 206 (1000 bytes), zip 200 ({len(archive.content)} bytes, verified)"
        )
        page = httpx.get(f"{url}/console/", timeout=10)
        assert (
            page.status_code == 200
            and "script-src 'self'" in page.headers["content-security-policy"]
        )
        scripts = [part.split('"')[0] for part in page.text.split('src="../')[1:]]
        for script in scripts:  # the package data made it into the image, hashes intact
            assert httpx.get(f"{url}/{script}", timeout=10).status_code == 200, script
        assert httpx.get(f"{url}/docs", timeout=10).status_code == 200
        say(f"console: /console/ 200 with its {len(scripts)} assets, /docs 200")

        # docker stop in the middle of a slow download: it finishes, then the container exits
        out = work / "during-stop.bin"
        download = subprocess.Popen(
            ["curl", "-sS", "-f", "--limit-rate", "8M", "-o", str(out),
             f"{url}/files/{quote(big)}/download"],
        )  # fmt: skip
        time.sleep(1.5)
        stopped: dict[str, float] = {}

        def stop() -> None:
            began = time.monotonic()
            docker("stop", "--time", "30", names[0])
            stopped["seconds"] = time.monotonic() - began

        stopper = threading.Thread(target=stop)
        stopper.start()
        assert download.wait(timeout=60) == 0
        stopper.join(timeout=60)
        whole = hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
        assert whole, "the download was cut by docker stop"
        code = docker("inspect", "--format", "{{.State.ExitCode}}", names[0])
        say(f"graceful stop: the download in flight finished whole (48 MiB), docker stop took "
            f"{stopped['seconds']:.1f} s (grace 30 s), exit code {code}")  # fmt: skip

        # local mode on a named volume: the data volume is writable by uid 10001
        url, seconds = run_container(image, names[1], {}, f"{volume}:/srv/filegate/data")
        stored = httpx.put(f"{url}/files/upload/v.txt", content=b"on the volume", timeout=10)
        assert stored.status_code == 201, stored.text
        key = json.loads(stored.text)["file_id"].split("/", 1)[1]
        listing = docker("exec", names[1], "ls", "-ln", "/srv/filegate/data/files")
        assert key.split("/")[-1] in listing and " 10001 " in listing, listing
        say(f"local mode: the data volume is writable by uid 10001 (started in {seconds:.1f} s)")
        compose_config(image, seaweed, work)
    finally:
        for name in names:
            docker("rm", "--force", name, check=False)
        docker("volume", "rm", "--force", volume, check=False)
        seaweed.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", default="filegate:ci")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="filegate-docker-") as tmp:
        smoke(args.image, Path(tmp))


if __name__ == "__main__":
    main()
