"""A soak: mixed concurrent traffic against a running filegate for a fixed time, every byte checked.

    uv run python -m bench.soak --url http://127.0.0.1:8000 --pid <filegate pid> [--seconds 600]

Each client loops over: upload a random file (up to --max-mib, plain PUT or form), download it
whole, download a random range, read its info, zip a few of its files, delete one. Every body is
compared with what was sent. The filegate process's RSS and open fds are sampled every few
seconds. The run ends by itself; the exit status is 1 if any operation failed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import sys
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx

MiB = 1024 * 1024


@dataclass
class Tally:
    ops: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    samples: list[tuple[float, float, int]] = field(default_factory=list)
    """(seconds since start, RSS MiB, open fds)"""


def _rss_and_fds(pid: int) -> tuple[float, int]:
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def _client(http: httpx.AsyncClient, rng: random.Random, max_bytes: int, tally: Tally,
                  until: float) -> None:  # fmt: skip
    mine: dict[str, bytes] = {}

    def check(what: str, ok: bool, detail: object = "") -> None:
        tally.ops[what] += 1
        if not ok:
            tally.errors.append(f"{what}: {detail}")

    while time.monotonic() < until:
        data = rng.randbytes(rng.choice([rng.randrange(1, 64 * 1024), rng.randrange(1, max_bytes)]))
        name = f"soak-{rng.randrange(10**9)}.bin"
        if rng.random() < 0.5:
            answer = await http.put(f"/files/upload/{name}", content=data)
        else:
            answer = await http.post("/files/upload", files={"file": (name, data)})
        check("upload", answer.status_code == 201, answer.text[:200])
        if answer.status_code != 201:
            continue
        file_id = answer.json()["file_id"]
        mine[file_id] = data
        path = f"/files/{quote(file_id)}"
        got = await http.get(f"{path}/download")
        check("download", got.status_code == 200 and got.content == data, got.status_code)
        start = rng.randrange(len(data))
        end = rng.randrange(start, len(data))
        part = await http.get(f"{path}/download", headers={"Range": f"bytes={start}-{end}"})
        check("range", part.status_code == 206 and part.content == data[start : end + 1])
        info = await http.get(f"{path}/info")
        check("info", info.status_code == 200 and info.json()["file_size"] == len(data))
        if len(mine) >= 3 and rng.random() < 0.3:
            chosen = rng.sample(sorted(mine), 3)
            archive = await http.post(
                "/files/download-zip", json=[{"file_id": i, "file_name": f"{n}.bin"}
                                             for n, i in enumerate(chosen)],
            )  # fmt: skip
            ok = archive.status_code == 200
            if ok:
                with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
                    ok = [z.read(f"{n}.bin") for n in range(3)] == [mine[i] for i in chosen]
            check("zip", ok, archive.status_code)
        if len(mine) > 4:
            gone = rng.choice(sorted(mine))
            deleted = await http.delete(f"/files/{quote(gone)}")
            check("delete", deleted.status_code == 200, deleted.text[:200])
            del mine[gone]
            missing = await http.get(f"/files/{quote(gone)}/info")
            check("gone", missing.status_code == 404, missing.status_code)
    for file_id in mine:
        await http.delete(f"/files/{quote(file_id)}")


async def soak(url: str, pid: int, seconds: float, clients: int, max_mib: int, key: str | None,
               every: float = 5.0) -> Tally:  # fmt: skip
    tally = Tally()
    started = time.monotonic()
    until = started + seconds
    headers = {"X-API-Key": key} if key else {}
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as http:

        async def sample() -> None:
            while time.monotonic() < until:
                rss, fds = _rss_and_fds(pid)
                tally.samples.append((time.monotonic() - started, rss, fds))
                await asyncio.sleep(every)

        rng = random.Random(7)
        workers = [
            _client(http, random.Random(rng.random()), max_mib * MiB, tally, until)
            for _ in range(clients)
        ]
        await asyncio.gather(sample(), *workers)
    rss, fds = _rss_and_fds(pid)
    tally.samples.append((time.monotonic() - started, rss, fds))
    return tally


def report(tally: Tally) -> str:
    counts = ", ".join(f"{name} {count}" for name, count in sorted(tally.ops.items()))
    lines = [f"operations: {sum(tally.ops.values())} ({counts})", f"errors: {len(tally.errors)}"]
    lines += [f"  {error}" for error in tally.errors[:20]]
    rss = [s[1] for s in tally.samples]
    fds = [s[2] for s in tally.samples]
    lines.append(f"RSS MiB: first {rss[0]:.0f}, max {max(rss):.0f}, last {rss[-1]:.0f}")
    lines.append(f"open fds: first {fds[0]}, max {max(fds)}, last {fds[-1]}")
    step = max(1, len(tally.samples) // 12)
    lines.append("over time (s: RSS MiB / fds): " + ", ".join(
        f"{t:.0f}: {r:.0f}/{f}" for t, r, f in tally.samples[::step]))  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--pid", type=int, required=True, help="filegate's process id")
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--max-mib", type=int, default=8)
    parser.add_argument("--key", default=os.environ.get("FILEGATE_API_KEY"))
    args = parser.parse_args()
    tally = asyncio.run(
        soak(args.url, args.pid, args.seconds, args.clients, args.max_mib, args.key)
    )
    print(report(tally))
    sys.exit(1 if tally.errors else 0)


if __name__ == "__main__":
    main()
