"""``filegate-client migrate``: move a list of FastDFS ids to S3, resumably (docs/client.md,
"Leaving FastDFS").

The service does the moving (``POST /files/{id}/migrate``): the bytes go from FastDFS to S3
through it once, are verified against the CRC-32 FastDFS recorded, and the old id keeps working.
That step is safe to repeat and never copies a file twice, so this command only has to drive it:
``--concurrency`` ids at once, ``503``/``429`` answers retried after their ``Retry-After``, every
outcome appended to a journal as it comes. A run stopped in any way (Ctrl-C, a lost network, a
crash) is resumed by running the same command again: ids the journal says are done are skipped.
The mapping of old to new ids is written as CSV at the end, from the journal, so it covers every
run.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from filegate_client.api import Api, Failure, failure_of, file_path

FASTDFS_ID = re.compile(
    r"[A-Za-z0-9_-]{1,16}/M[0-9A-F]{2}/[0-9A-F]{2}/[0-9A-F]{2}/[A-Za-z0-9_.-]{6,}"
)
RETRIED = {408, 423, 429, 500, 502, 503, 504}
ATTEMPTS = 8
LONGEST_WAIT = 60.0
DONE_ALWAYS = {"moved", "missing", "refused", "invalid"}
"""Outcomes a later run does not try again (corrupt and failed ids it does)."""


@dataclass
class Outcome:
    old_id: str
    status: str
    """moved (and the source deleted), copied (the source kept), missing (404), refused (400 or
    403), invalid (not a FastDFS id), corrupt (the bytes do not match the recorded CRC-32) or
    failed (anything else, after the retries)."""
    new_id: str | None = None
    size: int = 0
    crc32: str | None = None
    copied: bool = False
    detail: str | None = None
    line: int | None = None

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Tally:
    files: int = 0
    bytes: int = 0
    by_status: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        self.files += 1
        if outcome.status in ("moved", "copied"):
            self.bytes += outcome.size
        self.by_status[outcome.status] = self.by_status.get(outcome.status, 0) + 1


def read_ids(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(line number, id) of every line that is not blank or a ``#`` comment."""
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if text and not text.startswith("#"):
            yield number, text


def read_journal(path: Path) -> dict[str, dict[str, Any]]:
    """The last outcome of each id in the journal (a line cut by a crash is skipped)."""
    last: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return last
    with path.open(encoding="utf-8") as journal:
        for line in journal:
            try:
                record = json.loads(line)
                last[record["old_id"]] = record
            except (ValueError, KeyError, TypeError):
                continue
    return last


def finished(record: dict[str, Any] | None, delete_source: bool) -> bool:
    if record is None:
        return False
    status = record.get("status")
    return status in DONE_ALWAYS or (status == "copied" and not delete_source)


def _wait_for(response: httpx.Response | None, attempt: int) -> float:
    if response is not None:
        try:
            told = float(str(response.headers.get("retry-after")))
            return min(LONGEST_WAIT, max(0.1, told))
        except ValueError:
            pass
    backoff: float = 0.5 * 2**attempt
    return min(LONGEST_WAIT, backoff)


class Migration:
    def __init__(self, api: Api, body: dict[str, Any], cancel: threading.Event) -> None:
        self.api = api
        self.body = body
        self.cancel = cancel

    def one(self, number: int, old_id: str) -> Outcome:
        if not FASTDFS_ID.fullmatch(old_id):
            return Outcome(old_id, "invalid", detail="not a FastDFS id", line=number)
        path = file_path(old_id, "/migrate")
        for attempt in range(ATTEMPTS):
            if self.cancel.is_set():
                raise KeyboardInterrupt
            response: httpx.Response | None = None
            try:
                response = self.api.http.post(path, json=self.body)
            except httpx.TransportError as exc:
                detail = f"{self.api.settings.url} cannot be reached ({exc})"
            else:
                if response.status_code == 200:
                    done = response.json()
                    status = "moved" if done["source_deleted"] else "copied"
                    return Outcome(old_id, status, done["file_id"], done["file_size"],
                                   done.get("crc32"), done["copied"], line=number)  # fmt: skip
                failure = failure_of(response)
                detail = failure.detail
                if response.status_code not in RETRIED:
                    return Outcome(old_id, _status_of(response.status_code, failure), detail=detail,
                                   line=number)  # fmt: skip
            self.cancel.wait(_wait_for(response, attempt))
        return Outcome(old_id, "failed", detail=detail, line=number)


def _status_of(status: int, failure: Failure) -> str:
    if status == 404:
        return "missing"
    if failure.code == "source_corrupt":
        return "corrupt"
    if status in (400, 403):
        return "refused"
    return "failed"


def write_csv(path: Path, journal: dict[str, dict[str, Any]]) -> int:
    """old_id → new_id (with size, CRC-32 and status) for every id moved or copied."""
    rows = 0
    temporary = path.with_name(path.name + ".part")
    with temporary.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["old_id", "new_id", "file_size", "crc32", "status"])
        for old_id, record in journal.items():
            if record.get("status") in ("moved", "copied"):
                writer.writerow([old_id, record["new_id"], record.get("size", 0),
                                 record.get("crc32", ""), record["status"]])  # fmt: skip
                rows += 1
    os.replace(temporary, path)
    return rows


