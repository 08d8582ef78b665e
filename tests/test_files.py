"""The endpoint suite: every test runs against the local disk and against SeaweedFS."""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from collections.abc import AsyncIterator
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import Storage, serve, settings_for

MiB = 1024 * 1024


async def upload(
    client: httpx.AsyncClient,
    name: str,
    data: bytes,
    content_type: str | None = None,
    **fields: str,
) -> httpx.Response:
    file = (name, data, content_type) if content_type else (name, data)
    return await client.post("/files/upload", data=fields, files={"file": file})


async def uploaded(client: httpx.AsyncClient, name: str, data: bytes, **fields: str) -> str:
    response = await upload(client, name, data, **fields)
    assert response.status_code == 201, response.text
    file_id: str = response.json()["file_id"]
    return file_id


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["detail"]
    return body


@pytest.mark.parametrize("size", [0, 1, 5 * MiB, 50 * MiB], ids=["0B", "1B", "5MiB", "50MiB"])
async def test_round_trip_is_byte_exact(
    client: httpx.AsyncClient, storage: Storage, size: int
) -> None:
    data = os.urandom(size)
    response = await upload(client, "blob.bin", data)
    assert response.status_code == 201, response.text
    attach = response.json()
    assert attach["file_id"].startswith(storage.prefix)
    assert attach["file_name"] == "blob.bin"
    assert attach["file_size"] == size
    assert response.headers["location"] == f"/files/{quote(attach['file_id'])}/info"
    assert await storage.read(attach["file_id"]) == data

    download = await client.get(f"/files/{attach['file_id']}/download")
    assert download.status_code == 200
    assert download.content == data
    assert download.headers["content-length"] == str(size)
    assert download.headers["etag"] == attach["etag"]
    assert download.headers["accept-ranges"] == "bytes"
    assert download.headers["x-content-type-options"] == "nosniff"

    info = (await client.get(f"/files/{attach['file_id']}/info")).json()
    assert info["file_size"] == size
    assert info["etag"] == attach["etag"]
    assert info["backend"] == storage.backend
    assert info["crc32"] == f"{zlib.crc32(data):08x}"  # every backend, one-part or multipart
    if storage.backend == "fastdfs":  # FastDFS keeps a CRC32, which becomes the ETag
        assert attach["etag"] == f'"{zlib.crc32(data):08x}"'
    elif storage.backend in ("local", "memory"):  # never changed in place: CRC-32, size
        assert attach["etag"] == f'"{zlib.crc32(data):08x}-{size:x}"'
    elif size and size < 5 * MiB:  # S3 single-part uploads: the ETag is S3's MD5
        assert attach["etag"] == f'"{hashlib.md5(data).hexdigest()}"'


async def test_key_is_generated_from_folder_and_name(
    client: httpx.AsyncClient, storage: Storage
) -> None:
    file_id = await uploaded(client, "Q3 report.pdf", b"%PDF", folder="reports/2026")
    key = file_id.removeprefix(storage.prefix)
    if storage.backend == "fastdfs":  # FastDFS names the file; the name lives in its metadata
        assert re.fullmatch(r"M00/[0-9A-F]{2}/[0-9A-F]{2}/[A-Za-z0-9_-]{27}\d{3}\.pdf", key)
        assert (await client.get(f"/files/{file_id}/info")).json()["file_name"] == "Q3 report.pdf"
        assert await storage.keys() == [key]
        return
    folder, _, leaf = key.rpartition("/")
    assert folder == "reports/2026"
    prefix, _, name = leaf.partition("_")
    assert len(prefix) == 16 and all(c in "0123456789abcdef" for c in prefix)
    assert name == "Q3 report.pdf"
    assert await storage.keys() == [key]


async def test_unicode_name_and_metadata_round_trip(client: httpx.AsyncClient) -> None:
    name = "Отчёт «Q3» 😀 résumé.txt"
    metadata = {"author": "Jöhn Ðoe", "note": "=?UTF-8?B?looks encoded?=", "plain": "ascii"}
    file_id = await uploaded(client, name, b"x", metadata=json.dumps(metadata))
    info = (await client.get(f"/files/{file_id}/info")).json()
    assert info["file_name"] == name
    assert info["metadata"] == metadata
    assert info["content_type"] == "text/plain"
    download = await client.get(f"/files/{file_id}/download")
    disposition = download.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="')
    assert f"filename*=UTF-8''{quote(name, safe='')}" in disposition
    assert disposition.encode().isascii()


