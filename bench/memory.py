"""Peak memory of filegate while it moves one large file: local disk, SeaweedFS, FastDFS.

    uv run python -m bench.memory [--size-mib 1024] [--zip-files 100 --zip-mib 20]

Starts SeaweedFS, the FastDFS emulator (in this process) and filegate (as real processes, on
loopback), uploads a file of random bytes
with ``curl -T`` and ``curl -F``, downloads it with ``curl``, and prints the service's peak RSS
(VmHWM, reset between phases through /proc/<pid>/clear_refs) and the throughput of each phase.
Then it zips ``--zip-files`` files of ``--zip-mib`` MiB in one request, next to downloading the
same files one after another.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from bench.common import MiB, curl, peak_mib, random_file, reset_peak
from tests.fdfs_emulator import FastDFS
from tests.servers import ADMIN, SeaweedFS, Service


def _measure(service: Service, source: Path, size: int) -> list[tuple[str, float, float]]:
    rows = []
    for label, args in (
        ("upload (curl -T)", ["-T", str(source), f"{service.url}/files/upload/big.bin"]),
        ("upload (curl -F)", ["-F", f"file=@{source}", f"{service.url}/files/upload"]),
    ):
        reset_peak(service)
        seconds, body = curl(*args)
        rows.append((label, seconds, peak_mib(service)))
        file_id = json.loads(body)["file_id"]
    reset_peak(service)
    url = f"{service.url}/files/{quote(file_id)}/download"
    seconds, _ = curl("-o", "/dev/null", url)
    rows.append(("download", seconds, peak_mib(service)))
    return [(label, size / MiB / seconds, peak) for label, seconds, peak in rows]


def _measure_zip(
    service: Service, work: Path, count: int, mib: int
) -> list[tuple[str, float, float]]:
    part = random_file(work / "part.bin", mib)
    ids = []
    for i in range(count):
        _, body = curl("-T", str(part), f"{service.url}/files/upload/part{i}.bin")
        ids.append(json.loads(body)["file_id"])
    total = count * mib
    reset_peak(service)
    start = time.perf_counter()
    for file_id in ids:
        curl("-o", "/dev/null", f"{service.url}/files/{quote(file_id)}/download")
    one_by_one = time.perf_counter() - start
    rows = [(f"{count} downloads one by one", total / one_by_one, peak_mib(service))]
    reset_peak(service)
    request = json.dumps([{"file_id": i} for i in ids])
    seconds, _ = curl(
        "-H", "Content-Type: application/json", "--data-binary", request,
        "-o", "/dev/null", f"{service.url}/files/download-zip",
    )  # fmt: skip
    rows.append((f"zip of {count} x {mib} MiB", total / seconds, peak_mib(service)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--zip-files", type=int, default=100)
    parser.add_argument("--zip-mib", type=int, default=20)
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="filegate-bench-") as tmp:
        work = Path(tmp)
        source = random_file(work / "source.bin", args.size_mib)
        seaweed = SeaweedFS(work / "seaweedfs")
        seaweed.start()
        fastdfs = FastDFS(work / "fastdfs")
        fastdfs.serve_in_thread()
        try:
            import boto3

            boto3.client(
                "s3",
                endpoint_url=seaweed.endpoint,
                aws_access_key_id=ADMIN[0],
                aws_secret_access_key=ADMIN[1],
                region_name="us-east-1",
            ).create_bucket(Bucket="bench")
            services = {
                "local": Service({"LOCAL_ROOT": str(work / "data")}),
                "s3": Service(seaweed.service_env("bench")),
                "fastdfs": Service(
                    {"STORAGE_MODE": "fastdfs", "FASTDFS_TRACKER_SERVERS": fastdfs.tracker_address}
                ),
            }
            print(f"| backend | phase ({args.size_mib} MiB) | MiB/s | peak RSS MiB |")
            print("|---|---|---|---|")
            for name, service in services.items():
                service.start(work)
                try:
                    idle = peak_mib(service)
                    print(f"| {name} | idle after start | | {idle:.0f} |")
                    for label, rate, peak in _measure(service, source, size):
                        print(f"| {name} | {label} | {rate:.0f} | {peak:.0f} |")
                    for label, rate, peak in _measure_zip(
                        service, work, args.zip_files, args.zip_mib
                    ):
                        print(f"| {name} | {label} | {rate:.0f} | {peak:.0f} |")
                finally:
                    service.stop()
        finally:
            fastdfs.shutdown()
            seaweed.stop()


if __name__ == "__main__":
    main()