def run_migration(api: Api, args: Any) -> int:
    source: IO[str] = sys.stdin if args.ids == "-" else open(args.ids, encoding="utf-8")  # noqa: SIM115
    with source:
        ids = list(read_ids(source))
    base = Path("migrate" if args.ids == "-" else args.ids)
    journal_path = Path(args.journal) if args.journal else base.with_name(base.name + ".journal")
    csv_path = Path(args.csv) if args.csv else base.with_name(base.name + ".csv")
    if args.dry_run:
        return _dry_run(api, ids, args)
    before = read_journal(journal_path)
    todo = [(n, i) for n, i in ids if not finished(before.get(i), args.delete_source)]
    body = {"bucket": args.bucket, "folder": args.folder, "delete_source": args.delete_source}
    cancel = threading.Event()
    migration = Migration(api, {k: v for k, v in body.items() if v is not None}, cancel)
    tally = Tally()
    report = Report(args, total=len(todo), skipped=len(ids) - len(todo))
    with journal_path.open("a", encoding="utf-8") as journal, report:
        pool = ThreadPoolExecutor(max(1, args.concurrency))
        pending: set[Future[Outcome]] = set()
        queue = iter(todo)
        try:
            while True:
                while len(pending) < args.concurrency * 2:  # a few ahead, not the whole list
                    item = next(queue, None)
                    if item is None:
                        break
                    pending.add(pool.submit(migration.one, *item))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    outcome = future.result()
                    journal.write(json.dumps(outcome.record(), ensure_ascii=False) + "\n")
                    journal.flush()
                    tally.add(outcome)
                    report.outcome(outcome, tally)
        except BaseException:
            cancel.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            journal.flush()
            os.fsync(journal.fileno())
    after = read_journal(journal_path)
    rows = write_csv(csv_path, after)
    left = [i for _, i in ids if not finished(after.get(i), args.delete_source)]
    problems = [
        (i, after.get(i, {}))
        for _, i in ids
        if after.get(i, {}).get("status") not in ("moved", "copied")
    ]
    report.summary(tally, len(ids), rows, csv_path, journal_path, problems, left)
    return 0 if not problems and not left else 1


def _dry_run(api: Api, ids: list[tuple[int, str]], args: Any) -> int:
    total = 0
    moved = 0
    problems = 0
    for number, old_id in ids:
        if not FASTDFS_ID.fullmatch(old_id):
            problems += 1
            print(json.dumps({"old_id": old_id, "status": "invalid", "line": number}) if args.json
                  else f"line {number}: not a FastDFS id: {old_id}")  # fmt: skip
            continue
        try:
            info = api.info(old_id)
        except Failure as failure:
            problems += 1
            print(json.dumps({"old_id": old_id, "status": failure.code, "detail": failure.detail})
                  if args.json else f"{old_id}: {failure}")  # fmt: skip
            continue
        total += info["file_size"]
        moved += bool(info.get("moved_from"))
    line = {"files": len(ids), "bytes": total, "already_moved": moved, "problems": problems}
    print(json.dumps(line) if args.json else
          f"{len(ids)} ids, {total / 1048576:.1f} MiB to move, {moved} already moved, "
          f"{problems} that cannot be moved")  # fmt: skip
    return 0 if not problems else 1


class Report:
    """Progress on a terminal (files, bytes, rate, ETA), JSON lines with ``--json``."""

    def __init__(self, args: Any, *, total: int, skipped: int) -> None:
        self.json = args.json
        self.started = time.monotonic()
        self.progress: Any = None
        if skipped and not self.json:
            print(f"{skipped} ids done by an earlier run (journal): skipped", file=sys.stderr)
        if not args.quiet and not args.json and sys.stdout.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]migrate"), BarColumn(), MofNCompleteColumn(),
                TextColumn("files  {task.fields[moved]}  {task.fields[rate]}"),
                TimeElapsedColumn(), TimeRemainingColumn(),
            )  # fmt: skip
            self.task = self.progress.add_task("migrate", total=total, moved="0 B", rate="")

    def __enter__(self) -> Report:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def outcome(self, outcome: Outcome, tally: Tally) -> None:
        if self.json:
            print(json.dumps(outcome.record(), ensure_ascii=False), flush=True)
            return
        if self.progress is not None:
            seconds = max(time.monotonic() - self.started, 1e-3)
            self.progress.update(self.task, advance=1, moved=_human(tally.bytes),
                                 rate=f"{tally.bytes / seconds / 1048576:.1f} MiB/s")  # fmt: skip
        if outcome.status not in ("moved", "copied"):
            where = f"line {outcome.line}: " if outcome.line else ""
            message = f"{where}{outcome.old_id}: {outcome.status}: {outcome.detail}"
            if self.progress is not None:
                self.progress.console.print(message)
            else:
                print(message, file=sys.stderr)

    def summary(self, tally: Tally, ids: int, rows: int, csv_path: Path, journal: Path,
                problems: list[tuple[str, dict[str, Any]]], left: list[str]) -> None:  # fmt: skip
        seconds = time.monotonic() - self.started
        line = {
            "summary": True, "ids": ids, "this_run": tally.by_status, "bytes": tally.bytes,
            "seconds": round(seconds, 3), "csv": str(csv_path), "mapped": rows,
            "journal": str(journal), "not_moved": len(problems),
        }  # fmt: skip
        if self.json:
            print(json.dumps(line), flush=True)
            return
        counts = ", ".join(f"{n} {status}" for status, n in sorted(tally.by_status.items()))
        print(f"{ids} ids: {counts or 'nothing to do'} in this run, {_human(tally.bytes)} in "
              f"{seconds:.1f} s; {rows} mapped in {csv_path}", file=sys.stderr)  # fmt: skip
        if problems:
            print(f"{len(problems)} not moved (see {journal}):", file=sys.stderr)
            for old_id, record in problems[:20]:
                print(
                    f"  {old_id}: {record.get('status')}: {record.get('detail')}", file=sys.stderr
                )


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size} B"
