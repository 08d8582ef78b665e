"""Unit tests of the pure pieces: ids, ranges, names, the download decision, the zip planner."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from app.api.decision import decide, is_plain
from app.api.http import content_disposition, parse_range
from app.errors import (
    FileNotFound,
    FileTooLarge,
    InvalidArgument,
    InvalidFileType,
    RangeNotSatisfiable,
    ServerBusy,
)
from app.storage.base import ByteRange, ObjectInfo, ObjectRef
from app.storage.budget import Budget, BufferPool
from app.storage.ids import FileId, new_key, parse_file_id
from app.storage.stored import StoredFile
from app.storage.validation import UploadPolicy, check_file_name, check_folder, check_metadata
from app.storage.zip import ZipLimits, ZipRequest, plan, safe_name

FDFS = "group1/M00/00/05/fwAAAWsFKtSATKktAAAADgWKGpg335.pdf"
WHEN = datetime(2026, 11, 24, 6, 5, 1, tzinfo=UTC)


# ids


@pytest.mark.parametrize(
    ("raw", "backend", "bucket", "key"),
    [
        ("s3:files/reports/3f9c_Q3 report.pdf", "s3", "files", "reports/3f9c_Q3 report.pdf"),
        ("local:files/a.txt", "local", "files", "a.txt"),
        (FDFS, "fastdfs", "group1", FDFS.split("/", 1)[1]),
        ("s3:my.bucket-1/x", "s3", "my.bucket-1", "x"),
    ],
)
def test_ids_parse_and_print_back(raw: str, backend: str, bucket: str, key: str) -> None:
    file_id = parse_file_id(raw)
    assert (file_id.backend, file_id.ref.bucket, file_id.ref.key) == (backend, bucket, key)
    assert str(file_id) == raw


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "s3:",
        "s3:files",
        "s3:files/",
        "s3:Files/x",  # S3 bucket names are lowercase
        "s3:ab/x",  # too short
        "s3:a..b/x",
        "s3:files//x",
        "s3:files/../x",
        "s3:files/a/./x",
        "s3:files/a\x00b",
        "s3:files/a\nb",
        "S3:files/x",  # the prefix is case-sensitive: this is a (malformed) FastDFS id
        "0",
        "group1/short",
        "group1/M09/../x",
        "group_with_a_too_long_name/M00/00/05/fwAAAWsFKtSATKktAAAADgWKGpg335.pdf",
        "local:files/" + "k" * 1025,
    ],
)
def test_malformed_ids_are_invalid_arguments(raw: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_file_id(raw)
    assert caught.value.file_id == raw


def test_new_keys_are_generated_never_taken() -> None:
    first, second = new_key("reports/2026", "a.pdf"), new_key("", "a.pdf")
    folder, _, leaf = first.rpartition("/")
    assert folder == "reports/2026"
    prefix, _, name = leaf.partition("_")
    assert len(prefix) == 16 and int(prefix, 16) >= 0 and name == "a.pdf"
    assert "/" not in second and second.endswith("_a.pdf")
    assert new_key("", "a.pdf") != new_key("", "a.pdf")


# ranges


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-9", 100, ByteRange(0, 9)),
        ("bytes=90-", 100, ByteRange(90, 99)),
        ("bytes=-5", 100, ByteRange(95, 99)),
        ("bytes=-500", 100, ByteRange(0, 99)),
        ("bytes=50-5000", 100, ByteRange(50, 99)),
        ("bytes = 1 - 2", 100, ByteRange(1, 2)),
        ("bytes=0-0,5-6", 100, None),  # several ranges: the whole file
    ],
)
def test_ranges(header: str, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0)]
)
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, size)
    assert caught.value.headers() == {"Content-Range": f"bytes */{size}"}


@pytest.mark.parametrize(
    "header", ["bytes=abc", "bytes=5-1", "lines=1-2", "bytes=-", "bytes=1-2-3"]
)
def test_malformed_ranges(header: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_range(header, 100)


# names


@pytest.mark.parametrize("name", ["a.pdf", "v1..2.pdf", "Makefile", ".env.example", "Отчёт 😀.pdf"])
def test_ordinary_names_pass_unchanged(name: str) -> None:
    assert check_file_name(name) == name


@pytest.mark.parametrize("name", ["", " ", "a/b", "a\\b", ".", "..", "a\x00b", "a\x1fb", "x" * 201])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument):
        check_file_name(name)


@pytest.mark.parametrize(
    ("folder", "expected"), [(None, ""), ("", ""), ("a/b/", "a/b"), ("reports", "reports")]
)
def test_folders_are_normalised(folder: str | None, expected: str) -> None:
    assert check_folder(folder) == expected


@pytest.mark.parametrize("folder", ["/abs", "a//b", "a/../b", "a/./b", "a\\b", "/".join("a" * 17)])
def test_unsafe_folders_are_refused(folder: str) -> None:
    with pytest.raises(InvalidArgument):
        check_folder(folder)


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("../../etc/passwd", "etc/passwd"),
        ("/abs/path.txt", "abs/path.txt"),
        ("C:\\Windows\\evil.exe", "Windows/evil.exe"),
        ("bad\x01name\x7f.txt", "badname.txt"),
        ("..", "fallback"),
        ("a/ /b", "a/b"),
    ],
)
def test_zip_entry_names_are_made_safe(requested: str, expected: str) -> None:
    assert safe_name(requested, "fallback") == expected


def test_metadata_rules() -> None:
    assert check_metadata({"author": "Jöhn", "a-b_c": ""}) == {"author": "Jöhn", "a-b_c": ""}
    for bad in (
        {"Author": "x"},
        {"filegate-name": "x"},
        {"k": 1},
        {"k": "a\nb"},
        {"k": "x" * 1100},
    ):
        with pytest.raises(InvalidArgument):
            check_metadata(bad)
    with pytest.raises(InvalidArgument):
        check_metadata({f"k{i}": "v" for i in range(33)})


def test_upload_policy() -> None:
    policy = UploadPolicy(max_file_size=100, blacklist=frozenset({"exe"}))
    policy.check_type("a.txt")
    with pytest.raises(InvalidFileType):
        policy.check_type("A.EXE")
    with pytest.raises(FileTooLarge):
        policy.check_declared_size(101)
    policy.check_declared_form(100 + 256 * 1024)  # a form may carry boundaries and fields
    with pytest.raises(FileTooLarge):
        policy.check_declared_form(101 + 256 * 1024)
    whitelist = UploadPolicy(whitelist=frozenset({"pdf"}))
    with pytest.raises(InvalidFileType):
        whitelist.check_type("Makefile")


# the download decision


def info(size: int = 1000, content_type: str | None = "application/pdf") -> ObjectInfo:
    return ObjectInfo(ObjectRef("files", "k"), size, '"abc"', WHEN, content_type=content_type)


def test_a_plain_request_gets_the_whole_file() -> None:
    assert is_plain({}) and not is_plain({"range": "bytes=0-1"})
    decision = decide(info(), "Q3 report.pdf", inline=False, request_headers={})
    assert (decision.status, decision.byte_range, decision.media_type) == (
        200,
        None,
        "application/pdf",
    )
    assert decision.headers["Content-Length"] == "1000"
    assert decision.headers["ETag"] == '"abc"'
    assert decision.headers["Last-Modified"] == "Tue, 24 Nov 2026 06:05:01 GMT"
    assert decision.headers["Content-Disposition"] == content_disposition("Q3 report.pdf")
    assert decision.headers["X-Content-Type-Options"] == "nosniff"
    assert decision.has_body


def test_a_range_gets_206() -> None:
    decision = decide(info(), "a.pdf", inline=False, request_headers={"range": "bytes=10-19"})
    assert (decision.status, decision.byte_range) == (206, ByteRange(10, 19))
    assert decision.headers["Content-Length"] == "10"
    assert decision.headers["Content-Range"] == "bytes 10-19/1000"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"if-none-match": '"abc"'}, 304),
        ({"if-none-match": 'W/"abc", "other"'}, 304),
        ({"if-none-match": "*"}, 304),
        ({"if-none-match": '"other"'}, 200),
        ({"if-modified-since": "Tue, 24 Nov 2026 06:05:01 GMT"}, 304),
        ({"if-modified-since": "Tue, 24 Nov 2026 06:05:00 GMT"}, 200),
        ({"if-none-match": '"other"', "if-modified-since": "Tue, 24 Nov 2026 07:00:00 GMT"}, 200),
        ({"range": "bytes=0-0", "if-range": '"abc"'}, 206),
        ({"range": "bytes=0-0", "if-range": '"changed"'}, 200),
        ({"range": "bytes=0-0", "if-range": "Tue, 24 Nov 2026 06:05:01 GMT"}, 206),
        ({"range": "bytes=0-0", "if-range": 'W/"abc"'}, 200),  # weak tags never match If-Range
    ],
)
def test_conditions(headers: dict[str, str], status: int) -> None:
    decision = decide(info(), "a.pdf", inline=False, request_headers=headers)
    assert decision.status == status
    assert decision.has_body == (status != 304)


def test_a_range_outside_the_file_is_416_before_any_byte() -> None:
    with pytest.raises(RangeNotSatisfiable):
        decide(info(10), "a.pdf", inline=False, request_headers={"range": "bytes=10-"})


@pytest.mark.parametrize(
    ("name", "content_type", "inline", "disposition"),
    [
        ("a.pdf", "application/pdf", True, "inline"),
        ("a.pdf", "application/pdf", False, "attachment"),
        ("page.html", "text/html", True, "attachment"),
        ("x.bin", "image/svg+xml", True, "attachment"),
        ("x.svg", None, True, "attachment"),
        ("feed", "application/atom+xml", True, "attachment"),
        ("photo.png", "application/octet-stream", True, "inline"),
    ],
)
def test_active_content_is_never_inline(
    name: str, content_type: str | None, inline: bool, disposition: str
) -> None:
    decision = decide(info(content_type=content_type), name, inline=inline, request_headers={})
    assert decision.headers["Content-Disposition"].split(";")[0] == disposition
    assert decision.headers["Content-Security-Policy"] == "sandbox"


def test_the_content_type_is_guessed_from_the_name_when_generic() -> None:
    decision = decide(info(content_type=None), "photo.png", inline=False, request_headers={})
    assert decision.media_type == "image/png"


# the zip planner


def stored(key: str, size: int, name: str | None = None) -> StoredFile:
    file_id = FileId("local", ObjectRef("files", key))
    return StoredFile(file_id, ObjectInfo(file_id.ref, size, '"e"', WHEN, file_name=name, crc32=0))


def request(key: str, name: str | None = None) -> ZipRequest:
    return ZipRequest(FileId("local", ObjectRef("files", key)), name)


async def test_the_planner_names_entries_and_reports_every_missing_file() -> None:
    files = {"1_a.pdf": stored("1_a.pdf", 5, "a.pdf"), "2_A.PDF": stored("2_A.PDF", 5, "A.PDF")}

    async def describe(file_id: FileId) -> StoredFile:
        if file_id.ref.key not in files:
            raise FileNotFound("No such file.")
        return files[file_id.ref.key]

    entries = await plan(
        [request("1_a.pdf"), request("2_A.PDF"), request("1_a.pdf", "dir/../x.txt")],
        describe,
        ZipLimits(),
    )
    assert [e.name for e in entries] == ["a.pdf", "A (1).PDF", "dir/x.txt"]  # ".." dropped
    with pytest.raises(FileNotFound) as caught:
        await plan([request("1_a.pdf"), request("gone1"), request("gone2")], describe, ZipLimits())
    assert caught.value.file_ids == ["local:files/gone1", "local:files/gone2"]


async def test_the_planner_enforces_the_limits_before_anything_is_read() -> None:
    async def describe(file_id: FileId) -> StoredFile:
        return stored(file_id.ref.key, 600)

    with pytest.raises(InvalidArgument):
        await plan([], describe, ZipLimits())
    with pytest.raises(FileTooLarge):
        await plan([request("a"), request("b")], describe, ZipLimits(max_entries=1))
    with pytest.raises(FileTooLarge):
        await plan([request("a"), request("b")], describe, ZipLimits(max_total_size=1000))
    assert len(await plan([request("a")], describe, ZipLimits(max_total_size=1000))) == 1


# the upload memory budget


async def test_the_budget_makes_requests_wait_in_order_then_refuses() -> None:
    budget = Budget(100, wait_seconds=0.3)
    assert await budget.acquire(60) == 60
    order: list[str] = []

    async def take(name: str, size: int) -> None:
        await budget.acquire(size)
        order.append(name)

    first = asyncio.create_task(take("first", 50))
    second = asyncio.create_task(take("second", 10))  # fits now, but waits its turn
    await asyncio.sleep(0.05)
    assert order == [] and budget.used == 60
    budget.release(60)
    await asyncio.gather(first, second)
    assert order == ["first", "second"] and budget.used == 60
    with pytest.raises(ServerBusy) as refused:
        await budget.acquire(50)
    assert refused.value.status_code == 503 and "Retry-After" in refused.value.headers()
    assert budget.used == 60  # a refusal holds nothing


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    budget = Budget(100, wait_seconds=5)
    await budget.acquire(100)
    waiting = asyncio.create_task(budget.acquire(80))
    behind = asyncio.create_task(budget.acquire(20))
    await asyncio.sleep(0.01)
    waiting.cancel()
    budget.release(30)
    assert await behind == 20
    assert budget.used == 90


async def test_pooled_buffers_are_reused_within_the_budget() -> None:
    pool = BufferPool(Budget(64, wait_seconds=1), size=32)
    first = await pool.take()
    second = await pool.take()
    assert pool.budget.used == 64
    pool.give(first)
    assert await pool.take() is first  # the same memory again, not a new allocation
    pool.give(second)
    assert pool.budget.used == 32


async def test_a_part_buffer_goes_back_to_the_pool_once_whatever_bytes_other_buffers_hold() -> None:
    """Two parts with the same bytes (the same file uploaded twice at once, or zeros): the one
    sent first must not take the other off the upload's list. It did (``list.remove`` compares
    contents): the other buffer then never went back (its budget leaked), and the first went
    back twice, so two later parts were filled in one buffer at once (stored corrupt, or refused
    by S3's checksum as BadDigest)."""
    from app.storage.s3.multipart import _Parts

    MiB = 1024 * 1024
    budget = Budget(32 * MiB, 1)
    pool = BufferPool(budget, 8 * MiB)

    async def body() -> Any:
        for fill in (b"\0", b"\0", b"\1"):
            yield fill * (8 * MiB)

    parts = _Parts(pool, aiter(body()), [])
    first, second = await parts.next(), await parts.next()
    assert first is not None and second is not None
    assert first.buffer == second.buffer and first.buffer is not second.buffer
    parts.give(second)  # sent first
    third = await parts.next()  # reuses second's buffer, now with other bytes
    assert third is not None and third.buffer is second.buffer
    parts.give(first)
    parts.give(third)
    parts.close()
    assert budget.used == 0  # every buffer's share came back
    assert len({id(b) for b in pool._free}) == len(pool._free) == 2  # each buffer once