async def test_percent_encoded_id_is_accepted(client: httpx.AsyncClient) -> None:
    file_id = await uploaded(client, "a b.txt", b"hello")
    response = await client.get(f"/files/{quote(file_id, safe='')}/download")
    assert response.status_code == 200
    assert response.content == b"hello"


async def test_raw_put_stores_body_type_and_meta_headers(
    client: httpx.AsyncClient, storage: Storage
) -> None:
    data = os.urandom(300_000)
    response = await client.put(
        f"/files/upload/{quote('naïve data.bin')}",
        params={"folder": "raw"},
        content=data,
        headers=[(b"Content-Type", b"application/x-custom"), (b"X-Meta-Source", "cürl".encode())],
    )
    assert response.status_code == 201, response.text
    attach = response.json()
    assert attach["file_name"] == "naïve data.bin"
    assert attach["content_type"] == "application/x-custom"
    assert await storage.read(attach["file_id"]) == data
    info = (await client.get(f"/files/{attach['file_id']}/info")).json()
    assert info["metadata"] == {"source": "cürl"}
    assert info["content_type"] == "application/x-custom"


async def test_content_type_is_guessed_when_not_given(client: httpx.AsyncClient) -> None:
    generic = await upload(client, "photo.png", b"png", "application/octet-stream")
    assert generic.json()["content_type"] == "image/png"
    given = await upload(client, "photo.png", b"png", "image/x-special")
    assert given.json()["content_type"] == "image/x-special"
    unknown = await upload(client, "data.unknownext", b"?")
    assert unknown.json()["content_type"] == "application/octet-stream"


@pytest.mark.parametrize(
    ("header", "status", "body", "content_range"),
    [
        ("bytes=0-9", 206, slice(0, 10), "bytes 0-9/1000"),
        ("bytes=990-", 206, slice(990, 1000), "bytes 990-999/1000"),
        ("bytes=-5", 206, slice(995, 1000), "bytes 995-999/1000"),
        ("bytes=500-5000", 206, slice(500, 1000), "bytes 500-999/1000"),
        ("bytes=-5000", 206, slice(0, 1000), "bytes 0-999/1000"),
        ("bytes=0-0,5-6", 200, slice(0, 1000), None),
    ],
)
async def test_ranges(
    client: httpx.AsyncClient,
    header: str,
    status: int,
    body: slice,
    content_range: str | None,
) -> None:
    data = os.urandom(1000)
    file_id = await uploaded(client, "r.bin", data)
    response = await client.get(f"/files/{file_id}/download", headers={"Range": header})
    assert response.status_code == status
    assert response.content == data[body]
    assert response.headers["content-length"] == str(len(data[body]))
    assert response.headers.get("content-range") == content_range


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
async def test_unsatisfiable_range_is_416(client: httpx.AsyncClient, header: str) -> None:
    file_id = await uploaded(client, "r.bin", os.urandom(1000))
    response = await client.get(f"/files/{file_id}/download", headers={"Range": header})
    assert_error(response, 416, "range_not_satisfiable")
    assert response.headers["content-range"] == "bytes */1000"


async def test_any_range_of_an_empty_file_is_416(client: httpx.AsyncClient) -> None:
    file_id = await uploaded(client, "empty.txt", b"")
    response = await client.get(f"/files/{file_id}/download", headers={"Range": "bytes=0-"})
    assert_error(response, 416, "range_not_satisfiable")
    assert response.headers["content-range"] == "bytes */0"


@pytest.mark.parametrize("header", ["bytes=abc", "bytes=5-1", "lines=1-2", "bytes=-"])
async def test_malformed_range_is_400(client: httpx.AsyncClient, header: str) -> None:
    file_id = await uploaded(client, "r.bin", b"0123456789")
    response = await client.get(f"/files/{file_id}/download", headers={"Range": header})
    assert_error(response, 400, "invalid_argument")


async def test_if_range(client: httpx.AsyncClient) -> None:
    data = b"0123456789"
    file_id = await uploaded(client, "r.bin", data)
    first = await client.get(f"/files/{file_id}/download")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    url = f"/files/{file_id}/download"
    same = await client.get(url, headers={"Range": "bytes=2-3", "If-Range": etag})
    assert (same.status_code, same.content) == (206, b"23")
    by_date = await client.get(url, headers={"Range": "bytes=2-3", "If-Range": modified})
    assert (by_date.status_code, by_date.content) == (206, b"23")
    stale = await client.get(url, headers={"Range": "bytes=2-3", "If-Range": '"other"'})
    assert (stale.status_code, stale.content) == (200, data)


