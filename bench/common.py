"""What both benchmarks need: random files, timed curl, and filegate's peak RSS per phase."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.servers import Service

MiB = 1024 * 1024


def random_file(path: Path, mib: int) -> Path:
    """``mib`` MiB of random bytes, written a MiB at a time."""
    with path.open("wb") as file:
        for _ in range(mib):
            file.write(os.urandom(MiB))
    return path


def curl(*args: str) -> tuple[float, bytes]:
    """Run ``curl -sS -f`` and return (seconds, stdout); a failed transfer raises."""
    start = time.perf_counter()
    done = subprocess.run(["curl", "-sS", "-f", *args], capture_output=True, check=True)
    return time.perf_counter() - start, done.stdout


def _pids(service: Service) -> list[int]:
    """The processes that serve: the workers if uvicorn forked any, else the process itself."""
    assert service.process is not None
    pid = service.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children] or [pid]


def reset_peak(service: Service) -> None:
    """Start a new phase: VmHWM restarts from the current RSS (``clear_refs`` 5)."""
    for pid in _pids(service):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_mib(service: Service) -> float:
    """The peak RSS since ``reset_peak``, of the largest worker."""
    peaks = []
    for pid in _pids(service):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return max(peaks)
