"""API keys with scopes and places, signed links, CORS and the browser-safety headers."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from app.access import LinkSigner, LinkTerms
from app.settings import Settings
from tests.conftest import SIGNING_SECRET as SECRET
from tests.conftest import created_bucket, s3_admin, s3_settings, serve
from tests.servers import READER, WRITER, SeaweedFS
from tests.test_files import assert_error

ADMIN_KEY = "admin-key-0123456789"
READ_KEY = "read-key-0123456789"
WRITE_KEY = "write-key-0123456789"
DELETE_KEY = "delete-key-0123456789"
TEAM_KEY = "team-a-key-0123456789"
HASHED_KEY = "hashed-key-0123456789"
KEYS: list[dict[str, Any]] = [
    {"name": "admin", "key": ADMIN_KEY, "scopes": ["read", "write", "delete"]},
    {"name": "reader", "key": READ_KEY, "scopes": ["read"]},
    {"name": "writer", "key": WRITE_KEY, "scopes": ["write"]},
    {"name": "deleter", "key": DELETE_KEY, "scopes": ["delete"]},
    {
        "name": "team-a",
        "key": TEAM_KEY,
        "scopes": ["read", "write", "delete"],
        "folders": ["team-a"],
    },
    {
        "name": "hashed",
        "key_sha256": hashlib.sha256(HASHED_KEY.encode()).hexdigest(),
        "scopes": ["read"],
    },
]


def as_key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def local_settings(root: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"local_root": root, "api_keys": KEYS, "signing_secret": SECRET}
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(local_settings(tmp_path)) as http:
        yield http


async def put(client: httpx.AsyncClient, name: str, data: bytes, key: str = ADMIN_KEY) -> str:
    response = await client.put(f"/files/upload/{name}", content=data, headers=as_key(key))
    assert response.status_code == 201, response.text
    file_id: str = response.json()["file_id"]
    return file_id


# --- every endpoint, every scope -------------------------------------------------------------

Call = Callable[[httpx.AsyncClient, str, dict[str, str]], Awaitable[httpx.Response]]


async def _upload(client: httpx.AsyncClient, _: str, headers: dict[str, str]) -> httpx.Response:
    return await client.post("/files/upload", files={"file": ("n.txt", b"new")}, headers=headers)


async def _upload_raw(client: httpx.AsyncClient, _: str, headers: dict[str, str]) -> httpx.Response:
    return await client.put("/files/upload/n.txt", content=b"new", headers=headers)


async def _batch(client: httpx.AsyncClient, _: str, headers: dict[str, str]) -> httpx.Response:
    files = [("files", ("a.txt", b"a")), ("files", ("b.txt", b"b"))]
    return await client.post("/files/batch-upload", files=files, headers=headers)


async def _download(client: httpx.AsyncClient, fid: str, headers: dict[str, str]) -> httpx.Response:
    return await client.get(f"/files/{fid}/download", headers=headers)


async def _head(client: httpx.AsyncClient, fid: str, headers: dict[str, str]) -> httpx.Response:
    return await client.head(f"/files/{fid}/download", headers=headers)


async def _info(client: httpx.AsyncClient, fid: str, headers: dict[str, str]) -> httpx.Response:
    return await client.get(f"/files/{fid}/info", headers=headers)


async def _zip(client: httpx.AsyncClient, fid: str, headers: dict[str, str]) -> httpx.Response:
    return await client.post("/files/download-zip", json=[{"file_id": fid}], headers=headers)


async def _link(client: httpx.AsyncClient, fid: str, headers: dict[str, str]) -> httpx.Response:
    return await client.post(f"/files/{fid}/link", json={"expires_in": 60}, headers=headers)


async def _delete(client: httpx.AsyncClient, fid: str, headers: dict[str, str]) -> httpx.Response:
    return await client.delete(f"/files/{fid}", headers=headers)


ENDPOINTS: dict[str, tuple[str, int, Call]] = {
    "upload_file": ("write", 201, _upload),
    "upload_raw": ("write", 201, _upload_raw),
    "batch_upload": ("write", 201, _batch),
    "download_file": ("read", 200, _download),
    "download_file_head": ("read", 200, _head),
    "get_file_info": ("read", 200, _info),
    "download_zip": ("read", 200, _zip),
    "create_link": ("read", 200, _link),
    "delete_file": ("delete", 200, _delete),
}
SCOPED_KEYS = {"read": READ_KEY, "write": WRITE_KEY, "delete": DELETE_KEY}


def stored_names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "files").rglob("*") if p.is_file())


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
@pytest.mark.parametrize("scope", list(SCOPED_KEYS))
async def test_each_endpoint_needs_its_scope(
    client: httpx.AsyncClient, tmp_path: Path, endpoint: str, scope: str
) -> None:
    needed, success, call = ENDPOINTS[endpoint]
    file_id = await put(client, "kept.txt", b"kept")
    before = stored_names(tmp_path)

    response = await call(client, file_id, as_key(SCOPED_KEYS[scope]))

    if scope == needed:
        assert response.status_code == success, response.text
    else:
        assert response.status_code == 403, response.text
        if endpoint != "download_file_head":  # a HEAD answer has no body
            assert_error(response, 403, "forbidden")
        assert stored_names(tmp_path) == before  # nothing stored, nothing deleted


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
@pytest.mark.parametrize("presented", [None, "not-a-configured-key-000", ""])
async def test_each_endpoint_refuses_a_missing_or_unknown_key(
    client: httpx.AsyncClient, tmp_path: Path, endpoint: str, presented: str | None
) -> None:
    _, _, call = ENDPOINTS[endpoint]
    file_id = await put(client, "kept.txt", b"kept")
    before = stored_names(tmp_path)
    headers = {} if presented is None else {"Authorization": f"Bearer {presented}"}

    response = await call(client, file_id, headers)

    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == 'Bearer realm="filegate"'
    if endpoint != "download_file_head":
        assert_error(response, 401, "unauthorized")
    assert stored_names(tmp_path) == before


async def test_bearer_and_x_api_key_both_work(client: httpx.AsyncClient) -> None:
    file_id = await put(client, "a.txt", b"abc")
    bearer = await client.get(
        f"/files/{file_id}/download", headers={"Authorization": f"Bearer {READ_KEY}"}
    )
    header = await client.get(f"/files/{file_id}/download", headers=as_key(READ_KEY))
    assert bearer.content == header.content == b"abc"


async def test_a_key_given_as_its_sha256_works_and_the_digest_is_no_key(
    client: httpx.AsyncClient,
) -> None:
    file_id = await put(client, "a.txt", b"abc")
    allowed = await client.get(f"/files/{file_id}/info", headers=as_key(HASHED_KEY))
    assert allowed.status_code == 200
    digest = hashlib.sha256(HASHED_KEY.encode()).hexdigest()
    assert_error(
        await client.get(f"/files/{file_id}/info", headers=as_key(digest)), 401, "unauthorized"
    )
    denied = await client.delete(f"/files/{file_id}", headers=as_key(HASHED_KEY))
    assert_error(denied, 403, "forbidden")


async def test_a_key_limited_to_a_folder_stays_in_it(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    team = as_key(TEAM_KEY)
    inside = await client.put("/files/upload/a.txt?folder=team-a", content=b"a", headers=team)
    assert inside.status_code == 201, inside.text
    deeper = await client.post(
        "/files/upload",
        data={"folder": "team-a/2026"},
        files={"file": ("b.txt", b"b")},
        headers=team,
    )
    assert deeper.status_code == 201, deeper.text
    before = stored_names(tmp_path)
    for folder in ("team-b", "team-ab", None):
        params = {"folder": folder} if folder else {}
        outside = await client.put("/files/upload/c.txt", params=params, content=b"c", headers=team)
        assert_error(outside, 403, "forbidden")
    batch = await client.post(
        "/files/batch-upload",
        data={"folder": "team-b"},
        files=[("files", ("d.txt", b"d"))],
        headers=team,
    )
    assert_error(batch, 403, "forbidden")
    assert stored_names(tmp_path) == before

    theirs = await put(client, "x.txt", b"x")  # the admin's, at the root
    other_team = (
        await client.put(
            "/files/upload/y.txt?folder=team-b", content=b"y", headers=as_key(ADMIN_KEY)
        )
    ).json()["file_id"]
    for file_id in (theirs, other_team):
        for response in (
            await client.get(f"/files/{file_id}/download", headers=team),
            await client.get(f"/files/{file_id}/info", headers=team),
            await client.post("/files/download-zip", json=[{"file_id": file_id}], headers=team),
            await client.post(f"/files/{file_id}/link", json={}, headers=team),
            await client.delete(f"/files/{file_id}", headers=team),
        ):
            body = assert_error(response, 403, "forbidden")
            assert body["file_id"] == file_id
    mixed = [{"file_id": inside.json()["file_id"]}, {"file_id": theirs}]
    assert_error(
        await client.post("/files/download-zip", json=mixed, headers=team), 403, "forbidden"
    )
    own = inside.json()["file_id"]
    assert (await client.get(f"/files/{own}/download", headers=team)).content == b"a"
    assert (await client.delete(f"/files/{own}", headers=team)).status_code == 200
    remaining = stored_names(tmp_path)
    assert not any(name.endswith("_a.txt") for name in remaining)
    assert len(remaining) == len(before) + 1  # b.txt, x.txt and y.txt; a.txt is gone


async def test_a_key_limited_to_a_bucket_stays_in_it(seaweed: SeaweedFS) -> None:
    own, other = await created_bucket(seaweed.endpoint), await created_bucket(seaweed.endpoint)
    keys = [
        *KEYS,
        {
            "name": "own-bucket",
            "key": "own-bucket-key-0123",
            "scopes": ["read", "write"],
            "buckets": [own],
        },
    ]
    settings = s3_settings(seaweed.endpoint, own, s3_buckets=[own, other], api_keys=keys)
    limited = as_key("own-bucket-key-0123")
    async with serve(settings) as client:
        mine = await client.put("/files/upload/a.txt", content=b"a", headers=limited)
        assert mine.status_code == 201, mine.text
        refused = await client.put(
            f"/files/upload/b.txt?bucket={other}", content=b"b", headers=limited
        )
        assert_error(refused, 403, "forbidden")
        elsewhere = await client.put(
            f"/files/upload/c.txt?bucket={other}", content=b"c", headers=as_key(ADMIN_KEY)
        )
        other_id = elsewhere.json()["file_id"]
        assert_error(
            await client.get(f"/files/{other_id}/download", headers=limited), 403, "forbidden"
        )
        zipped = await client.post(
            "/files/download-zip",
            json=[{"file_id": mine.json()["file_id"]}, {"file_id": other_id}],
            headers=limited,
        )
        assert_error(zipped, 403, "forbidden")
        assert (
            await client.get(f"/files/{mine.json()['file_id']}/download", headers=limited)
        ).content == b"a"
    async with s3_admin(seaweed.endpoint) as s3:
        listed = await s3.list_objects_v2(Bucket=other)
    assert [item["Key"].split("_", 1)[1] for item in listed["Contents"]] == ["c.txt"]


async def test_without_keys_the_service_is_open_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="app.main")
    async with serve(Settings(_env_file=None, local_root=tmp_path)) as client:
        file_id = (await client.put("/files/upload/a.txt", content=b"a")).json()["file_id"]
        assert (await client.get(f"/files/{file_id}/download")).content == b"a"
        assert (await client.delete(f"/files/{file_id}")).status_code == 200
    assert any("No API keys configured" in r.getMessage() for r in caplog.records)

    caplog.clear()
    async with serve(local_settings(tmp_path)):
        pass
    assert not any("No API keys configured" in r.getMessage() for r in caplog.records)


async def test_operations_stay_open_and_metrics_can_have_its_own_key(tmp_path: Path) -> None:
    metrics_key = "metrics-key-" + "m" * 32
    async with serve(local_settings(tmp_path, metrics_api_key=metrics_key)) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        assert_error(await client.get("/metrics"), 401, "unauthorized")
        assert_error(await client.get("/metrics", headers=as_key(ADMIN_KEY)), 401, "unauthorized")
        scraped = await client.get("/metrics", headers={"Authorization": f"Bearer {metrics_key}"})
        assert scraped.status_code == 200
        assert "filegate_requests_total" in scraped.text
        assert (await client.get("/metrics", headers=as_key(metrics_key))).status_code == 200
    async with serve(local_settings(tmp_path)) as client:  # no metrics key: open, like health
        assert (await client.get("/metrics")).status_code == 200


# --- signed links ---------------------------------------------------------------------------


async def link(client: httpx.AsyncClient, file_id: str, **body: Any) -> dict[str, Any]:
    response = await client.post(f"/files/{file_id}/link", json=body, headers=as_key(READ_KEY))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def relative(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_a_signed_link_downloads_without_a_key(client: httpx.AsyncClient) -> None:
    file_id = await put(client, "report.pdf", b"%PDF-1.7 twelve")
    before = time.time()
    answer = await link(client, file_id, expires_in=120)
    assert answer["url"].startswith("http://filegate/files/local:files/")
    assert 119 <= datetime.fromisoformat(answer["expires_at"]).timestamp() - before <= 122

    got = await client.get(relative(answer["url"]))  # no key
    assert got.status_code == 200
    assert got.content == b"%PDF-1.7 twelve"
    assert got.headers["content-disposition"].startswith('attachment; filename="report.pdf"')
    partial = await client.get(relative(answer["url"]), headers={"Range": "bytes=1-3"})
    assert (partial.status_code, partial.content) == (206, b"PDF")
    assert (await client.head(relative(answer["url"]))).status_code == 200


async def test_signed_link_options_are_part_of_the_signature(client: httpx.AsyncClient) -> None:
    file_id = await put(client, "photo.png", b"\x89PNG fake")
    answer = await link(client, file_id, filename="holiday.png", inline=True)
    url = relative(answer["url"])
    query = parse_qs(urlsplit(url).query)
    assert query["filename"] == ["holiday.png"] and query["inline"] == ["true"]

    shown = await client.get(url)
    assert shown.status_code == 200
    assert shown.headers["content-disposition"].startswith('inline; filename="holiday.png"')
    assert shown.headers["content-security-policy"] == "sandbox"
    assert shown.headers["x-content-type-options"] == "nosniff"

    for tampered in (
        url.replace("inline=true", "inline=false"),
        url.replace("filename=holiday.png", "filename=other.png"),
        url.replace("&filename=holiday.png", ""),
        url.replace(f"expires={query['expires'][0]}", f"expires={int(query['expires'][0]) + 3600}"),
        url.replace(query["signature"][0], query["signature"][0][:-2] + "AA"),
        url.replace(query["signature"][0], "not-base64!"),
        url.replace(f"&signature={query['signature'][0]}", ""),
        url.split("?")[0] + f"?signature={query['signature'][0]}",
    ):
        assert tampered != url
        assert_error(await client.get(tampered), 403, "link_invalid")


async def test_a_download_query_that_does_not_parse_is_400(client: httpx.AsyncClient) -> None:
    """GET and HEAD of a download validate their query themselves (app/api/downloads.py,
    ``direct_route``), with the answer FastAPI gives everywhere else."""
    file_id = await put(client, "a.txt", b"abc")
    url = f"/files/{file_id}/download"
    for query, named in (
        ("expires=soon&signature=x", "query.expires"),
        ("inline=maybe", "query.inline"),
    ):
        body = assert_error(await client.get(f"{url}?{query}"), 400, "invalid_argument")
        assert named in body["detail"]
        assert (await client.head(f"{url}?{query}")).status_code == 400
    # the last of repeated values counts, names filegate does not know are ignored
    got = await client.get(f"{url}?inline=maybe&inline=true&other=1", headers=as_key(ADMIN_KEY))
    assert got.status_code == 200, got.text
    assert got.headers["content-disposition"].startswith("inline")
    assert got.content == b"abc"


async def test_a_signed_link_is_for_its_own_file_only(client: httpx.AsyncClient) -> None:
    first = await put(client, "first.txt", b"first")
    second = await put(client, "second.txt", b"second")
    url = relative((await link(client, first))["url"])
    reused = url.replace(first.split("/", 1)[1], second.split("/", 1)[1])
    assert reused != url
    assert_error(await client.get(reused), 403, "link_invalid")


async def test_an_expired_link_is_refused(client: httpx.AsyncClient) -> None:
    file_id = await put(client, "a.txt", b"abc")
    terms = LinkTerms(file_id, int(time.time()) - 1)
    expired = LinkSigner(SECRET).url(terms, "http://filegate")
    assert_error(await client.get(relative(expired)), 403, "link_expired")
    forged = LinkSigner("another-secret-" + "x" * 32).url(
        LinkTerms(file_id, int(time.time()) + 60), "http://filegate"
    )
    assert_error(await client.get(relative(forged)), 403, "link_invalid")
    short = await link(client, file_id, expires_in=1)
    await asyncio.sleep(1.1)
    assert_error(await client.get(relative(short["url"])), 403, "link_expired")


async def test_link_requests_are_checked(client: httpx.AsyncClient, tmp_path: Path) -> None:
    file_id = await put(client, "a.txt", b"abc")
    for body in ({"expires_in": 0}, {"expires_in": 7 * 24 * 3600 + 1}, {"filename": "../x"}):
        response = await client.post(f"/files/{file_id}/link", json=body, headers=as_key(READ_KEY))
        assert_error(response, 400, "invalid_argument")
    missing = "local:files/0123456789abcdef_gone.txt"
    response = await client.post(f"/files/{missing}/link", json={}, headers=as_key(READ_KEY))
    assert_error(response, 404, "file_not_found")
    direct = await client.post(
        f"/files/{file_id}/link", json={"direct": True}, headers=as_key(READ_KEY)
    )
    assert_error(direct, 400, "invalid_argument")  # local files have no storage URL of their own

    async with serve(local_settings(tmp_path, signing_secret=None)) as unsigned:
        refused = await unsigned.post(f"/files/{file_id}/link", json={}, headers=as_key(READ_KEY))
        assert_error(refused, 403, "link_invalid")
        forged = LinkSigner(SECRET).url(LinkTerms(file_id, int(time.time()) + 60), "http://f")
        assert_error(await unsigned.get(relative(forged)), 403, "link_invalid")


async def test_links_use_the_public_base_url(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, public_base_url="https://files.example.com/api/")
    async with serve(settings) as client:
        file_id = await put(client, "a b.txt", b"abc")
        answer = await link(client, file_id)
    assert answer["url"].startswith("https://files.example.com/api/files/local:files/")
    assert "a%20b.txt/download?expires=" in answer["url"]


async def test_s3_direct_links_are_presigned_with_the_read_pair(
    seaweed: SeaweedFS, bucket: str
) -> None:
    settings = s3_settings(seaweed.endpoint, bucket, api_keys=KEYS, signing_secret=SECRET)
    async with serve(settings) as client:
        file_id = await put(client, "Q3 report.pdf", b"%PDF direct")
        answer = await link(client, file_id, direct=True, expires_in=300)
        inline_html = await link(
            client, await put(client, "page.html", b"<script>1</script>"), direct=True, inline=True
        )
    url = answer["url"]
    assert url.startswith(f"{seaweed.endpoint}/{bucket}/")
    credential = parse_qs(urlsplit(url).query)["X-Amz-Credential"][0]
    assert credential.startswith(f"{READER[0]}/") and WRITER[0] not in url
    async with httpx.AsyncClient() as plain:
        got = await plain.get(url)
        assert got.status_code == 200, got.text
        assert got.content == b"%PDF direct"
        assert got.headers["content-disposition"].startswith('attachment; filename="Q3 report.pdf"')
        assert got.headers["content-type"] == "application/pdf"
        html = await plain.get(inline_html["url"])
        assert html.headers["content-disposition"].startswith("attachment;")
        tampered = await plain.get(url.replace("X-Amz-Expires=300", "X-Amz-Expires=900"))
        assert tampered.status_code == 403


# --- browser safety -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("page.html", "text/html"),
        ("page.htm", None),
        ("image.svg", None),
        ("data.xml", "application/xml"),
        ("feed.txt", "application/atom+xml"),
        ("disguised.txt", "text/html; charset=utf-8"),
    ],
)
async def test_active_content_is_always_an_attachment(
    client: httpx.AsyncClient, name: str, content_type: str | None
) -> None:
    headers = as_key(ADMIN_KEY) | ({"Content-Type": content_type} if content_type else {})
    response = await client.put(f"/files/upload/{name}", content=b"<x/>", headers=headers)
    file_id = response.json()["file_id"]
    served = await client.get(f"/files/{file_id}/download?inline=true", headers=as_key(READ_KEY))
    assert served.headers["content-disposition"].startswith("attachment;")
    assert served.headers["content-security-policy"] == "sandbox"
    assert served.headers["x-content-type-options"] == "nosniff"
    signed = await link(client, file_id, inline=True)
    via_link = await client.get(relative(signed["url"]))
    assert via_link.headers["content-disposition"].startswith("attachment;")


async def test_plain_content_may_be_inline(client: httpx.AsyncClient) -> None:
    file_id = await put(client, "notes.txt", b"hello")
    served = await client.get(f"/files/{file_id}/download?inline=true", headers=as_key(READ_KEY))
    assert served.headers["content-disposition"].startswith("inline;")
    assert served.headers["content-security-policy"] == "sandbox"


ORIGIN = "http://app.example.com"


async def test_cors_preflight_and_exposed_headers(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, cors_allow_origins=[ORIGIN])
    async with serve(settings) as client:
        preflight = await client.options(
            "/files/upload",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "x-api-key" in allowed and "content-type" in allowed
        assert "access-control-allow-credentials" not in preflight.headers

        stranger = await client.options(
            "/files/upload",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert stranger.status_code == 400
        assert "access-control-allow-origin" not in stranger.headers

        file_id = await put(client, "a.txt", b"abcdef")
        got = await client.get(
            f"/files/{file_id}/download",
            headers={"Origin": ORIGIN, "Range": "bytes=0-1"} | as_key(READ_KEY),
        )
        assert got.status_code == 206
        assert got.headers["access-control-allow-origin"] == ORIGIN
        exposed = {
            h.strip().lower() for h in got.headers["access-control-expose-headers"].split(",")
        }
        assert {"content-disposition", "content-range", "etag", "content-length"} <= exposed
        refused = await client.get(f"/files/{file_id}/download", headers={"Origin": ORIGIN})
        assert refused.status_code == 401  # the browser can read why
        assert refused.headers["access-control-allow-origin"] == ORIGIN
        foreign = await client.get(
            f"/files/{file_id}/download",
            headers={"Origin": "http://evil.example"} | as_key(READ_KEY),
        )
        assert "access-control-allow-origin" not in foreign.headers


async def test_without_cors_origins_no_cors_headers(client: httpx.AsyncClient) -> None:
    preflight = await client.options(
        "/files/upload", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers


async def test_batch_uploads_are_limited(tmp_path: Path) -> None:
    async with serve(local_settings(tmp_path, max_batch_files=2)) as client:
        files = [("files", (f"{n}.txt", b"x")) for n in range(3)]
        response = await client.post("/files/batch-upload", files=files, headers=as_key(WRITE_KEY))
        assert_error(response, 413, "too_many_files")
        assert stored_names(tmp_path) == []
        ok = await client.post("/files/batch-upload", files=files[:2], headers=as_key(WRITE_KEY))
        assert ok.status_code == 201