async def test_conditional_get_and_head(client: httpx.AsyncClient) -> None:
    file_id = await uploaded(client, "c.txt", b"conditional")
    url = f"/files/{file_id}/download"
    first = await client.get(url)
    etag, modified = first.headers["etag"], first.headers["last-modified"]

    not_modified = await client.get(url, headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    assert (await client.get(url, headers={"If-None-Match": f'"x", W/{etag}'})).status_code == 304
    assert (await client.get(url, headers={"If-None-Match": '"other"'})).status_code == 200

    assert (await client.get(url, headers={"If-Modified-Since": modified})).status_code == 304
    earlier = parsedate_to_datetime(modified) - timedelta(seconds=10)
    since = format_datetime(earlier, usegmt=True)
    assert (await client.get(url, headers={"If-Modified-Since": since})).status_code == 200

    head = await client.head(url)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(b"conditional"))
    assert head.headers["etag"] == etag
    assert head.headers["content-type"].startswith("text/plain")
    ranged = await client.head(url, headers={"Range": "bytes=0-3"})
    assert ranged.status_code == 206
    assert ranged.headers["content-range"] == "bytes 0-3/11"


async def test_inline_and_filename_override(client: httpx.AsyncClient) -> None:
    file_id = await uploaded(client, "a.txt", b"x")
    url = f"/files/{file_id}/download"
    inline = await client.get(url, params={"inline": "true"})
    assert inline.headers["content-disposition"].startswith('inline; filename="a.txt"')
    renamed = await client.get(url, params={"filename": "über.txt"})
    assert renamed.headers["content-disposition"] == (
        "attachment; filename=\"uber.txt\"; filename*=UTF-8''%C3%BCber.txt"
    )
    assert_error(await client.get(url, params={"filename": "../x"}), 400, "invalid_argument")


async def test_missing_file_is_404_json(client: httpx.AsyncClient, storage: Storage) -> None:
    missing = storage.missing_id()
    for response in (
        await client.get(f"/files/{missing}/download"),
        await client.get(f"/files/{missing}/info"),
    ):
        body = assert_error(response, 404, "file_not_found")
        assert body["file_id"] == missing
    head = await client.head(f"/files/{missing}/download")
    assert head.status_code == 404


async def test_delete_is_idempotent(client: httpx.AsyncClient, storage: Storage) -> None:
    file_id = await uploaded(client, "d.txt", b"bye")
    for _ in range(2):
        response = await client.delete(f"/files/{file_id}")
        assert response.status_code == 200
        assert response.json() == {"detail": "deleted", "file_id": file_id}
    assert await storage.keys() == []
    assert (await client.get(f"/files/{file_id}/info")).status_code == 404


async def test_batch_upload_keeps_request_order(
    client: httpx.AsyncClient, storage: Storage
) -> None:
    blobs = [("one.txt", b"1" * 10), ("two.bin", os.urandom(9 * MiB)), ("three.txt", b"")]
    response = await client.post(
        "/files/batch-upload",
        data={"folder": "batch", "metadata": '{"k": "v"}'},
        files=[("files", blob) for blob in blobs],
    )
    assert response.status_code == 201, response.text
    attaches = response.json()
    assert [a["file_name"] for a in attaches] == ["one.txt", "two.bin", "three.txt"]
    for attach, (_, data) in zip(attaches, blobs, strict=True):
        assert attach["file_size"] == len(data)
        assert await storage.read(attach["file_id"]) == data
        info = (await client.get(f"/files/{attach['file_id']}/info")).json()
        assert info["metadata"] == {"k": "v"}


async def test_batch_is_all_or_nothing_on_a_bad_file(storage: Storage) -> None:
    async with serve(settings_for(storage, file_blacklist=["exe"])) as client:
        response = await client.post(
            "/files/batch-upload",
            files=[
                ("files", ("ok.txt", b"fine")),
                ("files", ("big.bin", os.urandom(9 * MiB))),
                ("files", ("evil.exe", b"MZ")),
            ],
        )
        assert_error(response, 400, "invalid_file_type")
    assert await storage.keys() == []


async def test_batch_is_all_or_nothing_on_size(storage: Storage) -> None:
    async with serve(settings_for(storage, max_file_size="1MiB")) as client:
        response = await client.post(
            "/files/batch-upload",
            files=[("files", ("a.txt", b"a")), ("files", ("b.bin", os.urandom(2 * MiB)))],
        )
        assert_error(response, 413, "file_too_large")
    assert await storage.keys() == []


