"""filegate-client beside curl, on the same file from the same service in one run: a large
download (``--connections`` 1 and 4 against one ``curl``) and a large upload (the client's tus
upload against ``curl -T``), in S3 mode (SeaweedFS) and local mode, 1 worker. A last phase
repeats the downloads in local mode through a relay that holds each TCP connection to
``--limit-mib`` MiB/s, as a long round trip does on a real network: there parallel connections
pay off, while on bare loopback the 2 cores are the bound for every client.

    uv run python -m bench.client [--size-mib 1024] [--runs 3]

For every transfer: MiB/s, the client's own CPU-seconds per GiB and peak RSS (from ``wait4``),
and the service's CPU-seconds per GiB (from /proc). Every download is checked by SHA-256, every
upload by the size the service stored. Medians of
``--runs`` runs, with the range beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import GiB, MiB, cpu_seconds, filegate, random_file, seaweedfs
from tests.servers import Service
from tests.test_client import client_command

BUCKET = "client-bench"


@dataclass
class Run:
    rate: float
    client_cpu: float
    client_rss: float
    service_cpu: float


def timed(args: list[str], env: dict[str, str], service: Service, size: int) -> tuple[Run, str]:
    """Run one transfer command; what it cost, and its standard output."""
    assert service.process is not None
    service_before = cpu_seconds(service.process.pid)
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.PIPE)
        peak_kib = 0
        while True:  # VmHWM while it runs: wait4's ru_maxrss also counts the forked parent's
            peak_kib = max(peak_kib, _hwm_kib(process.pid))
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        error = process.stderr.read().decode() if process.stderr else ""
        out.seek(0)
        output = out.read().decode()
    if process.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({process.returncode}): {error[-500:]}")
    gib = size / GiB
    return Run(
        rate=size / MiB / seconds,
        client_cpu=(usage.ru_utime + usage.ru_stime) / gib,
        client_rss=peak_kib / 1024,
        service_cpu=(cpu_seconds(service.process.pid) - service_before) / gib,
    ), output


def _transfers(
    service: Service, work: Path, source: Path, runs: int, limit_mib: int | None
) -> Iterator[tuple[str, Run]]:
    """Every transfer ``runs`` times, checked; with ``limit_mib``, downloads only, each TCP
    connection held to that rate by a relay (as a long round trip holds one on a real network)."""
    digest, size = sha256(source), source.stat().st_size
    file_id = service.upload(source, "bench.bin")
    client = client_command()
    with Relay(service.port, limit_mib) as port:
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "FILEGATE_URL": url, "XDG_CACHE_HOME": str(work / "cache")}
        target = work / "got.bin"
        transfers = {
            "download, curl": ["curl", "-sS", "-f", "-o", str(target),
                               f"{url}/files/{file_id}/download"],
            "download, client, 1 connection": [
                client, "download", file_id, "-o", str(target), "--quiet", "--connections", "1",
            ],
            "download, client, 4 connections": [
                client, "download", file_id, "-o", str(target), "--quiet",
            ],
            "upload, curl -T": [
                "curl", "-sS", "-f", "-T", str(source), f"{url}/files/upload/bench.bin",
            ],
            "upload, client (tus, 8 MiB PATCHes)": [
                client, "upload", str(source), "--quiet", "--json",
            ],
        }  # fmt: skip
        for _ in range(runs):
            for label, command in transfers.items():
                if limit_mib is not None and label.startswith("upload"):
                    continue
                target.unlink(missing_ok=True)
                run, output = timed(command, env, service, size)
                if label.startswith("download"):
                    assert sha256(target) == digest, f"{label}: bytes differ"
                else:
                    stored = json.loads(output)
                    stored = stored[0] if isinstance(stored, list) else stored
                    assert stored["file_size"] == size, f"{label}: size differs"
                yield label, run


class Relay:
    """A TCP relay on loopback in front of ``port``, in a thread of its own; with ``limit_mib``
    each connection's answers are paced to that many MiB/s. Without it, the service's own port."""

    def __init__(self, port: int, limit_mib: int | None) -> None:
        self.target = port
        self.rate = None if limit_mib is None else limit_mib * MiB
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> int:
        if self.rate is None:
            return self.target
        self.thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop
        ).result()
        self.server = server
        return int(server.sockets[0].getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        if self.rate is None:
            return
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(
            self._pipe(reader, up_writer, None), self._pipe(up_reader, writer, self.rate)
        )

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float | None
    ) -> None:
        start, sent = time.monotonic(), 0
        try:
            while data := await reader.read(256 * 1024):
                writer.write(data)
                await writer.drain()
                sent += len(data)
                if rate is not None:
                    await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
        except OSError:
            pass
        finally:
            writer.close()


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0  # gone, or a zombie already


def cell(values: list[float], digits: int = 2) -> str:
    """The median, and the range in brackets."""
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f} ({low:.{digits}f} to {high:.{digits}f})"


def sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--limit-mib", type=int, default=40,
        help="the last phase's bandwidth per TCP connection, MiB/s (downloads only)",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="filegate-client-bench-") as tmp:
        work = Path(tmp)
        source = random_file(work / "source.bin", args.size_mib)
        results: dict[tuple[str, str], list[Run]] = {}
        with seaweedfs(work / "seaweedfs", BUCKET) as seaweed:
            for mode, service_env, limit in (
                ("s3", seaweed.service_env(BUCKET), None),
                ("local", {"LOCAL_ROOT": str(work / "data")}, None),
                (
                    f"local, {args.limit_mib} MiB/s per connection",
                    {"LOCAL_ROOT": str(work / "data")},
                    args.limit_mib,
                ),
            ):
                with filegate(service_env, work) as service:
                    for label, run in _transfers(service, work, source, args.runs, limit):
                        results.setdefault((mode, label), []).append(run)
    cpu = os.cpu_count()
    print(f"{args.size_mib} MiB, {cpu} cores, 1 worker, medians of {args.runs} runs (range)\n")
    print(
        "| mode | transfer | MiB/s | client CPU-s/GiB | client peak RSS MiB | filegate CPU-s/GiB |"
    )
    print("|---|---|---|---|---|---|")
    for (mode, label), runs in results.items():
        print(
            f"| {mode} | {label} | {cell([r.rate for r in runs], 0)} "
            f"| {cell([r.client_cpu for r in runs])} | {cell([r.client_rss for r in runs], 0)} "
            f"| {cell([r.service_cpu for r in runs])} |"
        )


if __name__ == "__main__":
    main()
