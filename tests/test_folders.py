"""Folders and many files at once: listing, summary, batch delete, delete a folder, zip a folder,
copy and move; against the local disk, SeaweedFS and the FastDFS emulator (and hybrid mode)."""

from __future__ import annotations

import asyncio
import io
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Storage, make_storage, s3_admin, serve, settings_for
from tests.test_fastdfs import legacy_upload
from tests.test_files import assert_error, uploaded

MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
async def listable(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    return await make_storage(request.param, request, tmp_path)


async def arrange(storage: Storage, keys: list[str]) -> None:
    """Objects put straight into the storage (a tiny body each: the key)."""
    if storage.root is not None:
        for key in keys:
            path = storage.root / storage.bucket / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(key.encode())
        return
    assert storage.endpoint is not None
    async with s3_admin(storage.endpoint) as s3:
        for start in range(0, len(keys), 100):
            await asyncio.gather(
                *(
                    s3.put_object(Bucket=storage.bucket, Key=key, Body=key.encode())
                    for key in keys[start : start + 100]
                )
            )


async def all_pages(
    client: httpx.AsyncClient, params: dict[str, Any], between: Any = None
) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        answer = await client.get(
            "/files", params={**params, **({"cursor": cursor} if cursor else {})}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        pages.append([item["file_id"] for item in body["files"]] + body["folders"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        if between is not None:
            await between(len(pages))


async def test_pagination_gives_every_object_once_in_order(listable: Storage) -> None:
    """2,500 objects in nested folders, pages of 333: every object exactly once, in key order,
    also while new files are added between the pages."""
    keys = sorted(f"big/{n % 7}/{n:05d}-{'x' * (n % 3)}.txt" for n in range(2500))
    await arrange(listable, keys)

    async def add_more(page: int) -> None:  # before and after the cursor
        await arrange(listable, [f"big/0/{page:05d}-new.txt", f"big/9/{page:05d}-late.txt"])

    async with serve(settings_for(listable)) as client:
        params = {"prefix": f"{listable.prefix}big/", "delimiter": "", "limit": 333}
        pages = await all_pages(client, params, between=add_more)
    listed = [item.removeprefix(listable.prefix) for page in pages for item in page]
    assert listed == sorted(listed)  # key order, across pages
    assert len(listed) == len(set(listed))  # nothing twice
    assert set(keys) <= set(listed)  # every original object
    assert all(len(page) <= 333 for page in pages)
    added = set(listed) - set(keys)
    assert all(key.endswith(("-new.txt", "-late.txt")) for key in added)
    assert any(key.startswith("big/9/") for key in added)  # ones after the cursor show up


async def test_pages_of_one_level_give_each_folder_once(listable: Storage) -> None:
    """Pages of one entry over folders: a page that ends with a folder goes on after everything
    in it (S3: StartAfter the folder and U+10FFFF), and any key is a place to start after."""
    keys = ["a/1.txt", "a/2.txt", "a/b/3.txt", "b/4.txt", "c.txt", "d/5.txt", "d/6.txt", "e.txt"]
    await arrange(listable, keys)
    async with serve(settings_for(listable)) as client:
        params: dict[str, Any] = {"prefix": listable.prefix, "delimiter": "/", "limit": 1}
        pages = await all_pages(client, params)
        listed = [item.removeprefix(listable.prefix) for page in pages for item in page]
        assert listed == ["a/", "b/", "c.txt", "d/", "e.txt"]
        after = await client.get("/files", params={**params, "limit": 10, "cursor": "b/4.txt"})
        body = after.json()
        folders = [f.removeprefix(listable.prefix) for f in body["folders"]]
        assert folders == ["d/"] and body["next_cursor"] is None
        names = [f["file_id"].removeprefix(listable.prefix) for f in body["files"]]
        assert names == ["c.txt", "e.txt"]


async def test_one_level_with_folders_and_names(listable: Storage) -> None:
    async with serve(settings_for(listable)) as client:
        a = await uploaded(client, "Q3 report.pdf", b"a" * 10, folder="reports")
        await uploaded(client, "b.txt", b"b", folder="reports/2026")
        await uploaded(client, "c.txt", b"c", folder="other")
        root = (await client.get("/files")).json()
        assert root["files"] == []
        assert root["folders"] == [f"{listable.prefix}other/", f"{listable.prefix}reports/"]
        level = (await client.get("/files", params={"prefix": f"{listable.prefix}reports/"})).json()
        assert level["folders"] == [f"{listable.prefix}reports/2026/"]
        (item,) = level["files"]
        assert item["file_id"] == a
        assert (item["file_name"], item["file_size"]) == ("Q3 report.pdf", 10)
        info = (await client.get(f"/files/{a}/info")).json()
        assert item["etag"] == info["etag"]
        summary = (
            await client.get("/files/summary", params={"prefix": f"{listable.prefix}reports/"})
        ).json()
        assert summary == {
            "prefix": f"{listable.prefix}reports/",
            "file_count": 2,
            "total_size": 11,
            "complete": True,
        }
        # resumable uploads in progress are never listed
        created = await client.post(
            "/files/tus",
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Length": "5",
                "Upload-Metadata": "filename eC50eHQ=",
            },
        )
        assert created.status_code == 201
        everything = (await client.get("/files", params={"delimiter": ""})).json()
        assert not any(".filegate" in f["file_id"] for f in everything["files"])
        assert len(everything["files"]) == 3
        # a cursor is a position in key order: any text starts after itself
        after = await client.get("/files", params={"delimiter": "", "cursor": "~"})
        assert after.status_code == 200 and after.json()["files"] == []
        everything_again = await client.get("/files", params={"delimiter": "", "cursor": "!"})
        assert everything_again.json()["files"] == everything["files"]
        assert_error(
            await client.get("/files", params={"cursor": "a\x01b"}), 400, "invalid_argument"
        )
        assert_error(
            await client.get("/files", params={"cursor": "x" * 1025}), 400, "invalid_argument"
        )


async def test_fastdfs_cannot_list(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    storage = await make_storage("fastdfs", request, tmp_path)
    async with serve(settings_for(storage)) as client:
        assert_error(await client.get("/files"), 400, "invalid_argument")
        refused = await client.get("/files", params={"prefix": "group1/M00/"})
        assert_error(refused, 400, "invalid_argument")


KEYS: list[dict[str, Any]] = [
    {"name": "admin", "key": "admin-key-0123456789", "scopes": ["read", "write", "delete"]},
    {"name": "reader", "key": "reader-key-012345678", "scopes": ["read"]},
    {"name": "team", "key": "team-key-0123456789a", "scopes": ["read", "write", "delete"],
     "folders": ["team-a"]},
]  # fmt: skip
ADMIN = {"X-API-Key": "admin-key-0123456789"}
READER = {"X-API-Key": "reader-key-012345678"}
TEAM = {"X-API-Key": "team-key-0123456789a"}


async def test_keys_see_only_their_folders(tmp_path: Path) -> None:
    storage = Storage("local", "local", "files", root=tmp_path / "data")
    async with serve(settings_for(storage, api_keys=KEYS)) as client:
        for folder in ("team-a", "team-b/secret"):
            answer = await client.post(
                "/files/upload", data={"folder": folder}, files={"file": ("x.txt", b"x")},
                headers=ADMIN,
            )  # fmt: skip
            assert answer.status_code == 201
        assert_error(await client.get("/files", headers=TEAM), 403, "forbidden")  # the root
        outside = await client.get("/files", params={"prefix": "local:files/team-b/"}, headers=TEAM)
        assert_error(outside, 403, "forbidden")
        inside = await client.get("/files", params={"prefix": "local:files/team-a/"}, headers=TEAM)
        assert inside.status_code == 200 and len(inside.json()["files"]) == 1
        assert_error(
            await client.get("/files/summary", params={"prefix": "local:files/"}, headers=TEAM),
            403,
            "forbidden",
        )
        refused = await client.post(
            "/files/delete-prefix", json={"prefix": "local:files/team-a/"}, headers=READER
        )
        assert_error(refused, 403, "forbidden")
        listed = await client.get(
            "/files", params={"prefix": "local:files/team-b/"}, headers=READER
        )
        assert listed.status_code == 200  # read scope lists
        assert_error(await client.get("/files"), 401, "unauthorized")


async def test_batch_delete_checks_every_id_first(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Hybrid mode: S3 files and a legacy FastDFS file in one request."""
    storage = await make_storage("hybrid", request, tmp_path)
    assert storage.fastdfs is not None
    legacy = await legacy_upload(storage.fastdfs, b"legacy bytes", "old.log")
    async with serve(settings_for(storage)) as client:
        ids = [await uploaded(client, f"{n}.txt", b"n" * n) for n in range(1, 5)]
        missing = f"s3:{storage.bucket}/0123456789abcdef_gone.txt"
        malformed = await client.post(
            "/files/batch-delete", json={"file_ids": [*ids, "s3:files/../x"]}
        )
        assert_error(malformed, 400, "invalid_argument")
        forbidden = await client.post(
            "/files/batch-delete", json={"file_ids": [*ids, "local:files/0123456789abcdef_a"]}
        )
        assert_error(forbidden, 403, "route_not_supported")
        assert len([k for k in await storage.keys()]) == 4  # nothing was deleted
        assert_error(
            await client.post("/files/batch-delete", json={"file_ids": []}), 400, "invalid_argument"
        )
        done = await client.post("/files/batch-delete", json={"file_ids": [*ids, missing, legacy]})
        assert done.status_code == 200, done.text
        assert done.json() == {"deleted": [*ids, missing, legacy], "errors": []}
        assert await storage.keys() == []
        gone = storage.fastdfs.storage.path(legacy.split("/", 1)[1])
        assert gone is None or not gone.exists()
        assert (await client.get(f"/files/{legacy}/info")).status_code == 404


async def test_delete_a_folder(listable: Storage) -> None:
    keys = [f"tmp/{n % 5}/{n:04d}.bin" for n in range(1200)] + ["keep/a.bin", "tmpx/b.bin"]
    await arrange(listable, keys)
    async with serve(settings_for(listable)) as client:
        prefix = f"{listable.prefix}tmp/"
        dry = await client.post("/files/delete-prefix", json={"prefix": prefix, "dry_run": True})
        assert dry.json() == {"prefix": prefix, "file_count": 1200, "deleted": False}
        assert len(await listable.keys()) == 1202
        for root in (f"{listable.prefix}", f"{listable.prefix}tmp"):
            refused = await client.post("/files/delete-prefix", json={"prefix": root})
            assert_error(refused, 400, "invalid_argument")
        done = await client.post("/files/delete-prefix", json={"prefix": prefix})
        assert done.json() == {"prefix": prefix, "file_count": 1200, "deleted": True}
        assert await listable.keys() == ["keep/a.bin", "tmpx/b.bin"]
        under = await client.get("/files", params={"prefix": prefix, "delimiter": ""})
        assert under.json() == {"files": [], "folders": [], "next_cursor": None}
        if listable.root is not None:  # no empty folders left behind (SeaweedFS keeps its own)
            listed = (await client.get("/files")).json()
            assert listed["folders"] == [f"{listable.prefix}keep/", f"{listable.prefix}tmpx/"]


async def test_zip_a_folder(listable: Storage) -> None:
    async with serve(settings_for(listable, zip_max_entries=3)) as client:
        await uploaded(client, "a.txt", b"alpha", folder="album")
        await uploaded(client, "b.txt", b"beta", folder="album/inner")
        await uploaded(client, "a.txt", b"again", folder="album")
        answer = await client.get(
            "/files/download-zip", params={"prefix": f"{listable.prefix}album/"}
        )
        assert answer.status_code == 200, answer.text
        assert 'filename="album.zip"' in answer.headers["content-disposition"]
        with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
            contents = {name: archive.read(name) for name in archive.namelist()}
        assert sorted(contents) == ["a (1).txt", "a.txt", "inner/b.txt"]
        assert sorted(contents.values()) == [b"again", b"alpha", b"beta"]
        await uploaded(client, "d.txt", b"d", folder="album")
        over = await client.get(
            "/files/download-zip", params={"prefix": f"{listable.prefix}album/"}
        )
        assert_error(over, 413, "file_too_large")
        empty = await client.get(
            "/files/download-zip", params={"prefix": f"{listable.prefix}none/"}
        )
        assert_error(empty, 400, "invalid_argument")


async def test_copy_and_move_within_a_backend(listable: Storage) -> None:
    data = os.urandom(9 * MiB)  # on S3: a multipart file, copied server-side with its CRC-32
    async with serve(settings_for(listable)) as client:
        source = await client.put(
            "/files/upload/report.pdf?folder=in", content=data, headers={"X-Meta-Author": "ann"}
        )
        source_id = source.json()["file_id"]
        copied = await client.post(f"/files/{source_id}/copy", json={"folder": "out"})
        assert copied.status_code == 201, copied.text
        copy = copied.json()
        assert copy["file_id"].startswith(f"{listable.prefix}out/") and copy["file_id"] != source_id
        assert copy["file_name"] == "report.pdf" and copy["file_size"] == len(data)
        info = (await client.get(f"/files/{copy['file_id']}/info")).json()
        assert (info["content_type"], info["metadata"]) == ("application/pdf", {"author": "ann"})
        assert await listable.read(copy["file_id"]) == data
        zipped = await client.post("/files/download-zip", json=[{"file_id": copy["file_id"]}])
        assert zipped.content[8:10] == b"\x00\x00"  # stored as it is: its CRC-32 is known
        moved = await client.post(
            f"/files/{source_id}/copy", json={"file_name": "renamed.pdf", "delete_source": True}
        )
        assert moved.status_code == 201
        assert moved.json()["file_name"] == "renamed.pdf"
        assert (await client.get(f"/files/{source_id}/info")).status_code == 404
        assert await listable.read(moved.json()["file_id"]) == data
        assert_error(
            await client.post(f"/files/{listable.missing_id()}/copy", json={}),
            404,
            "file_not_found",
        )


async def test_a_legacy_fastdfs_file_moves_to_s3(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Hybrid mode: a legacy FastDFS file is moved to S3 and served by its new s3: id, and by its
    old id too (tests/test_migrate.py has the rest); the bytes stream across in constant memory,
    name and type carried over."""
    storage = await make_storage("hybrid", request, tmp_path)
    assert storage.fastdfs is not None
    data = os.urandom(3 * MiB)
    async with serve(settings_for(storage)) as client:
        legacy = await legacy_upload(storage.fastdfs, data, "old.log")
        moved = await client.post(
            f"/files/{legacy}/copy", json={"delete_source": True, "folder": "migrated"}
        )
        assert moved.status_code == 201, moved.text
        new_id = moved.json()["file_id"]
        assert new_id.startswith(f"s3:{storage.bucket}/migrated/") and new_id.endswith("_old.log")
        served = await client.get(f"/files/{new_id}/download")
        assert served.content == data
        info = (await client.get(f"/files/{legacy}/info")).json()
        assert info["file_id"] == new_id and info["moved_from"] == legacy
        back = await client.post(f"/files/{new_id}/copy", json={"backend": "fastdfs"})
        assert back.status_code == 201, back.text
        assert (await client.get(f"/files/{back.json()['file_id']}/download")).content == data
    # a move that may not delete its source copies nothing
    async with serve(settings_for(storage, fastdfs_delete_enabled=False)) as client:
        before = await storage.keys()
        kept = await legacy_upload(storage.fastdfs, b"kept", "kept.txt")
        refused = await client.post(f"/files/{kept}/copy", json={"delete_source": True})
        assert_error(refused, 403, "delete_not_supported")
        assert await storage.keys() == before


async def test_a_move_cut_midway_keeps_the_source_and_leaves_no_copy(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Hybrid mode: FastDFS breaks off while a 20 MiB legacy file streams to S3 (several parts
    sent already). The move fails with 503, nothing is left on S3 (no object, no pending
    multipart upload), and the source is intact; once FastDFS is well, the same move works."""
    storage = await make_storage("hybrid", request, tmp_path)
    assert storage.fastdfs is not None
    data = os.urandom(20 * MiB)
    async with serve(settings_for(storage)) as client:
        legacy = await legacy_upload(storage.fastdfs, data, "old.bin")
        before = await storage.keys()
        storage.fastdfs.storage.fault = "eof_download"
        cut = await client.post(f"/files/{legacy}/copy", json={"delete_source": True})
        assert_error(cut, 503, "backend_unavailable")
        storage.fastdfs.storage.fault = None
        assert await storage.keys() == before
        assert (await client.get(f"/files/{legacy}/download")).content == data
        moved = await client.post(f"/files/{legacy}/copy", json={"delete_source": True})
        assert moved.status_code == 201, moved.text
        assert (await client.get(f"/files/{moved.json()['file_id']}/download")).content == data
        info = (await client.get(f"/files/{legacy}/info")).json()
        assert info["file_id"] == moved.json()["file_id"]  # the old id follows it


async def test_s3_copies_server_side_when_the_write_pair_may_read(
    seaweed: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With a write pair that may also read (CopyObject reads the source with it), S3 copies the
    bytes itself; with a write-only pair (the other tests) filegate streams them."""
    from tests.conftest import s3_settings
    from tests.servers import ADMIN as ADMIN_PAIR

    settings = s3_settings(
        seaweed.endpoint, bucket, s3_access_key_id=ADMIN_PAIR[0], s3_secret_access_key=ADMIN_PAIR[1]
    )
    data = os.urandom(9 * MiB)
    caplog.set_level("DEBUG", logger="app.storage.s3.copy")
    async with serve(settings) as client:
        source = (await client.put("/files/upload/big.bin", content=data)).json()["file_id"]
        copied = await client.post(f"/files/{source}/copy", json={"folder": "copies"})
        assert copied.status_code == 201, copied.text
        copy_id = copied.json()["file_id"]
        assert (await client.get(f"/files/{copy_id}/download")).content == data
        zipped = await client.post("/files/download-zip", json=[{"file_id": copy_id}])
        assert zipped.content[8:10] == b"\x00\x00"  # the CRC-32 came along
    assert any("server-side" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("pair", ["may read", "write only"])
async def test_s3_copies_above_one_copy_object_in_parts(
    seaweed: Any, bucket: str, pair: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Above ``S3_COPY_MAX_SIZE`` (5 GiB on AWS; 5 MiB here, its floor) S3 copies the object in
    parts (``UploadPartCopy``). A write pair that may not read the source gets ``AccessDenied``
    on the first part: that multipart upload is aborted and the bytes stream instead. Either way
    the copy is byte-identical with its CRC-32, and no multipart upload is left pending."""
    from tests.conftest import s3_settings
    from tests.servers import ADMIN as ADMIN_PAIR

    keys = (
        {"s3_access_key_id": ADMIN_PAIR[0], "s3_secret_access_key": ADMIN_PAIR[1]}
        if pair == "may read"
        else {}
    )
    settings = s3_settings(seaweed.endpoint, bucket, s3_copy_max_size=5 * MiB, **keys)
    data = os.urandom(12 * MiB + 3)
    caplog.set_level("DEBUG", logger="app.storage.s3.copy")
    async with serve(settings) as client:
        source = (await client.put("/files/upload/huge.bin", content=data)).json()["file_id"]
        copied = await client.post(f"/files/{source}/copy", json={"folder": "copies"})
        assert copied.status_code == 201, copied.text
        copy_id = copied.json()["file_id"]
        assert (await client.get(f"/files/{copy_id}/download")).content == data
        info = (await client.get(f"/files/{copy_id}/info")).json()
        assert info["file_name"] == "huge.bin" and info["file_size"] == len(data)
        assert info["crc32"] == f"{zlib.crc32(data):08x}"
        zipped = await client.post("/files/download-zip", json=[{"file_id": copy_id}])
        assert zipped.content[8:10] == b"\x00\x00"  # STORE: the CRC-32 came along
    server_side = any("server-side" in record.getMessage() for record in caplog.records)
    admin = seaweed.admin()
    if pair == "may read":
        assert server_side
        assert info["etag"].endswith('-3"')  # three parts: 5 MiB, 5 MiB and the rest
    else:
        assert not server_side
    assert admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_local_and_s3_side_by_side(seaweed: Any, bucket: str, tmp_path: Path) -> None:
    """LOCAL_ENABLED beside S3: files move from the local disk to S3 and back, streamed."""
    from tests.conftest import s3_settings

    settings = s3_settings(
        seaweed.endpoint, bucket, local_enabled=True, local_root=tmp_path / "data"
    )
    data = os.urandom(10 * MiB + 7)
    local = tmp_path / "data" / "files" / "old" / "0123456789abcdef_disk.bin"
    local.parent.mkdir(parents=True)
    local.write_bytes(data)
    async with serve(settings) as client:
        local_id = "local:files/old/0123456789abcdef_disk.bin"
        moved = await client.post(f"/files/{local_id}/copy", json={"delete_source": True})
        assert moved.status_code == 201, moved.text
        s3_id = moved.json()["file_id"]
        assert s3_id.startswith(f"s3:{bucket}/") and s3_id.endswith("_disk.bin")
        assert not await asyncio.to_thread(local.exists)
        assert (await client.get(f"/files/{s3_id}/download")).content == data
        back = await client.post(
            f"/files/{s3_id}/copy", json={"backend": "local", "folder": "back"}
        )
        assert back.status_code == 201, back.text
        back_id = back.json()["file_id"]
        assert back_id.startswith("local:files/back/")
        assert (
            tmp_path / "data" / "files" / back_id.removeprefix("local:files/")
        ).read_bytes() == data
        listed = (
            await client.get("/files", params={"prefix": "local:files/", "delimiter": ""})
        ).json()
        assert [f["file_id"] for f in listed["files"]] == [back_id]