async def _chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_size_limit_while_streaming_leaves_nothing(storage: Storage) -> None:
    """No Content-Length (chunked): the limit trips mid-stream, after multipart upload began."""
    async with serve(settings_for(storage, max_file_size="20MiB")) as client:
        response = await client.put("/files/upload/big.bin", content=_chunks(os.urandom(30 * MiB)))
        assert_error(response, 413, "file_too_large")
        exact = os.urandom(20 * MiB)
        ok = await client.put("/files/upload/exact.bin", content=_chunks(exact))
        assert ok.status_code == 201
    assert await storage.keys() == [ok.json()["file_id"].removeprefix(storage.prefix)]


async def test_declared_length_over_limit_is_refused_before_reading(storage: Storage) -> None:
    async with serve(settings_for(storage, max_file_size="1MiB")) as client:
        raw = await client.put("/files/upload/big.bin", content=os.urandom(2 * MiB))
        assert_error(raw, 413, "file_too_large")
        form = await upload(client, "big.bin", os.urandom(2 * MiB))
        assert_error(form, 413, "file_too_large")
    assert await storage.keys() == []


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({}, "../evil.txt"),
        ({}, "a/b.txt"),
        ({}, "..\\evil.txt"),
        ({}, ".."),
        ({}, ""),
        ({}, "x" * 201),
        ({"folder": "../escape"}, "ok.txt"),
        ({"folder": "a/../../b"}, "ok.txt"),
        ({"folder": "/abs"}, "ok.txt"),
        ({"folder": "a//b"}, "ok.txt"),
        ({"metadata": "not json"}, "ok.txt"),
        ({"metadata": '["list"]'}, "ok.txt"),
        ({"metadata": '{"Upper": "x"}'}, "ok.txt"),
        ({"metadata": '{"n": 1}'}, "ok.txt"),
        ({"metadata": '{"filegate-name": "x"}'}, "ok.txt"),
        ({"metadata": json.dumps({f"k{i}": "v" for i in range(33)})}, "ok.txt"),
        ({"metadata": json.dumps({"big": "x" * 1100})}, "ok.txt"),
    ],
)
async def test_unsafe_input_is_400_and_stores_nothing(
    client: httpx.AsyncClient, storage: Storage, fields: dict[str, str], name: str
) -> None:
    assert_error(await upload(client, name, b"data", **fields), 400, "invalid_argument")
    assert await storage.keys() == []


@pytest.mark.parametrize("name", ["..%2Fevil.txt", "%2E%2E"])
async def test_unsafe_raw_name_is_400(
    client: httpx.AsyncClient, storage: Storage, name: str
) -> None:
    assert_error(await client.put(f"/files/upload/{name}", content=b"x"), 400, "invalid_argument")
    assert await storage.keys() == []


async def test_traversal_in_ids_is_400(client: httpx.AsyncClient, storage: Storage) -> None:
    for file_id in (
        f"{storage.prefix}%2E%2E/%2E%2E/etc/passwd",
        f"{storage.prefix}a/%2E%2E/%2E%2E/x",
        f"{storage.prefix}/etc/passwd",
        f"{storage.prefix}a%00b",
        f"{storage.backend}:%2E%2E/x",
    ):
        for response in (
            await client.get(f"/files/{file_id}/download"),
            await client.get(f"/files/{file_id}/info"),
            await client.delete(f"/files/{file_id}"),
        ):
            assert_error(response, 400, "invalid_argument")


async def test_ordinary_names_are_fine(client: httpx.AsyncClient) -> None:
    for name in ("v1..2.pdf", "Makefile", ".env.example", "name with spaces (1).txt"):
        response = await upload(client, name, b"x")
        assert response.status_code == 201, (name, response.text)
        assert response.json()["file_name"] == name


async def test_whitelist_and_blacklist(storage: Storage) -> None:
    settings = settings_for(storage, file_whitelist="pdf,.PNG", file_blacklist="exe")
    async with serve(settings) as client:
        assert (await upload(client, "a.pdf", b"x")).status_code == 201
        assert (await upload(client, "b.Png", b"x")).status_code == 201
        assert_error(await upload(client, "c.txt", b"x"), 400, "invalid_file_type")
        assert_error(await upload(client, "Makefile", b"x"), 400, "invalid_file_type")
        raw = await client.put("/files/upload/d.exe", content=b"x")
        assert_error(raw, 400, "invalid_file_type")
    assert len(await storage.keys()) == 2


