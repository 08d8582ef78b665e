"""Leaving FastDFS, measured: ``filegate-client migrate`` moving files from the FastDFS emulator
to SeaweedFS through filegate in hybrid mode (one worker), with ``--delete-source``.

    uv run python -m bench.migrate [--small 1000] [--big 20] [--big-mib 256] [--concurrency 1,4,16]

For each workload (``--small`` files of 1 MiB, ``--big`` files of ``--big-mib``) and each
concurrency, the files are first stored in FastDFS (``bench.fdfs_direct``, outside the
measurement), then one ``migrate`` run moves them all. Reported: files/s and MiB/s; the CPU
seconds per GiB moved of filegate (user + system from /proc, around the run) and of the client
(``wait4``'s rusage); the peak RSS of both. The emulator and SeaweedFS run in their own
processes on the same 2 cores, so the rates are bounded by all three (docs/fastdfs.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import fdfs_direct
from bench.common import (
    cpu_seconds,
    fastdfs_emulator,
    filegate,
    peak_mib,
    random_file,
    reset_peak,
    seaweedfs,
)

MiB = 1024 * 1024
GiB = 1024 * MiB


def _client(args: list[str], env: dict[str, str]) -> tuple[float, float, float, str]:
    """Run filegate-client; (seconds, CPU seconds, peak RSS MiB, last stdout line)."""
    command = [str(Path(sys.executable).parent / "filegate-client"), *args]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
    assert process.stdout is not None
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stdout.close()
    if process.returncode != 0:
        raise RuntimeError(f"migrate exited {process.returncode}: {out[-500:]!r}")
    return (
        seconds,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        out.decode().splitlines()[-1],
    )


def run(args: argparse.Namespace) -> None:
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    workloads = [("1 MiB", args.small, 1), (f"{args.big_mib} MiB", args.big, args.big_mib)]
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        work = Path(scratch)
        with (
            seaweedfs(work / "seaweedfs", "migrate") as seaweed,
            fastdfs_emulator(work / "fastdfs") as tracker,
        ):
            env = {
                **seaweed.service_env("migrate"),
                "STORAGE_MODE": "hybrid",
                "FASTDFS_TRACKER_SERVERS": tracker,
                "LOG_LEVEL": "warning",
            }
            host, _, port = tracker.partition(":")
            with filegate(env, work) as service:
                assert service.process is not None
                pid = service.process.pid
                client_env = {**os.environ, "FILEGATE_URL": service.url}
                print("| files | concurrency | files/s | MiB/s | filegate CPU-s/GiB | "
                      "client CPU-s/GiB | filegate peak RSS | client peak RSS |")  # fmt: skip
                print("|---|---|---|---|---|---|---|---|")
                for label, count, mib in workloads:
                    source = random_file(work / f"source-{mib}.bin", mib)
                    for concurrency in concurrencies:
                        ids = [fdfs_direct.upload((host, int(port)), source) for _ in range(count)]
                        id_list = work / f"ids-{mib}-{concurrency}.txt"
                        id_list.write_text("\n".join(ids) + "\n")
                        folder = f"run-{mib}-{concurrency}"
                        reset_peak(pid)
                        before = cpu_seconds(pid)
                        seconds, client_cpu, client_peak, last = _client(
                            ["migrate", "--ids", str(id_list), "--folder", folder,
                             "--concurrency", str(concurrency), "--delete-source", "--json"],
                            client_env,
                        )  # fmt: skip
                        server_cpu = cpu_seconds(pid) - before
                        summary = json.loads(last)
                        assert summary["not_moved"] == 0, summary
                        moved = count * mib * MiB
                        print(
                            f"| {count} x {label} | {concurrency} | {count / seconds:.1f} | "
                            f"{moved / MiB / seconds:.0f} | {server_cpu / (moved / GiB):.2f} | "
                            f"{client_cpu / (moved / GiB):.2f} | {peak_mib(pid):.0f} MiB | "
                            f"{client_peak:.0f} MiB |",
                            flush=True,
                        )
                        httpx.post(f"{service.url}/files/delete-prefix", timeout=600,
                                   json={"prefix": f"s3:migrate/{folder}/"})  # fmt: skip
                    source.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--big", type=int, default=20)
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--dir", default=None, help="where the stores keep their files")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
