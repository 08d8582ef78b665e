"""A soak: mixed concurrent traffic against filegate for a fixed time, every byte checked.

    uv run python -m bench.soak --url http://127.0.0.1:8000 [--pid <filegate pid>]
                                [--seconds 600] [--clients 8] [--max-mib 8] [--key KEY]

``Traffic`` is the traffic: each client, a thread in a folder of its own, loops over an upload
(raw PUT, form POST or tus, in turn), a whole and a ranged download and the file's info; every
fourth turn a zip of up to three of its files, every fifth a listing of its folder (which must
hold every file it stored), and now and then a delete (after which the file must be 404). Every
body is compared with what was sent. With ``--pid``, the process's RSS and open fds are sampled
every few seconds. The run ends by itself; the exit status is 1 if anything failed.

The same traffic runs through faults in tests/test_cluster.py (replicas killed and restarted
behind HAProxy), where it sorts what failed into what a fault may cause and what nothing may.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import itertools
import os
import random
import sys
import threading
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx

MiB = 1024 * 1024


@dataclass
class Traffic:
    """Client threads looping against one URL (a replica, or a balancer), each in a folder of
    its own: an upload (raw PUT, form POST or tus, in turn), a whole and a ranged download and
    its info, every fourth turn a zip of up to three of its files, every fifth a listing of its
    folder, and now and then a delete (then the file must be 404). Every byte that comes back is
    checked.

    Failures are sorted: ``failures`` are the ones a fault may cause (a 503 with Retry-After, a
    502/504 from a balancer, a refused connection or a cut stream), ``wrong`` the ones nothing
    may cause. A soak without faults allows neither."""

    url: str
    clients: int = 4
    max_bytes: int = 2 * MiB
    headers: dict[str, str] = field(default_factory=dict)
    folder: str = field(default_factory=lambda: f"soak-{os.urandom(4).hex()}")
    stored: dict[str, str] = field(default_factory=dict)
    """Every file answered 201 (or whose tus upload completed) and not deleted: id → SHA-256."""
    ops: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[float, str]] = field(default_factory=list)
    """(time, what) of every request that failed in an allowed way."""
    wrong: list[str] = field(default_factory=list)
    """What must never happen: wrong bytes presented as complete, an unexpected status."""
    locked: list[float] = field(default_factory=list)
    """When a tus PATCH was answered 423 (with Retry-After): the upload's lock was left by a
    PATCH that a killed replica was serving, and lasts until it is stale (docs/tus.md)."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._client, args=(n,)) for n in range(self.clients)]
        for thread in threads:
            thread.start()
        return threads

    def stop(self, threads: list[threading.Thread]) -> None:
        self._stop.set()
        for thread in threads:
            thread.join(timeout=120)

    def _failed(self, what: str, response: httpx.Response | None = None) -> None:
        if response is not None:
            allowed = response.status_code in (502, 504) or (
                response.status_code == 503 and "retry-after" in response.headers
            )
            if not allowed:
                self.wrong.append(f"{what}: {response.status_code} {response.text[:200]}")
                return
            what = f"{what} {response.status_code}"
        with self._lock:
            self.failures.append((time.monotonic(), what))

    def _call(
        self, http: httpx.Client, what: str, ok: tuple[int, ...], method: str, url: str, **kw: Any
    ) -> httpx.Response | None:
        """One request: its answer when the status is one of ``ok``, else None (and the
        failure recorded: an allowed one, or a wrong one)."""
        try:
            answer = http.request(method, url, **kw)
        except httpx.HTTPError as exc:  # a refused connection, or a stream seen to be cut
            self._failed(f"{what} {type(exc).__name__}: {exc}")
            return None
        with self._lock:
            self.ops[what] += 1
        if answer.status_code in ok:
            return answer
        self._failed(what, answer)
        return None

    def _client(self, n: int) -> None:
        try:
            self._loop(n)
        except Exception as exc:  # a client that stops early must not go unnoticed
            self.wrong.append(f"client {n} stopped: {exc!r}")

    def _loop(self, n: int) -> None:
        rng = random.Random(n)
        mine: list[str] = []  # this client's stored files, in its folder <folder>/c<n>
        folder = f"{self.folder}/c{n}"
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=120) as http:
            for turn in itertools.count():
                if self._stop.is_set():
                    return
                data = rng.randbytes(rng.randrange(1, self.max_bytes))
                name = f"c{n}-{turn} файл.bin"
                upload = (self._put, self._form, self._tus)[turn % 3]
                file_id = upload(http, folder, name, data)
                if file_id is None:
                    continue
                with self._lock:
                    self.stored[file_id] = hashlib.sha256(data).hexdigest()
                mine.append(file_id)
                start = rng.randrange(len(data))
                self._download(http, file_id, data, start, rng.randrange(start, len(data)))
                if turn % 4 == 3:
                    self._zip(http, rng.sample(mine, min(3, len(mine))))
                if turn % 5 == 4:
                    self._list(http, mine)
                if rng.random() < 0.2:
                    self._delete(http, gone := rng.choice(mine))
                    mine.remove(gone)

    def _put(self, http: httpx.Client, folder: str, name: str, data: bytes) -> str | None:
        path = f"/files/upload/{quote(name)}"
        answer = self._call(
            http, "put", (201,), "PUT", path, params={"folder": folder}, content=data
        )
        return None if answer is None else str(answer.json()["file_id"])

    def _form(self, http: httpx.Client, folder: str, name: str, data: bytes) -> str | None:
        form = {"data": {"folder": folder}, "files": {"file": (name, data)}}
        answer = self._call(http, "form", (201,), "POST", "/files/upload", **form)
        return None if answer is None else str(answer.json()["file_id"])

    def _tus(self, http: httpx.Client, folder: str, name: str, data: bytes) -> str | None:
        """Create with the first half, then PATCH the rest, as a tus client does: when a PATCH
        fails, ask for the offset (HEAD, on whichever replica) and go on from there."""
        tus = {"Tus-Resumable": "1.0.0"}
        half = len(data) // 2
        metadata = ",".join(
            f"{key} {base64.b64encode(value.encode()).decode()}"
            for key, value in (("filename", name), ("folder", folder))
        )
        chunk = {**tus, "Content-Type": "application/offset+octet-stream"}
        create = {**chunk, "Upload-Length": str(len(data)), "Upload-Metadata": metadata}
        created = self._call(
            http, "tus", (201,), "POST", "/files/tus", content=data[:half], headers=create
        )
        if created is None:
            return None  # an upload the balancer may have created is left to expire
        location = created.headers["location"]
        offset = int(created.headers.get("upload-offset", 0))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if offset < len(data):
                headers = {**chunk, "Upload-Offset": str(offset)}
                patched = self._call(
                    http,
                    "tus",
                    (204, 423),
                    "PATCH",
                    location,
                    content=data[offset:],
                    headers=headers,
                )
                if patched is not None and patched.status_code == 204:
                    return unquote(patched.headers["file-id"])
                if patched is not None:  # 423: a PATCH cut by a kill left its lock behind
                    if "retry-after" not in patched.headers:
                        self.wrong.append(f"tus {location}: 423 without Retry-After")
                        return None
                    with self._lock:  # until the lock goes stale (docs/tus.md), as tus clients do
                        self.locked.append(time.monotonic())
                    time.sleep(float(patched.headers["retry-after"]))
            head = self._call(http, "tus", (200,), "HEAD", location, headers=tus)
            if head is not None:
                offset = int(head.headers["upload-offset"])
                if offset == len(data) and "file-id" in head.headers:
                    return unquote(head.headers["file-id"])
            time.sleep(0.25)
        self.wrong.append(f"tus {location}: never completed")
        return None

    def _download(
        self, http: httpx.Client, file_id: str, data: bytes, start: int, end: int
    ) -> None:
        """The whole file (200) and the bytes start..end (206)."""
        path = f"/files/{quote(file_id)}"
        ranged = {"Range": f"bytes={start}-{end}"}
        for status, headers, want in ((200, {}, data), (206, ranged, data[start : end + 1])):
            got = self._call(
                http, "download", (status,), "GET", f"{path}/download", headers=headers
            )
            if got is not None and got.content != want:
                self.wrong.append(f"download {file_id}: other bytes, looking complete")
        info = self._call(http, "info", (200,), "GET", f"{path}/info")
        if info is not None and info.json()["file_size"] != len(data):
            self.wrong.append(f"info {file_id}: file_size {info.json()['file_size']}")

    def _zip(self, http: httpx.Client, file_ids: list[str]) -> None:
        entries = [{"file_id": f, "file_name": f"{i}.bin"} for i, f in enumerate(file_ids)]
        got = self._call(http, "zip", (200,), "POST", "/files/download-zip", json=entries)
        if got is None:
            return
        try:
            with zipfile.ZipFile(io.BytesIO(got.content)) as archive:
                for i, file_id in enumerate(file_ids):
                    digest = hashlib.sha256(archive.read(f"{i}.bin")).hexdigest()
                    if digest != self.stored[file_id]:
                        self.wrong.append(f"zip: {file_id} has other bytes")
        except zipfile.BadZipFile as exc:
            self.wrong.append(f"zip: a broken archive presented as complete ({exc})")

    def _list(self, http: httpx.Client, mine: list[str]) -> None:
        """Every file of the folder that was stored and not deleted is listed (a file whose
        answer was lost may be listed too)."""
        listed: set[str] = set()
        folder_id = mine[0].rsplit("/", 1)[0]  # its files' id, up to the name: "s3:files/…/c0"
        params = {"prefix": f"{folder_id}/", "delimiter": "", "limit": "1000"}
        while True:
            got = self._call(http, "list", (200,), "GET", "/files", params=params)
            if got is None:
                return
            page = got.json()
            listed.update(entry["file_id"] for entry in page["files"])
            if not page["next_cursor"]:
                break
            params["cursor"] = page["next_cursor"]
        if missing := set(mine) - listed:
            self.wrong.append(f"list {folder_id}: {len(missing)} stored files not listed")

    def _delete(self, http: httpx.Client, file_id: str) -> None:
        """Delete, trying again until a 200 says so (a delete whose answer was lost may have
        happened; deleting again is harmless); then the file is 404."""
        for _ in range(40):
            if self._call(http, "delete", (200,), "DELETE", f"/files/{quote(file_id)}"):
                with self._lock:
                    del self.stored[file_id]
                # anything but 404 is wrong (or, during a fault, a failure it allows)
                self._call(http, "gone", (404,), "GET", f"/files/{quote(file_id)}/info")
                return
            time.sleep(0.25)
        self.wrong.append(f"delete {file_id}: never acknowledged")

    def verify(self) -> None:
        """Every file answered 201 (and not deleted) downloads byte for byte now."""
        with httpx.Client(base_url=self.url, timeout=60) as http:
            for file_id, digest in self.stored.items():
                got = http.get(f"/files/{quote(file_id)}/download")
                assert got.status_code == 200, (file_id, got.status_code, got.text[:200])
                assert hashlib.sha256(got.content).hexdigest() == digest, file_id


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


