"""filegate in S3 mode side by side with direct S3 access through presigned URLs.

    uv run python -m bench.compare [--runs 3] [--size-mib 1024] [--zip-files 32 --zip-mib 16]
                                   [--small-kib 4 --connections 32 --seconds 10] [--workers 2]

Starts SeaweedFS and filegate (S3 mode, one worker) on loopback and measures, in each run, with
the same client program on both sides:

- a large upload and download (``curl -T`` / ``curl -o``): filegate's routes against presigned
  PUT/GET URLs;
- a zip of N files x M MiB in one request against ``curl`` reading the same files directly one
  after another (one curl process, one connection, as a client would);
- small files: upload and download requests per second and p99 latency at 32 connections with
  ``wrk`` (Debian's ``wrk``), PUT/GET on filegate against PUT/GET on presigned URLs; with
  ``--workers N`` the small-file phases are measured again with N workers;
- filegate's peak RSS in each phase (VmHWM, reset through /proc/<pid>/clear_refs; the largest
  worker when there are several).

Prints a markdown table of the medians over the runs, with the ratios filegate / direct, and
writes it with a line describing the machine to ``bench/results.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import boto3
from botocore.config import Config

from bench.common import MiB, curl, peak_mib, random_file, reset_peak
from tests.servers import ADMIN, SeaweedFS, Service, weed_binary

BUCKET = "bench"


@dataclass(frozen=True)
class Load:
    rps: float
    p99_ms: float


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk(url: str, seconds: int, connections: int, script: Path | None) -> Load:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    if script is not None:
        command += ["-s", str(script)]
    done = subprocess.run([*command, url], capture_output=True, text=True, check=True)
    out = done.stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failures against {url}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return Load(rps, float(value) * _UNITS[unit])


class Bench:
    def __init__(self, work: Path, seaweed: SeaweedFS, args: argparse.Namespace) -> None:
        self.work = work
        self.args = args
        self.s3 = boto3.client(
            "s3",
            endpoint_url=seaweed.endpoint,
            aws_access_key_id=ADMIN[0],
            aws_secret_access_key=ADMIN[1],
            region_name="us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )
        self.results: dict[str, list[float]] = defaultdict(list)

    def presign(self, method: str, key: str) -> str:
        url: str = self.s3.generate_presigned_url(
            method, Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=3600
        )
        return url

    def record(self, name: str, value: float) -> None:
        self.results[name].append(value)

    def phase[T](self, service: Service, name: str, run: Callable[[], T]) -> T:
        """``run`` with filegate's peak RSS recorded as ``<name> rss``."""
        reset_peak(service)
        value = run()
        self.record(f"{name} rss", peak_mib(service))
        return value

    def large(self, service: Service, source: Path) -> None:
        mib = source.stat().st_size / MiB
        direct_put = self.presign("put_object", "direct-big.bin")
        seconds, _ = curl("-T", str(source), "-o", "/dev/null", direct_put)
        self.record("large upload direct", mib / seconds)

        upload_url = f"{service.url}/files/upload/big.bin"
        seconds, body = self.phase(
            service, "large upload", lambda: curl("-T", str(source), upload_url)
        )
        self.record("large upload filegate", mib / seconds)
        big_id = json.loads(body)["file_id"]
        seconds, _ = curl("-o", "/dev/null", self.presign("get_object", "direct-big.bin"))
        self.record("large download direct", mib / seconds)

        def download() -> float:
            url = f"{service.url}/files/{quote(big_id)}/download"
            return mib / curl("-o", "/dev/null", url)[0]

        self.record("large download filegate", self.phase(service, "large download", download))
        self.s3.delete_object(Bucket=BUCKET, Key="direct-big.bin")
        self.s3.delete_object(Bucket=BUCKET, Key=big_id.split("/", 1)[1])

    def prepare_zip(self, service: Service) -> None:
        part = random_file(self.work / "part.bin", self.args.zip_mib)
        self.zip_ids = [service.upload(part, f"part{i}.bin") for i in range(self.args.zip_files)]

    def zip(self, service: Service) -> None:
        total: int = self.args.zip_files * self.args.zip_mib
        urls = [self.presign("get_object", fid.split("/", 1)[1]) for fid in self.zip_ids]
        sequential: list[str] = []
        for url in urls:
            sequential += ["-o", "/dev/null", url]
        self.record("zip direct", total / curl(*sequential)[0])
        request = json.dumps([{"file_id": fid} for fid in self.zip_ids])

        def zipped() -> float:
            seconds, _ = curl(
                "-H", "Content-Type: application/json", "--data-binary", request,
                "-o", "/dev/null", f"{service.url}/files/download-zip",
            )  # fmt: skip
            return total / seconds

        self.record("zip filegate", self.phase(service, "zip", zipped))

    def small(self, service: Service, label: str) -> None:
        a = self.args
        body = self.work / "small.lua"
        body.write_text(
            f'wrk.method = "PUT"\nwrk.body = string.rep("x", {a.small_kib * 1024})\n'
            'wrk.headers["Content-Type"] = "application/octet-stream"\n'
        )
        self.s3.put_object(Bucket=BUCKET, Key="direct-small.bin", Body=b"x" * a.small_kib * 1024)
        small_id = service.upload(self.work / "small.bin", "small.bin")
        tests = {
            "upload": (self.presign("put_object", "direct-small-put.bin"),
                       f"{service.url}/files/upload/small.bin", body),
            "download": (self.presign("get_object", "direct-small.bin"),
                         f"{service.url}/files/{quote(small_id)}/download", None),
        }  # fmt: skip
        for kind, (direct, through, script) in tests.items():
            load = _wrk(direct, a.seconds, a.connections, script)
            self.record(f"small {kind} direct", load.rps)
            self.record(f"small {kind} direct p99", load.p99_ms)
            name = f"small {kind}{label}"
            mine = self.phase(
                service, name, functools.partial(_wrk, through, a.seconds, a.connections, script)
            )
            self.record(f"{name} filegate", mine.rps)
            self.record(f"{name} filegate p99", mine.p99_ms)


