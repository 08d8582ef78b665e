"""filegate side by side with direct S3 and with the library it replaces, in one run.

    uv run python -m bench.compare [--runs 3] [--size-mib 1024] [--zip-files 16 --zip-mib 16]
                                   [--small-kib 4 --connections 32 --seconds 10]

Starts SeaweedFS, the FastDFS emulator, filegate three times (S3, local and FastDFS mode; one
worker each, API keys, metrics and the request log on, as in production) and s3py-helper's FastAPI
app (``bench.peer``), all on loopback, and measures with the same client programs on every side:

- small files: ``wrk`` at 32 connections, 4 KiB GETs and 4 KiB multipart POSTs (direct S3: GETs
  and PUTs of presigned URLs);
- a large upload (``curl -T`` and ``curl -F``; direct: a presigned PUT) and download (``curl``);
- a zip of 16 files of 16 MiB in one request, against direct GETs of the same files one after
  another in one curl (s3py-helper's zip breaks beyond seven files: shown as failed), and against
  filegate's own downloads of the same files one by one (what the archive adds); each measured
  over four archives, as CPU time comes in 10 ms ticks;
- FastDFS: filegate's FastDFS mode against ``bench.fdfs_direct`` (what FastDFS's own C tools do)
  on the same emulator.

For every phase and side it records the throughput and the server's CPU time (user + system,
all threads, from /proc around the phase) per unit of work: CPU-milliseconds per request,
CPU-seconds per GiB. For direct S3 the CPU shown is SeaweedFS's own. It also records filegate's
peak RSS per phase. It prints the medians (and ranges) over the runs and writes them, with a line
describing the machine, to ``bench/results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
from botocore.config import Config

from bench import fdfs_direct
from bench.common import (
    GiB,
    MiB,
    TransferFailed,
    cpu_seconds,
    curl,
    fastdfs_emulator,
    peak_mib,
    random_file,
    reset_peak,
    seaweedfs,
)
from bench.peer import Peer
from tests.servers import ADMIN, HOST, SeaweedFS, Service, weed_binary

BUCKET = "bench"
KEY = "bench-key-0123456789abcdef0123"
AUTH = f"X-API-Key: {KEY}"
ZIP_REPEAT = 4


@dataclass(frozen=True)
class Load:
    requests: int
    rps: float


def wrk(url: str, seconds: int, connections: int, script: Path | None, auth: bool) -> Load:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    if auth:
        command += ["-H", AUTH]
    if script is not None:
        command += ["-s", str(script)]
    done = subprocess.run([*command, url], capture_output=True, text=True, check=True)
    out = done.stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failures against {url}:\n{out}")
    total = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert total is not None and rps is not None, out
    return Load(int(total.group(1)), float(rps.group(1)))


class Bench:
    """One run's services; ``results`` collects every measurement by name over the runs."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work = work
        self.args = args
        self.results: dict[str, list[float]] = defaultdict(list)
        self.failed: set[str] = set()

    def record(self, name: str, value: float) -> None:
        self.results[name].append(value)

    def measured[T](self, name: str, pid: int, work: float, run: Callable[[], T]) -> T:
        """Run a phase; record its CPU per unit of ``work`` and, for filegate, its peak RSS."""
        reset_peak(pid)
        before = cpu_seconds(pid)
        value = run()
        self.record(f"{name} cpu", (cpu_seconds(pid) - before) / work)
        self.record(f"{name} rss", peak_mib(pid))
        return value

    # phases

    def small(self, side: str, pid: int, get_url: str, post: tuple[str, Path], auth: bool) -> None:
        a = self.args
        for kind, url, script in (("get", get_url, None), ("post", *post)):
            name = f"small {kind} {side}"
            reset_peak(pid)
            before = cpu_seconds(pid)
            load = wrk(url, a.seconds, a.connections, script, auth)
            self.record(f"{name} cpu", (cpu_seconds(pid) - before) * 1000 / load.requests)
            self.record(f"{name} rss", peak_mib(pid))
            self.record(name, load.rps)

    def transfer(self, name: str, pid: int, mib: int, *curl_args: str) -> bytes | None:
        """A measured transfer; a failure is recorded (and printed), not raised."""
        gib = mib * MiB / GiB

        def run() -> tuple[float, bytes]:
            return curl(*curl_args)

        try:
            seconds, body = self.measured(name, pid, gib, run)
        except TransferFailed as exc:
            print(f"{name} failed: {exc}", file=sys.stderr, flush=True)
            self.failed.add(name)
            return None
        self.record(name, mib / seconds)
        return body