async def test_bucket_outside_allowlist_is_403(client: httpx.AsyncClient, storage: Storage) -> None:
    response = await upload(client, "a.txt", b"x", bucket="not-allowed")
    if storage.backend == "fastdfs":  # the tracker picks the group: no bucket to name
        assert_error(response, 400, "invalid_argument")
        assert await storage.keys() == []
        return
    assert_error(response, 403, "bucket_not_allowed")
    other = f"{storage.backend}:not-allowed/0123456789abcdef_a.txt"
    for response in (
        await client.get(f"/files/{other}/info"),
        await client.get(f"/files/{other}/download"),
        await client.delete(f"/files/{other}"),
    ):
        assert_error(response, 403, "bucket_not_allowed")
    assert await storage.keys() == []


ENABLED = {
    "local": {"local"},
    "s3": {"s3"},
    "fastdfs": {"fastdfs"},
    "hybrid": {"s3", "fastdfs"},
    "memory": {"memory"},
}
ONE_ID_PER_BACKEND = {
    "local": "local:files/0123456789abcdef_x.txt",
    "memory": "memory:files/0123456789abcdef_x.txt",
    "s3": "s3:files/0123456789abcdef_x.txt",
    "fastdfs": "group1/M00/00/05/fwAAAWsFKtSATKktAAAADgWKGpg335.pdf",
}


async def test_ids_of_other_backends_are_403(client: httpx.AsyncClient, storage: Storage) -> None:
    for backend, file_id in ONE_ID_PER_BACKEND.items():
        if backend in ENABLED[storage.mode]:
            continue
        for response in (
            await client.get(f"/files/{file_id}/info"),
            await client.get(f"/files/{file_id}/download"),
            await client.delete(f"/files/{file_id}"),
        ):
            assert_error(response, 403, "route_not_supported")


async def test_form_shape_errors(client: httpx.AsyncClient, storage: Storage) -> None:
    no_file = await client.post("/files/upload", data={"folder": "x"}, files={"other": ("a", b"")})
    assert_error(no_file, 400, "invalid_argument")
    not_form = await client.post(
        "/files/upload", content=b"raw", headers={"Content-Type": "text/plain"}
    )
    assert_error(not_form, 400, "invalid_argument")
    two = await client.post(
        "/files/upload", files=[("file", ("a.txt", b"a")), ("file", ("b.txt", b"b"))]
    )
    assert_error(two, 400, "invalid_argument")
    truncated = await client.post(
        "/files/upload",
        content=b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\npartial',
        headers={"Content-Type": "multipart/form-data; boundary=XX"},
    )
    assert_error(truncated, 400, "invalid_argument")
    late_field = await client.post(
        "/files/upload",
        content=(
            b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nabc\r\n'
            b'--XX\r\nContent-Disposition: form-data; name="folder"\r\n\r\nlate\r\n--XX--\r\n'
        ),
        headers={"Content-Type": "multipart/form-data; boundary=XX"},
    )
    assert_error(late_field, 400, "invalid_argument")
    control = await client.post(
        "/files/upload",
        content=b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a\x01b.txt"\r\n'
        b"\r\nabc\r\n--XX--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=XX"},
    )
    assert_error(control, 400, "invalid_argument")
    assert await storage.keys() == []


async def test_unknown_route_and_method_are_json(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/nope"), 404, "not_found")
    assert_error(await client.get("/files/upload"), 405, "method_not_allowed")
    bad_query = await client.get("/files/local:files/abc_x/download", params={"inline": "maybe"})
    assert_error(bad_query, 400, "invalid_argument")


async def test_symlinks_cannot_lead_out_of_the_local_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    from app.settings import Settings

    async with serve(Settings(_env_file=None, local_root=tmp_path / "data")) as client:
        await uploaded(client, "a.txt", b"a")  # creates the bucket directory
        (tmp_path / "data" / "files" / "link").symlink_to(outside)
        for response in (
            await client.get("/files/local:files/link/secret.txt/download"),
            await client.get("/files/local:files/link/secret.txt/info"),
            await client.delete("/files/local:files/link/secret.txt"),
            await client.put("/files/upload/x.txt", params={"folder": "link"}, content=b"x"),
        ):
            assert_error(response, 400, "invalid_argument")
    assert (outside / "secret.txt").read_text() == "not yours"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
