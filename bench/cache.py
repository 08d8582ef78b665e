"""The read-through cache, the memory backend and memory per process, measured in one run.

    uv run python -m bench.cache [--runs 3] [--seconds 10] [--files 10000] [--memory-mib 1024]

Starts SeaweedFS, the FastDFS emulator, nginx (Debian's package, serving the same small file
from disk: the static-file ceiling) and filegate in S3 and FastDFS mode with and without
``CACHE_DIR``, and in memory mode; every server on loopback, one worker each, API keys and the
JSON request log on, as in production.

- **Hot 4 KiB GET**: ``wrk`` at 32 connections on one file; req/s and the server's CPU-ms per
  request (user + system from /proc around the phase).
- **Working set**: ``--files`` files of 4 to 256 KiB (sizes log-uniform), requested in a Zipf
  order (s = 1.1) by ``wrk``; the cache holds 10 % of the set's bytes. Hit ratio (from
  ``/metrics``), CPU-ms per request (filegate's, and SeaweedFS's), p99 latency, with and
  without the cache.
- **Memory backend**: RSS holding ``--memory-mib`` of files, and the CPU-s/GiB of downloading it.
- **Memory per process**: idle RSS in S3 mode (after one upload and one download of 4 KiB), and
  the peak RSS of a 256 MiB upload and download.

Prints the medians (and ranges) and writes them to ``bench/results-cache.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.common import (
    GiB,
    MiB,
    cpu_seconds,
    curl,
    fastdfs_emulator,
    peak_mib,
    random_file,
    reset_peak,
    rss_mib,
    seaweedfs,
)
from tests.servers import HOST, Service, free_port

BUCKET = "bench"
KEY = "bench-key-0123456789abcdef0123"
AUTH = f"X-API-Key: {KEY}"


def wrk(url: str, seconds: int, script: Path | None = None, auth: bool = True) -> dict[str, float]:
    command = ["wrk", "-t2", "-c32", f"-d{seconds}s", "--timeout", "10s", "--latency"]
    if auth:
        command += ["-H", AUTH]
    if script is not None:
        command += ["-s", str(script)]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failures against {url}:\n{out}")
    total = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert total and rps and p99, out
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return {
        "requests": int(total.group(1)),
        "rps": float(rps.group(1)),
        "p99": float(p99.group(1)) * unit,
    }


@contextmanager
def nginx(root: Path, work: Path) -> Iterator[str]:
    """nginx serving ``root`` on a loopback port, one worker (as filegate has one)."""
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(
        f"worker_processes 1;\npid {work}/nginx.pid;\nerror_log {work}/nginx-error.log;\n"
        "events { worker_connections 1024; }\n"
        "http {\n  access_log off;\n  sendfile on;\n"
        f"  server {{ listen {HOST}:{port}; root {root}; }}\n}}\n"
    )
    process = subprocess.Popen(["/usr/sbin/nginx", "-c", str(conf), "-g", "daemon off;"])
    try:
        for _ in range(100):
            try:
                curl("-o", "/dev/null", f"http://{HOST}:{port}/")
                break
            except Exception:
                time.sleep(0.05)
        yield f"http://{HOST}:{port}"
    finally:
        process.terminate()
        process.wait()


def metric(service: Service, name: str) -> float:
    _, body = curl("-H", AUTH, f"{service.url}/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Results:
    def __init__(self) -> None:
        self.values: dict[str, list[float]] = defaultdict(list)

    def add(self, name: str, value: float) -> None:
        self.values[name].append(value)

    def measure(self, name: str, pid: int, url: str, seconds: int, script: Path | None = None,
                auth: bool = True) -> dict[str, float]:  # fmt: skip
        before = cpu_seconds(pid)
        load = wrk(url, seconds, script, auth)
        self.add(f"{name} cpu-ms", (cpu_seconds(pid) - before) * 1000 / load["requests"])
        self.add(f"{name} req/s", load["rps"])
        self.add(f"{name} p99 ms", load["p99"])
        return load

    def table(self) -> str:
        lines = ["| measurement | median | range |", "|---|---|---|"]
        for name, values in self.values.items():
            median = statistics.median(values)
            spread = f"{min(values):.4g} to {max(values):.4g}" if len(values) > 1 else ""
            lines.append(f"| {name} | {median:.4g} | {spread} |")
        return "\n".join(lines) + "\n"


def zipf_script(work: Path, paths: list[str], count: int = 200_000) -> Path:
    """A wrk script that requests ``paths`` in a Zipf order (rank 1 most often, s = 1.1)."""
    weights = [1 / (rank**1.1) for rank in range(1, len(paths) + 1)]
    order = random.Random(7).choices(range(len(paths)), weights=weights, k=count)
    script = work / "zipf.lua"
    quoted = ",".join(json.dumps(p) for p in paths)
    script.write_text(
        f"local paths = {{{quoted}}}\n"
        f"local order = {{{','.join(str(i + 1) for i in order)}}}\n"
        "local i = 0\n"
        "function setup(thread) thread:set('start', math.random(1, #order)) end\n"
        "function init(args) i = start end\n"
        f'function request() i = i % #order + 1\n  return wrk.format("GET", paths[order[i]], '
        f'{{["X-API-Key"] = "{KEY}"}}) end\n'
    )
    return script


def hot(results: Results, services: dict[str, Service], args: argparse.Namespace,
        small: Path) -> None:  # fmt: skip
    for name, service in services.items():
        assert service.process is not None
        _, body = curl("-H", AUTH, "-T", str(small), f"{service.url}/files/upload/small.bin")
        url = f"{service.url}/files/{quote(json.loads(body)['file_id'])}/download"
        curl("-H", AUTH, "-o", "/dev/null", url)  # the first GET fills the cache
        results.measure(f"hot 4 KiB GET {name}", service.process.pid, url, args.seconds)


def working_set(s3: Any, files: int, work: Path) -> tuple[Path, int]:
    """``files`` objects of 4 to 256 KiB straight into the bucket; the wrk script that requests
    them in a Zipf order, and their total size."""
    rng = random.Random(11)
    paths, total = [], 0
    for i in range(files):
        size = int(math.exp(rng.uniform(math.log(4 * 1024), math.log(256 * 1024))))
        key = f"ws/{i:016x}_f{i}.bin"
        body = os.urandom(
            size
        )  # as filegate stores it: with its CRC-32 (app/storage/s3/metadata.py)
        crc = {"filegate-crc32": f"{zlib.crc32(body):08x}", "filegate-name": f"f{i}.bin"}
        s3.put_object(Bucket=BUCKET, Key=key, Body=body, Metadata=crc)
        paths.append(f"/files/{quote(f's3:{BUCKET}/{key}')}/download")
        total += size
    rng.shuffle(paths)  # popularity is not key order
    return zipf_script(work, paths), total


def zipf(
    results: Results, name: str, service: Service, script: Path, seconds: int, storage: int
) -> None:
    """One Zipf phase; also the storage's (SeaweedFS's) CPU per request, which the cache saves."""
    assert service.process is not None
    hits, misses = metric(service, "filegate_cache_hits"), metric(service, "filegate_cache_misses")
    before = cpu_seconds(storage)
    load = results.measure(f"zipf {name}", service.process.pid, service.url, seconds, script)
    results.add(
        f"zipf {name} SeaweedFS cpu-ms", (cpu_seconds(storage) - before) * 1000 / load["requests"]
    )
    hits = metric(service, "filegate_cache_hits") - hits
    misses = metric(service, "filegate_cache_misses") - misses
    if hits + misses:
        results.add(f"zipf {name} hit ratio", hits / (hits + misses))


def memory(results: Results, service: Service, big: Path, mib: int) -> None:
    assert service.process is not None
    pid = service.process.pid
    before = rss_mib(pid)
    _, body = curl("-H", AUTH, "-T", str(big), f"{service.url}/files/upload/big.bin")
    results.add("memory backend RSS holding the file MiB", rss_mib(pid))
    results.add("memory backend RSS before MiB", before)
    url = f"{service.url}/files/{quote(json.loads(body)['file_id'])}/download"
    cpu = cpu_seconds(pid)
    seconds, _ = curl("-H", AUTH, "-o", "/dev/null", url)
    results.add("memory backend download CPU-s/GiB", (cpu_seconds(pid) - cpu) / (mib * MiB / GiB))
    results.add("memory backend download MiB/s", mib / seconds)
    curl("-H", AUTH, "-X", "DELETE", f"{service.url}/files/{quote(json.loads(body)['file_id'])}")


def per_process(results: Results, env: dict[str, str], work: Path, medium: Path) -> None:
    service = Service(env)
    service.start(work)
    try:
        assert service.process is not None
        pid = service.process.pid
        results.add("S3 mode RSS at start MiB", rss_mib(pid))
        small = work / "small.bin"
        _, body = curl("-H", AUTH, "-T", str(small), f"{service.url}/files/upload/s.bin")
        curl("-H", AUTH, "-o", "/dev/null",
             f"{service.url}/files/{quote(json.loads(body)['file_id'])}/download")  # fmt: skip
        results.add("S3 mode RSS idle after 4 KiB up + down MiB", rss_mib(pid))
        reset_peak(pid)
        _, body = curl("-H", AUTH, "-T", str(medium), f"{service.url}/files/upload/m.bin")
        curl("-H", AUTH, "-o", "/dev/null",
             f"{service.url}/files/{quote(json.loads(body)['file_id'])}/download")  # fmt: skip
        results.add("S3 mode peak RSS, 256 MiB up + down MiB", peak_mib(pid))
    finally:
        service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--memory-mib", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path("bench/results-cache.md"))
    args = parser.parse_args()
    results = Results()
    with tempfile.TemporaryDirectory(prefix="filegate-cache-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's worker (www-data) reads the static file below it
        small = work / "small.bin"
        small.write_bytes(os.urandom(4096))
        static = work / "static"
        static.mkdir()
        (static / "small.bin").write_bytes(small.read_bytes())
        big = random_file(work / "big.bin", args.memory_mib)
        medium = random_file(work / "medium.bin", 256)
        keys = json.dumps([{"name": "bench", "key": KEY, "scopes": ["read", "write", "delete"]}])
        common = {"API_KEYS": keys, "LOG_FORMAT": "json"}
        with (
            fastdfs_emulator(work / "fastdfs") as tracker,
            seaweedfs(work / "seaweedfs", BUCKET) as seaweed,
            nginx(static, work) as ceiling,
        ):
            s3_env = {**seaweed.service_env(BUCKET), **common}
            fdfs_env = {"STORAGE_MODE": "fastdfs", "FASTDFS_TRACKER_SERVERS": tracker, **common}
            zipf_cached = Service({**s3_env, "CACHE_DIR": str(work / "c3")})
            services = {
                "S3": Service(s3_env),
                "S3 cached": Service({**s3_env, "CACHE_DIR": str(work / "c1")}),
                "FastDFS": Service(fdfs_env),
                "FastDFS cached": Service({**fdfs_env, "CACHE_DIR": str(work / "c2")}),
                "memory": Service({"STORAGE_MODE": "memory", "MEMORY_MAX_SIZE": "4GiB", **common}),
            }
            try:
                for service in services.values():
                    service.start(work)
                s3 = seaweed.admin()
                for run in range(args.runs):
                    print(f"run {run + 1}/{args.runs}: hot", file=sys.stderr, flush=True)
                    hot(results, services, args, small)
                    results.measure("hot 4 KiB GET nginx", _nginx_pid(work), f"{ceiling}/small.bin",
                                    args.seconds, auth=False)  # fmt: skip
                print("working set", file=sys.stderr, flush=True)
                script, total = working_set(s3, args.files, work)
                results.add("working set MiB", total / MiB)
                zipf_cached.env["CACHE_MAX_SIZE"] = str(total // 10)
                zipf_cached.start(work)
                assert seaweed.process is not None
                for _ in range(args.runs):
                    zipf(results, "no cache", services["S3"], script, args.seconds,
                         seaweed.process.pid)  # fmt: skip
                    zipf(results, "cache 10 %", zipf_cached, script, args.seconds,
                         seaweed.process.pid)  # fmt: skip
                print("memory", file=sys.stderr, flush=True)
                memory(results, services["memory"], big, args.memory_mib)
            finally:
                for service in [*services.values(), zipf_cached]:
                    service.stop()  # a service never started stops as a no-op
            print("per process", file=sys.stderr, flush=True)
            for _ in range(args.runs):
                per_process(results, s3_env, work, medium)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = f"# filegate cache, memory backend and RSS ({stamp})\n\n{results.table()}"
    print(report)
    args.out.write_text(report)


def _nginx_pid(work: Path) -> int:
    return int((work / "nginx.pid").read_text().split()[0])


if __name__ == "__main__":
    main()