def _forms(work: Path, kib: int) -> tuple[Path, Path]:
    boundary = "----filegatebench"
    form = work / "form.lua"
    form.write_text(
        f'local b = "{boundary}"\n'
        'local body = "--" .. b .. "\\r\\nContent-Disposition: form-data; name=\\"file\\"; '
        'filename=\\"s.bin\\"\\r\\nContent-Type: application/octet-stream\\r\\n\\r\\n" .. '
        f'string.rep("x", {kib * 1024}) .. "\\r\\n--" .. b .. "--\\r\\n"\n'
        'wrk.method = "POST"\nwrk.body = body\n'
        'wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. b\n'
    )
    put = work / "put.lua"
    put.write_text(
        f'wrk.method = "PUT"\nwrk.body = string.rep("x", {kib * 1024})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )
    return form, put


def _machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    weed = subprocess.run([weed_binary(), "version"], capture_output=True, text=True)
    return (
        f"{os.cpu_count()} CPUs ({model}), {mem_kib / MiB:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}, SeaweedFS {weed.stdout.split()[1:3]}; the clients, "
        "filegate, s3py-helper, SeaweedFS and the FastDFS emulator share the machine, on loopback"
    )


def run_once(bench: Bench, sides: dict[str, Service | Peer], seaweed: SeaweedFS) -> None:
    a, work = bench.args, bench.work
    s3 = boto3.client(
        "s3",
        endpoint_url=seaweed.endpoint,
        aws_access_key_id=ADMIN[0],
        aws_secret_access_key=ADMIN[1],
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )

    def presign(method: str, key: str) -> str:
        url: str = s3.generate_presigned_url(
            method, Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=3600
        )
        return url

    assert seaweed.process is not None
    weed_pid = seaweed.process.pid
    form, put = _forms(work, a.small_kib)
    small = work / "small.bin"
    big = work / "big.bin"
    fdfs = sides.pop("fastdfs")
    assert isinstance(fdfs, Service)

    # small files
    s3.put_object(Bucket=BUCKET, Key="direct-small.bin", Body=small.read_bytes())
    bench.small(
        "direct",
        weed_pid,
        presign("get_object", "direct-small.bin"),
        (presign("put_object", "direct-small-put.bin"), put),
        auth=False,
    )
    for side, server in sides.items():
        assert server.process is not None
        keyed = side != "peer"
        headers = ["-H", AUTH] if keyed else []
        _, body = curl(*headers, "-F", f"file=@{small}", f"{server.url}/files/upload")
        small_id = json.loads(body)["file_id"]
        get = f"{server.url}/files/{quote(small_id)}/download"
        bench.small(side, server.process.pid, get, (f"{server.url}/files/upload", form), keyed)

    # large files
    mib = a.size_mib
    bench.transfer(
        "upload direct",
        weed_pid,
        mib,
        "-T",
        str(big),
        "-o",
        "/dev/null",
        presign("put_object", "direct-big.bin"),
    )
    bench.transfer(
        "download direct", weed_pid, mib, "-o", "/dev/null", presign("get_object", "direct-big.bin")
    )
    for side, server in sides.items():
        assert server.process is not None
        pid = server.process.pid
        auth: list[str] = ["-H", AUTH] if side != "peer" else []
        if side != "peer":
            url = f"{server.url}/files/upload/big.bin"
            bench.transfer(f"upload -T {side}", pid, mib, *auth, "-T", str(big), url)
        uploaded = bench.transfer(
            f"upload -F {side}", pid, mib, *auth, "-F", f"file=@{big}", f"{server.url}/files/upload"
        )
        if uploaded is None:
            continue
        big_id = json.loads(uploaded)["file_id"]
        download = f"{server.url}/files/{quote(big_id)}/download"
        bench.transfer(f"download {side}", pid, mib, *auth, "-o", "/dev/null", download)

    # zip of many files
    part = random_file(work / "part.bin", a.zip_mib)
    total = a.zip_files * a.zip_mib
    keys = [f"zip/part{i}.bin" for i in range(a.zip_files)]
    for key in keys:
        s3.upload_file(str(part), BUCKET, key)
    # Each measurement is ZIP_REPEAT archives (or sets of GETs) in one curl: CPU time is counted
    # in 10 ms ticks, too coarse for one archive of 256 MiB.
    sequential: list[str] = []
    for key in keys * ZIP_REPEAT:
        sequential += ["-o", "/dev/null", presign("get_object", key)]
    bench.transfer("zip direct", weed_pid, total * ZIP_REPEAT, *sequential)
    for side, server in sides.items():
        assert server.process is not None
        keys_header: list[str] = ["-H", AUTH] if side != "peer" else []
        ids = []
        for i in range(a.zip_files):
            form_part = f"file=@{part};filename=part{i}.bin"
            _, body = curl(*keys_header, "-F", form_part, f"{server.url}/files/upload")
            ids.append(json.loads(body)["file_id"])
        if side != "peer":  # the same files one download each: what the archive adds to them
            one_by_one: list[str] = []
            for file_id in ids * ZIP_REPEAT:
                one_by_one += ["-o", "/dev/null", f"{server.url}/files/{quote(file_id)}/download"]
            bench.transfer(f"zip files {side}", server.process.pid, total * ZIP_REPEAT,
                           *keys_header, *one_by_one)  # fmt: skip
        request = json.dumps([{"file_id": i} for i in ids])
        args = [*keys_header, "-H", "Content-Type: application/json", "--data-binary", request]
        archives = ["-o", "/dev/null", f"{server.url}/files/download-zip"] * ZIP_REPEAT
        bench.transfer(f"zip {side}", server.process.pid, total * ZIP_REPEAT, *args, *archives)

    # FastDFS, against the emulator
    assert fdfs.process is not None
    tracker = (HOST, int(fdfs.env["FASTDFS_TRACKER_SERVERS"].rsplit(":", 1)[1]))
    started = time.perf_counter()
    fid = fdfs_direct.upload(tracker, big)
    bench.record("fastdfs upload direct", mib / (time.perf_counter() - started))
    started = time.perf_counter()
    fdfs_direct.download(tracker, fid)
    bench.record("fastdfs download direct", mib / (time.perf_counter() - started))
    uploaded = bench.transfer(
        "fastdfs upload filegate", fdfs.process.pid, mib, "-H", AUTH, "-T", str(big),
        f"{fdfs.url}/files/upload/big.bin",
    )  # fmt: skip
    assert uploaded is not None, "filegate's FastDFS upload failed"
    big_id = json.loads(uploaded)["file_id"]
    bench.transfer(
        "fastdfs download filegate", fdfs.process.pid, mib, "-H", AUTH, "-o", "/dev/null",
        f"{fdfs.url}/files/{quote(big_id)}/download",
    )  # fmt: skip
    sides["fastdfs"] = fdfs
    _empty(s3)


def _empty(s3: Any) -> None:
    """Delete what the run stored in the bucket, so runs do not pile up in SeaweedFS."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})


def _table(bench: Bench, runs: int) -> str:
    r, a = bench.results, bench.args

    def med(name: str) -> float:
        return statistics.median(r[name])

    def cell(name: str, unit: str, cpu_unit: str, digits: int = 0) -> str:
        if name in bench.failed or name not in r:
            return "fails"
        values = r[name]
        spread = f" ({min(values):.{digits}f}-{max(values):.{digits}f})" if len(values) > 1 else ""
        cpu = f"{med(name + ' cpu'):.2f} {cpu_unit}" if name + " cpu" in r else ""
        return f"{med(name):.{digits}f} {unit}{spread}<br>{cpu}"

    lines = [
        "| phase | filegate S3 | filegate local | s3py-helper (S3) | direct S3 (SeaweedFS CPU) |",
        "|---|---|---|---|---|",
    ]
    small = f"{a.small_kib} KiB"
    for label, key, unit, cpu_unit in (
        (f"{small} GET, {a.connections} conns", "small get", "req/s", "CPU-ms/req"),
        (f"{small} multipart POST (direct: PUT)", "small post", "req/s", "CPU-ms/req"),
        (f"{a.size_mib} MiB upload, curl -T (direct: PUT)", "upload -T", "MiB/s", "CPU-s/GiB"),
        (f"{a.size_mib} MiB upload, curl -F", "upload -F", "MiB/s", "CPU-s/GiB"),
        (f"{a.size_mib} MiB download", "download", "MiB/s", "CPU-s/GiB"),
        (f"zip of {a.zip_files} x {a.zip_mib} MiB (direct: sequential GETs)", "zip", "MiB/s",
         "CPU-s/GiB"),
        (f"the same {a.zip_files} files, one download each", "zip files", "MiB/s", "CPU-s/GiB"),
    ):  # fmt: skip
        direct_key = {"upload -T": "upload direct", "upload -F": "upload direct"}.get(key)
        cells = [
            cell(f"{key} s3", unit, cpu_unit),
            cell(f"{key} local", unit, cpu_unit),
            cell(f"{key} peer", unit, cpu_unit) if key not in ("upload -T", "zip files") else "n/a",
            cell(direct_key or f"{key} direct", unit, cpu_unit) if key != "zip files" else "n/a",
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| FastDFS (emulator) | filegate | direct client (bench/fdfs_direct.py) | ratio |",
        "|---|---|---|---|",
    ]
    for kind in ("upload", "download"):
        mine, direct = med(f"fastdfs {kind} filegate"), med(f"fastdfs {kind} direct")
        lines.append(
            f"| {a.size_mib} MiB {kind} | {cell(f'fastdfs {kind} filegate', 'MiB/s', 'CPU-s/GiB')}"
            f" | {direct:.0f} MiB/s | **{mine / direct:.2f}** |"
        )
    lines += ["", "filegate's peak RSS (MiB) per phase, S3 / local mode:", ""]
    for key in ("small get", "small post", "upload -T", "upload -F", "download", "zip"):
        peaks = " / ".join(
            f"{med(f'{key} {side} rss'):.0f}" if f"{key} {side} rss" in r else "-"
            for side in ("s3", "local")
        )
        lines.append(f"- {key}: {peaks}")
    ratio_get = med("small get s3") / med("small get peer")
    ratio_post = med("small post s3") / med("small post peer")
    lines += [
        "",
        f"filegate S3 / s3py-helper, {small} GET: **{ratio_get:.1f} x**; "
        f"POST: **{ratio_post:.1f} x**.",
        f"Medians of {runs} runs (min-max in brackets).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--zip-files", type=int, default=16)
    parser.add_argument("--zip-mib", type=int, default=16)
    parser.add_argument("--small-kib", type=int, default=4)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/results.md"))
    parser.add_argument("--work", type=Path, help="keep files and logs here (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="filegate-compare-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        random_file(work / "big.bin", args.size_mib)
        (work / "small.bin").write_bytes(os.urandom(args.small_kib * 1024))
        with (
            fastdfs_emulator(work / "fastdfs") as tracker,
            seaweedfs(work / "seaweedfs", BUCKET) as seaweed,
        ):
            bench = Bench(work, args)
            keys = json.dumps(
                [{"name": "bench", "key": KEY, "scopes": ["read", "write", "delete"]}]
            )
            common = {"API_KEYS": keys, "LOG_FORMAT": "json"}
            sides: dict[str, Service | Peer] = {
                "s3": Service({**seaweed.service_env(BUCKET), **common}),
                "local": Service({"LOCAL_ROOT": str(work / "data"), **common}),
                "fastdfs": Service(
                    {
                        "STORAGE_MODE": "fastdfs",
                        "FASTDFS_TRACKER_SERVERS": tracker,
                        **common,
                    }
                ),
                "peer": Peer(seaweed.endpoint, ADMIN, BUCKET),
            }
            try:
                for side in sides.values():
                    side.start(work)
                for run in range(args.runs):
                    print(f"run {run + 1}/{args.runs} …", file=sys.stderr, flush=True)
                    run_once(bench, sides, seaweed)
            finally:
                for side in sides.values():
                    side.stop()

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = (
        f"# filegate benchmark ({stamp})\n\nMachine: {_machine()}.\n\n{_table(bench, args.runs)}"
    )
    print(report)
    args.out.write_text(report)


if __name__ == "__main__":
    main()
