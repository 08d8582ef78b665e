"""Folders at scale: list 10,000 objects, delete a 10,000-object folder, and copy 1 GiB across
backends next to a plain download of it; time, filegate's CPU and peak RSS for each, 1 worker.

    uv run python -m bench.folders [--objects 10000] [--size-mib 1024]

S3 mode (SeaweedFS) and local mode list and delete; the copy runs in hybrid mode (a legacy file
in the FastDFS emulator moved to S3) and, in local and S3 mode, as a plain download beside it.
Objects are put straight into the storage, so only the measured operation goes through filegate.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    GiB,
    cpu_seconds,
    curl,
    filegate,
    peak_mib,
    random_file,
    reset_peak,
    seaweedfs,
)
from tests.fdfs_emulator import FastDFS
from tests.servers import SeaweedFS, Service

BUCKET = "folders"


def arrange_s3(seaweed: SeaweedFS, count: int) -> None:
    s3: Any = seaweed.admin()
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda n: s3.put_object(Bucket=BUCKET, Key=f"many/{n % 10}/{n:06d}.txt", Body=b"x"),
                range(count),
            )
        )


def arrange_local(root: Path, count: int) -> None:
    for n in range(count):
        path = root / "files" / "many" / str(n % 10) / f"{n:06d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def measured(service: Service, work: Callable[[], Any]) -> tuple[float, float, float, Any]:
    assert service.process is not None
    pid = service.process.pid
    reset_peak(pid)
    cpu = cpu_seconds(pid)
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, cpu_seconds(pid) - cpu, peak_mib(pid), result


def list_all(service: Service, prefix: str) -> int:
    count, cursor = 0, None
    with httpx.Client(base_url=service.url, timeout=120) as client:
        while True:
            params: dict[str, str | int] = {"prefix": prefix, "delimiter": "", "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/files", params=params).json()
            count += len(page["files"])
            cursor = page["next_cursor"]
            if cursor is None:
                return count


def delete_folder(service: Service, prefix: str) -> int:
    answer = httpx.post(f"{service.url}/files/delete-prefix", json={"prefix": prefix}, timeout=600)
    answer.raise_for_status()
    count: int = answer.json()["file_count"]
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="filegate-folders-") as tmp:
        work = Path(tmp)
        fastdfs = FastDFS(work / "fastdfs")
        fastdfs.serve_in_thread()
        try:
            with seaweedfs(work / "seaweedfs", BUCKET) as seaweed:
                run_all(args, work, seaweed, fastdfs)
        finally:
            fastdfs.shutdown()


def run_all(args: argparse.Namespace, work: Path, seaweed: SeaweedFS, fastdfs: FastDFS) -> None:
    print(f"{args.objects} objects; {args.size_mib} MiB copied; 1 worker\n")
    print("| mode | operation | seconds | CPU-s | peak RSS MiB | result |")
    print("|---|---|---|---|---|---|")
    local_root = work / "data"
    arrange_s3(seaweed, args.objects)
    arrange_local(local_root, args.objects)
    for mode, env, prefix in (
        ("s3", seaweed.service_env(BUCKET), f"s3:{BUCKET}/many/"),
        ("local", {"LOCAL_ROOT": str(local_root)}, "local:files/many/"),
    ):
        with filegate(env, work) as service:
            for label, run in (
                ("list everything (pages of 1000)", list_all),
                ("delete the folder", delete_folder),
            ):
                seconds, cpu, peak, result = measured(
                    service, functools.partial(run, service, prefix)
                )
                print(f"| {mode} | {label} | {seconds:.2f} | {cpu:.2f} | {peak:.0f} | "
                      f"{result} files |", flush=True)  # fmt: skip
    source = random_file(work / "big.bin", args.size_mib)
    size_gib = source.stat().st_size / GiB
    hybrid = {
        **seaweed.service_env(BUCKET),
        "STORAGE_MODE": "hybrid",
        "FASTDFS_TRACKER_SERVERS": fastdfs.tracker_address,
    }
    with filegate(hybrid, work) as service:
        legacy_id = fastdfs_upload(fastdfs, source)

        def move() -> str:
            answer = httpx.post(
                f"{service.url}/files/{legacy_id}/copy",
                json={"delete_source": True},
                timeout=1800,
            )
            answer.raise_for_status()
            file_id: str = answer.json()["file_id"]
            return file_id

        seconds, cpu, peak, moved = measured(service, move)
        print(f"| hybrid | move {args.size_mib} MiB FastDFS → S3 | {seconds:.2f} | "
              f"{cpu / size_gib:.2f} per GiB | {peak:.0f} | "
              f"{args.size_mib / seconds:.0f} MiB/s |", flush=True)  # fmt: skip
        url = f"{service.url}/files/{moved}/download"
        seconds, cpu, peak, _ = measured(service, functools.partial(curl, "-o", os.devnull, url))
        print(f"| hybrid | download it from S3 | {seconds:.2f} | "
              f"{cpu / size_gib:.2f} per GiB | {peak:.0f} | "
              f"{args.size_mib / seconds:.0f} MiB/s |", flush=True)  # fmt: skip


def fastdfs_upload(fastdfs: FastDFS, source: Path) -> str:
    """A legacy file, stored the way the seed library stored them."""
    import asyncio

    from tests.test_fastdfs import legacy_upload

    return asyncio.run(legacy_upload(fastdfs, source.read_bytes(), "big.bin"))


if __name__ == "__main__":
    main()
