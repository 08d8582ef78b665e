"""Peak RSS of filegate under concurrent large transfers: 1, 8, 32 and 64 uploads at once, then as
many downloads, in S3 mode (SeaweedFS) and local mode, 1 worker each.

    uv run python -m bench.load [--size-mib 100] [--levels 1,8,32,64]

Each phase starts from a fresh peak (``/proc/<pid>/clear_refs``), runs ``curl`` processes at once,
and reports the phase's peak RSS, the RSS after it, failures and the aggregate MiB/s. Every
download's size is checked, and one download per phase byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from bench.common import MiB, filegate, peak_mib, random_file, reset_peak, rss_mib, seaweedfs
from tests.servers import Service

BUCKET = "load"


def _run_all(commands: list[list[str]]) -> tuple[float, list[subprocess.CompletedProcess[bytes]]]:
    start = time.perf_counter()
    running = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in commands
    ]
    done = []
    for process, command in zip(running, commands, strict=True):
        out, err = process.communicate(timeout=1800)
        done.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    return time.perf_counter() - start, done


def phase(service: Service, source: Path, count: int, digest: str) -> list[str]:
    assert service.process is not None
    pid = service.process.pid
    size = source.stat().st_size
    rows = []
    reset_peak(pid)
    seconds, done = _run_all(
        [["curl", "-sS", "--fail-with-body", "-T", str(source),
          f"{service.url}/files/upload/load-{count}-{n}.bin"] for n in range(count)]
    )  # fmt: skip
    ids = [
        d.stdout.split(b'"file_id":"')[1].split(b'"')[0].decode() for d in done if not d.returncode
    ]
    failed = count - len(ids)
    rows.append(
        f"| {count} | upload | {peak_mib(pid):.0f} | {rss_mib(pid):.0f} | {failed} "
        f"| {count * size / MiB / seconds:.0f} |"
    )
    reset_peak(pid)
    urls = [f"{service.url}/files/{quote(file_id)}/download" for file_id in ids]
    seconds, done = _run_all(
        [["curl", "-sS", "--fail-with-body", "-o", "/dev/null", "-w", "%{size_download}", url]
         for url in urls]
    )  # fmt: skip
    failed = sum(1 for d in done if d.returncode or int(d.stdout) != size)
    if urls:
        sample = subprocess.run(["curl", "-sS", "-f", urls[-1]], capture_output=True, check=True)
        failed += hashlib.sha256(sample.stdout).hexdigest() != digest
    rows.append(
        f"| {count} | download | {peak_mib(pid):.0f} | {rss_mib(pid):.0f} | {failed} "
        f"| {len(urls) * size / MiB / max(seconds, 1e-9):.0f} |"
    )
    for file_id in ids:
        subprocess.run(["curl", "-sS", "-X", "DELETE", f"{service.url}/files/{quote(file_id)}"],
                       capture_output=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--levels", default="1,8,32,64")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="filegate-load-") as tmp:
        work = Path(tmp)
        source = random_file(work / "source.bin", args.size_mib)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        with seaweedfs(work / "seaweedfs", BUCKET) as seaweed:
            print(f"{args.size_mib} MiB per transfer, 1 worker\n")
            for name, env in (
                ("s3", seaweed.service_env(BUCKET)),
                ("local", {"LOCAL_ROOT": str(work / "data")}),
            ):
                with filegate(env, work) as service:
                    assert service.process is not None
                    print(f"## {name} (idle RSS {rss_mib(service.process.pid):.0f} MiB)\n")
                    print("| at once | transfer | peak RSS MiB | RSS after MiB | failed | MiB/s |")
                    print("|---|---|---|---|---|---|")
                    for count in levels:
                        for row in phase(service, source, count, digest):
                            print(row, flush=True)
                print()


if __name__ == "__main__":
    main()