def _machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    weed = (
        subprocess.run([weed_binary(), "version"], capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[0]
    )
    return (
        f"{os.cpu_count()} CPUs ({model}), {mem_kib / MiB:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}, {weed}; client, filegate and SeaweedFS share the "
        "machine, all on loopback"
    )


def _table(results: dict[str, list[float]], args: argparse.Namespace, runs: int) -> str:
    def med(name: str) -> float:
        return statistics.median(results[name])

    def spread(name: str) -> str:
        values = results[name]
        return f"{min(values):.0f}-{max(values):.0f}" if len(values) > 1 else ""

    rows = [
        "| phase | direct S3 | filegate | ratio | target | filegate peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]

    def row(label: str, key: str, unit: str, target: str, direct_key: str | None = None) -> None:
        direct = med(direct_key or f"{key} direct")
        mine = med(f"{key} filegate")
        rss = med(f"{key} rss")
        rows.append(
            f"| {label} | {direct:.0f} {unit} ({spread(direct_key or f'{key} direct')}) "
            f"| {mine:.0f} {unit} ({spread(f'{key} filegate')}) | **{mine / direct:.2f}** "
            f"| {target} | {rss:.0f} |"
        )

    size = f"{args.size_mib} MiB"
    row(f"large upload, {size} (curl -T)", "large upload", "MiB/s", "≥ 0.8")
    row(f"large download, {size} (curl)", "large download", "MiB/s", "≥ 0.8")
    row(
        f"zip {args.zip_files} x {args.zip_mib} MiB vs sequential direct GETs",
        "zip",
        "MiB/s",
        "≥ 0.8",
    )
    for label in ("", f" ({args.workers} workers)") if args.workers > 1 else ("",):
        workers = label or " (1 worker)"
        for kind in ("upload", "download"):
            key = f"small {kind}{label}"
            row(
                f"small {kind}, {args.small_kib} KiB, {args.connections} conns{workers}",
                key,
                "req/s",
                "≥ 0.3",
                f"small {kind} direct",
            )
            rows.append(
                f"| … p99 latency | {med(f'small {kind} direct p99'):.1f} ms "
                f"| {med(f'{key} filegate p99'):.1f} ms | | | |"
            )
    return "\n".join(rows) + f"\n\nMedians of {runs} runs (min-max in brackets).\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--zip-files", type=int, default=32)
    parser.add_argument("--zip-mib", type=int, default=16)
    parser.add_argument("--small-kib", type=int, default=4)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="small files again with N workers")
    parser.add_argument("--out", type=Path, default=Path("bench/results.md"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="filegate-compare-") as tmp:
        work = Path(tmp)
        source = random_file(work / "source.bin", args.size_mib)
        (work / "small.bin").write_bytes(os.urandom(args.small_kib * 1024))
        seaweed = SeaweedFS(work / "seaweedfs")
        seaweed.start()
        try:
            bench = Bench(work, seaweed, args)
            bench.s3.create_bucket(Bucket=BUCKET)
            one = Service(seaweed.service_env(BUCKET))
            one.start(work)
            try:
                bench.prepare_zip(one)
                for run in range(args.runs):
                    print(f"run {run + 1}/{args.runs} …", flush=True)
                    bench.large(one, source)
                    bench.zip(one)
                    bench.small(one, "")
            finally:
                one.stop()
            if args.workers > 1:
                many = Service(seaweed.service_env(BUCKET))
                many.start(work, "--workers", str(args.workers))
                try:
                    time.sleep(2)  # every worker up
                    for _ in range(args.runs):
                        bench.small(many, f" ({args.workers} workers)")
                finally:
                    many.stop()
        finally:
            seaweed.stop()

    table = _table(bench.results, args, args.runs)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = f"# filegate vs direct S3 ({stamp})\n\nMachine: {_machine()}.\n\n{table}"
    print(report)
    args.out.write_text(report)


if __name__ == "__main__":
    main()
