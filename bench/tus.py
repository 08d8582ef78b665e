"""A large upload through tus beside a plain ``curl -T`` of the same file, in S3 mode (SeaweedFS),
local mode and FastDFS mode (the emulator, in a process of its own), 1 worker: throughput,
filegate's CPU-seconds per GiB and its peak RSS.

    uv run python -m bench.tus [--size-mib 1024]

Each transfer gets a fresh filegate process, so its peak RSS is the transfer's own. tus runs
twice: one PATCH of the whole file (curl), and tuspy in 32 MiB chunks (a PATCH each). Every
stored file is checked by size and SHA-256.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
from tusclient import client as tus_client

from bench.common import (
    GiB,
    MiB,
    cpu_seconds,
    curl,
    fastdfs_emulator,
    filegate,
    peak_mib,
    random_file,
    seaweedfs,
)
from tests.servers import Service

BUCKET = "tus-bench"
TUS = ["-H", "Tus-Resumable: 1.0.0"]


def _created(service: Service, size: int) -> str:
    name = base64.b64encode(b"bench.bin").decode()
    answer = httpx.post(
        f"{service.url}/files/tus",
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(size),
            "Upload-Metadata": f"filename {name}",
        },
    )
    answer.raise_for_status()
    return answer.headers["location"]


def plain(service: Service, source: Path) -> str:
    _, body = curl("-T", str(source), f"{service.url}/files/upload/bench.bin")
    return str(httpx.Response(200, content=body).json()["file_id"])


def one_patch(service: Service, source: Path) -> str:
    url = _created(service, source.stat().st_size)
    curl(
        "-X", "PATCH", "-T", str(source), *TUS, "-H", "Upload-Offset: 0",
        "-H", "Content-Type: application/offset+octet-stream", url,
    )  # fmt: skip
    return unquote(httpx.head(url, headers={"Tus-Resumable": "1.0.0"}).headers["file-id"])


def tuspy(service: Service, source: Path) -> str:
    client = tus_client.TusClient(f"{service.url}/files/tus")
    with source.open("rb") as stream:
        uploader = client.uploader(
            file_stream=stream, chunk_size=32 * MiB, metadata={"filename": "bench.bin"}
        )
        uploader.upload()
        url = uploader.url
    assert url is not None
    return unquote(httpx.head(url, headers={"Tus-Resumable": "1.0.0"}).headers["file-id"])


def measure(
    env: dict[str, str], work: Path, source: Path, digest: str, how: Callable[[Service, Path], str]
) -> tuple[float, float, float]:
    """MiB/s, CPU-s/GiB and peak RSS MiB of one upload on a fresh filegate."""
    with filegate(env, work) as service:
        assert service.process is not None
        pid = service.process.pid
        cpu = cpu_seconds(pid)
        start = time.perf_counter()
        file_id = how(service, source)
        seconds = time.perf_counter() - start
        used = cpu_seconds(pid) - cpu
        peak = peak_mib(pid)
        check = hashlib.sha256()
        with httpx.stream("GET", f"{service.url}/files/{quote(file_id)}/download") as answer:
            for chunk in answer.iter_bytes(MiB):
                check.update(chunk)
        assert check.hexdigest() == digest, f"{how.__name__}: the stored file differs"
    size = source.stat().st_size
    return size / MiB / seconds, used / (size / GiB), peak


def fastdfs_env(tracker: str, work: Path) -> dict[str, str]:
    return {
        "STORAGE_MODE": "fastdfs",
        "FASTDFS_TRACKER_SERVERS": tracker,
        "LOCAL_ROOT": str(work / "index"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="filegate-tus-bench-") as tmp:
        work = Path(tmp)
        source = random_file(work / "source.bin", args.size_mib)
        digest = hashlib.file_digest(source.open("rb"), "sha256").hexdigest()
        with (
            fastdfs_emulator(work / "fastdfs") as tracker,
            seaweedfs(work / "seaweedfs", BUCKET) as seaweed,
        ):
            print(f"{args.size_mib} MiB, 1 worker, a fresh filegate per upload\n")
            print("| mode | upload | MiB/s | CPU-s/GiB | peak RSS MiB |")
            print("|---|---|---|---|---|")
            for mode, env in (
                ("s3", seaweed.service_env(BUCKET)),
                ("local", {"LOCAL_ROOT": str(work / "data")}),
                ("fastdfs", fastdfs_env(tracker, work)),
            ):
                for label, how in (
                    ("curl -T (plain)", plain),
                    ("tus, one PATCH (curl)", one_patch),
                    ("tus, tuspy 32 MiB chunks", tuspy),
                ):
                    rate, cpu, peak = measure(env, work, source, digest, how)
                    print(f"| {mode} | {label} | {rate:.0f} | {cpu:.2f} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