def soak(url: str, pid: int | None, seconds: float, clients: int, max_mib: int,
         key: str | None, every: float = 5.0) -> Tally:  # fmt: skip
    """``Traffic`` for ``seconds``, sampling the process ``pid``; with no fault, any failure
    counts as an error."""
    tally = Tally()
    traffic = Traffic(url, clients, max_mib * MiB, {"X-API-Key": key} if key else {})
    started = time.monotonic()
    threads = traffic.run()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            if pid is not None:
                tally.samples.append((elapsed, *_rss_and_fds(pid)))
            time.sleep(min(every, max(seconds - elapsed, 0)))
    finally:
        traffic.stop(threads)
    if pid is not None:
        tally.samples.append((time.monotonic() - started, *_rss_and_fds(pid)))
    tally.ops = traffic.ops
    tally.errors = [*traffic.wrong, *(what for _, what in traffic.failures)]
    tally.errors += [f"tus PATCH 423 at {at - started:.1f} s" for at in traffic.locked]
    return tally


def report(tally: Tally) -> str:
    counts = ", ".join(f"{name} {count}" for name, count in sorted(tally.ops.items()))
    lines = [f"operations: {sum(tally.ops.values())} ({counts})", f"errors: {len(tally.errors)}"]
    lines += [f"  {error}" for error in tally.errors[:20]]
    if tally.samples:
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
    parser.add_argument("--pid", type=int, help="filegate's process id, to sample RSS and fds")
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-mib", type=int, default=8)
    parser.add_argument("--key", default=os.environ.get("FILEGATE_API_KEY"))
    args = parser.parse_args()
    tally = soak(args.url, args.pid, args.seconds, args.clients, args.max_mib, args.key)
    print(report(tally))
    sys.exit(1 if tally.errors else 0)


if __name__ == "__main__":
    main()
