"""Throughput through the balancer: HAProxy (docker/haproxy.cfg, as tests/test_cluster.py runs it)
in front of 1 and of 2 filegate replicas (one worker each, S3 mode), over the replicated SeaweedFS
cluster of tests/cluster.py, all on loopback; and one replica without the balancer, for what
HAProxy adds.

    uv run python -m bench.cluster [--runs 3] [--seconds 10] [--connections 32] [--size-mib 256]

Phases, per setup:
- 4 KiB GETs of one file with ``wrk`` (2 threads, 32 connections);
- 256 MiB downloads with ``curl``, as many at once as there are replicas, twice; every size is
  checked, and one download byte for byte.

For each phase it reads from /proc the CPU time (user + system) of every process around it: each
filegate replica, HAProxy, and the SeaweedFS processes together (master, volume servers, filer,
S3 gateway). It prints the medians over the runs (ranges in brackets) and writes them to
``bench/results-cluster.md``. The machine's two cores are shared by everything, the load
generator included: what bounds each figure is said in docs/scaling.md.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx

from bench.common import GiB, MiB, cpu_seconds, random_file
from bench.compare import _machine, wrk
from tests.cluster import Balanced, SeaweedCluster

BUCKET = "bench"
RESULTS = Path(__file__).parent / "results-cluster.md"


class Setup:
    """A named way to reach the replicas, and the processes whose CPU it counts."""

    def __init__(self, name: str, url: str, groups: dict[str, list[int]]) -> None:
        self.name = name
        self.url = url
        self.groups = groups

    def cpu(self) -> dict[str, float]:
        return {group: sum(cpu_seconds(pid) for pid in pids) for group, pids in self.groups.items()}


def _measure(setup: Setup, run: Callable[[], float]) -> tuple[float, dict[str, float]]:
    """Run a phase: its own result, and the CPU seconds each group of processes used meanwhile."""
    before = setup.cpu()
    result = run()
    after = setup.cpu()
    return result, {group: after[group] - before[group] for group in before}


def _downloads(url: str, size: int, at_once: int, rounds: int) -> float:
    """``rounds`` times ``at_once`` concurrent curl downloads; MiB/s over all of them."""
    started = time.perf_counter()
    for _ in range(rounds):
        running = [
            subprocess.Popen(
                ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}", url],
                stdout=subprocess.PIPE,
            )
            for _ in range(at_once)
        ]
        for process in running:
            out, _ = process.communicate(timeout=600)
            if process.returncode or int(out) != size:
                raise RuntimeError(f"a download failed ({process.returncode}, {out!r} bytes)")
    return rounds * at_once * size / MiB / (time.perf_counter() - started)


def measure(setup: Setup, args: argparse.Namespace, small: str, large: str, size: int,
            results: dict[str, list[float]]) -> None:  # fmt: skip
    def gets() -> float:
        load = wrk(f"{setup.url}/files/{quote(small)}/download", args.seconds,
                   args.connections, None, auth=False)  # fmt: skip
        results[f"{setup.name}|get requests"].append(load.requests)
        return load.rps

    replicas = len([group for group in setup.groups if group.startswith("filegate")])

    def share(group: str) -> int:
        """How much of the work a group did: a replica served its round-robin share of it."""
        return replicas if group.startswith("filegate") else 1

    rps, cpu = _measure(setup, gets)
    requests = results[f"{setup.name}|get requests"][-1]
    results[f"{setup.name}|get rps"].append(rps)
    for group, seconds in cpu.items():
        results[f"{setup.name}|get cpu {group}"].append(seconds * 1000 * share(group) / requests)
    rounds = 2
    url = f"{setup.url}/files/{quote(large)}/download"
    mibps, cpu = _measure(setup, lambda: _downloads(url, size, replicas, rounds))
    results[f"{setup.name}|download mibps"].append(mibps)
    gib = rounds * replicas * size / GiB
    for group, seconds in cpu.items():
        results[f"{setup.name}|download cpu {group}"].append(seconds * share(group) / gib)


def one_run(work: Path, args: argparse.Namespace, results: dict[str, list[float]]) -> None:
    seaweed = SeaweedCluster(work / "seaweedfs")
    try:
        seaweed.start(count=2)
        seaweed.create_bucket(BUCKET)
        storage = [p.pid for p in seaweed.processes.values()]
        storage += [v.process.pid for v in seaweed.volumes if v.process is not None]
        source = random_file(work / "large.bin", args.size_mib)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        for count in (1, 2):
            balanced = Balanced(work / f"replicas{count}", seaweed.service_env(BUCKET))
            try:
                balanced.start(count)
                assert balanced.haproxy is not None
                with httpx.Client(base_url=balanced.url, timeout=600) as http:
                    small = http.put("/files/upload/small.bin", content=b"x" * 4096).json()
                    with source.open("rb") as body:
                        large = http.put("/files/upload/large.bin", content=body).json()
                    got = hashlib.sha256()
                    with http.stream("GET", f"/files/{quote(large['file_id'])}/download") as r:
                        for chunk in r.iter_bytes():
                            got.update(chunk)
                    assert got.hexdigest() == digest, "the large file came back other"
                replicas = {f"filegate {n + 1}": [r.process.pid]
                            for n, r in enumerate(balanced.replicas) if r.process}  # fmt: skip
                setups = [Setup(f"HAProxy → {count} replica{'s' * (count > 1)}", balanced.url,
                                {**replicas, "HAProxy": [balanced.haproxy.pid],
                                 "SeaweedFS": storage})]  # fmt: skip
                if count == 1:
                    direct = balanced.replicas[0]
                    setups.insert(0, Setup("1 replica, no balancer", direct.url,
                                           {**replicas, "SeaweedFS": storage}))  # fmt: skip
                for setup in setups:
                    measure(setup, args, small["file_id"], large["file_id"], args.size_mib * MiB,
                            results)  # fmt: skip
                    rps = results[f"{setup.name}|get rps"][-1]
                    mibps = results[f"{setup.name}|download mibps"][-1]
                    print(f"  {setup.name}: {rps:.0f} GET/s, {mibps:.0f} MiB/s", flush=True)
            finally:
                balanced.stop()
    finally:
        seaweed.stop()


def _cell(values: list[float], digits: int = 0) -> str:
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def report(results: dict[str, list[float]], args: argparse.Namespace) -> str:
    setups = list(dict.fromkeys(key.split("|")[0] for key in results))
    lines = [
        f"# filegate behind HAProxy ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {_machine().split('; the clients')[0]}. wrk, curl, HAProxy 2.6, the "
        "filegate replicas (one process with one worker each) and the SeaweedFS cluster "
        "(master, 2 volume servers with replication 001, filer, S3 gateway) share it, on "
        f"loopback. Medians of {args.runs} runs (min-max in brackets).",
        "",
        "CPU per GET and per GiB: a replica's is per request (or GiB) it served, its "
        "round-robin share; HAProxy's and SeaweedFS's (all its processes) per request through "
        "the setup.",
        "",
        f"4 KiB GETs (wrk, {args.connections} connections, {args.seconds} s) and "
        f"{args.size_mib} MiB downloads (curl, one per replica at once):",
        "",
        "| setup | 4 KiB GET req/s | CPU-ms per GET | download MiB/s | CPU-s per GiB |",
        "|---|---|---|---|---|",
    ]
    for setup in setups:
        groups = [k.split("get cpu ", 1)[1] for k in results if k.startswith(f"{setup}|get cpu ")]
        get_cpu = "<br>".join(f"{g}: {_cell(results[f'{setup}|get cpu {g}'], 2)}" for g in groups)
        dl_cpu = "<br>".join(
            f"{g}: {_cell(results[f'{setup}|download cpu {g}'], 2)}" for g in groups
        )
        lines.append(
            f"| {setup} | {_cell(results[f'{setup}|get rps'])} | {get_cpu} "
            f"| {_cell(results[f'{setup}|download mibps'])} | {dl_cpu} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--size-mib", type=int, default=256)
    args = parser.parse_args()
    results: dict[str, list[float]] = defaultdict(list)
    for run in range(args.runs):
        print(f"run {run + 1} of {args.runs}", flush=True)
        with tempfile.TemporaryDirectory(prefix="filegate-cluster-bench-") as tmp:
            one_run(Path(tmp), args, results)
    text = report(results, args)
    print(text)
    previous = RESULTS.read_text() if RESULTS.exists() else ""
    RESULTS.write_text(text + ("\n" + previous if previous else ""))


if __name__ == "__main__":
    main()
