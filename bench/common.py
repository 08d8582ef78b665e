"""What the benchmarks share: random files, timed curl, CPU time and peak RSS of a process, and
the servers they run (SeaweedFS with a bucket, filegate, the FastDFS emulator)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import HOST, SeaweedFS, Service, free_ports

MiB = 1024 * 1024
GiB = 1024 * MiB
_TICK = os.sysconf("SC_CLK_TCK")


def random_file(path: Path, mib: int) -> Path:
    """``mib`` MiB of random bytes, written a MiB at a time."""
    with path.open("wb") as file:
        for _ in range(mib):
            file.write(os.urandom(MiB))
    return path


class TransferFailed(Exception):
    """curl failed: the HTTP status or curl's own error, and what the server said."""


def curl(*args: str) -> tuple[float, bytes]:
    """Run curl and return (seconds, body); a failed transfer raises ``TransferFailed``."""
    start = time.perf_counter()
    done = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-w", "\n%{http_code}", *args], capture_output=True
    )
    seconds = time.perf_counter() - start
    body, _, status = done.stdout.rpartition(b"\n")
    if done.returncode != 0:
        said = body[-300:].decode(errors="replace")
        raise TransferFailed(f"HTTP {status.decode()} (curl {done.returncode}): {said}")
    return seconds, body


def processes(pid: int) -> list[int]:
    """A server and its worker processes (uvicorn's, when it forked any)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(child) for child in children)]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads) and its workers, from /proc."""
    total = 0
    for each in processes(pid):
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def reset_peak(pid: int) -> None:
    """Start a new phase: VmHWM restarts from the current RSS (``clear_refs`` 5)."""
    for each in processes(pid):
        Path(f"/proc/{each}/clear_refs").write_text("5")


def peak_mib(pid: int) -> float:
    """The peak RSS since ``reset_peak``, of the largest process."""
    peaks = []
    for each in processes(pid):
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return max(peaks)


def rss_mib(pid: int) -> float:
    """The current RSS, summed over the process and its workers."""
    total = 0
    for each in processes(pid):
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


@contextmanager
def seaweedfs(directory: Path, bucket: str) -> Iterator[SeaweedFS]:
    """SeaweedFS with ``bucket`` created, stopped on the way out."""
    seaweed = SeaweedFS(directory)
    seaweed.start()
    try:
        seaweed.create_bucket(bucket)
        yield seaweed
    finally:
        seaweed.stop()


@contextmanager
def filegate(env: dict[str, str], work: Path) -> Iterator[Service]:
    """filegate as a process with ``env``, stopped on the way out."""
    service = Service(env)
    service.start(work)
    try:
        yield service
    finally:
        service.stop()


@contextmanager
def fastdfs_emulator(directory: Path) -> Iterator[str]:
    """The FastDFS emulator (tests/fdfs_emulator.py) in a process of its own, so it shares no GIL
    with filegate or the clients; yields the tracker's address once it accepts connections."""
    tracker_port, storage_port = free_ports(2)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fdfs_emulator", "--dir", str(directory),
         "--tracker-port", str(tracker_port), "--storage-port", str(storage_port)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((HOST, tracker_port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the FastDFS emulator did not start") from None
                time.sleep(0.1)
        yield f"{HOST}:{tracker_port}"
    finally:
        process.terminate()
        process.wait()
