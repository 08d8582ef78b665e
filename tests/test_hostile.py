"""Hostile and odd input against the real process, in local and S3 modes (docs/api.md, "Text
rules", and docs/architecture.md, "The server layer").

Every case asserts the status and the JSON error, that nothing was stored (the local root, or the
bucket as SeaweedFS lists it), and, when the module's service stops, that its log holds no
traceback. What is stored must be served back byte for byte with valid headers.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st
from tusclient import client as tus_client

from tests.conftest import unique_bucket
from tests.servers import HOST, SeaweedFS, Service

FULL = "hostile-full-key-0123456789"
FOLDER_ONLY = "hostile-folder-key-0123456789"
BUCKET_ONLY = "hostile-bucket-key-0123456789"
SIGNING = "hostile-signing-secret-0123456789abcdef"


@dataclass
class Deployment:
    """filegate as a process, and a way to read what it stored."""

    mode: str
    service: Service
    bucket: str
    other_bucket: str
    stored: Callable[[], set[str]]
    client: httpx.Client

    def url(self, file_id: str, suffix: str = "") -> str:
        return f"/files/{quote(file_id, safe='')}{suffix}"

    def prefix(self) -> str:
        return f"{self.mode}:{self.bucket}/"


def _keys(bucket: str) -> str:
    return json.dumps(
        [
            {"name": "full", "key": FULL, "scopes": ["read", "write", "delete"]},
            {"name": "uploads", "key": FOLDER_ONLY, "scopes": ["read"], "folders": ["uploads"]},
            {"name": "one-bucket", "key": BUCKET_ONLY, "scopes": ["read"], "buckets": [bucket]},
        ]
    )


@pytest.fixture(scope="module", params=["local", "s3"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp(f"hostile-{request.param}")
    stored: Callable[[], set[str]]
    if request.param == "local":
        root = work / "data"
        bucket, other = "files", "files"
        env = {"LOCAL_ROOT": str(root)}

        def stored() -> set[str]:
            return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}

    else:
        seaweed: SeaweedFS = request.getfixturevalue("seaweed")
        admin = seaweed.admin()
        bucket, other = unique_bucket(), unique_bucket()
        for name in (bucket, other):
            admin.create_bucket(Bucket=name)
        env = {**seaweed.service_env(bucket), "S3_BUCKETS": f"{bucket},{other}"}

        def stored() -> set[str]:
            keys: set[str] = set()
            for name in (bucket, other):
                listed = admin.list_objects_v2(Bucket=name).get("Contents", [])
                keys |= {f"{name}/{item['Key']}" for item in listed}
            return keys

    env |= {"API_KEYS": _keys(bucket), "SIGNING_SECRET": SIGNING}
    service = Service(env)
    service.start(work)
    client = httpx.Client(base_url=service.url, headers={"X-API-Key": FULL}, timeout=60)
    try:
        yield Deployment(request.param, service, bucket, other, stored, client)
    finally:
        client.close()
        service.stop()
    assert service.log_path is not None
    log = service.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]


def refused(
    answer: httpx.Response, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json", answer.headers
    body: dict[str, Any] = answer.json()
    assert body["code"] == code, body
    assert body["detail"]
    if field is not None:
        assert body["field"] == field, body
    return body


@pytest.fixture
def nothing_stored(deployment: Deployment) -> Iterator[None]:
    before = deployment.stored()
    yield
    assert deployment.stored() == before


def _tus_create(
    deployment: Deployment, metadata: dict[str, bytes], length: int = 1
) -> httpx.Response:
    """``POST /files/tus`` with these ``Upload-Metadata`` values (any bytes, base64 as tus says)."""
    header = ",".join(
        f"{key} {base64.b64encode(value).decode()}".strip()  # an empty value: the key alone
        for key, value in metadata.items()
    )
    return deployment.client.post(
        "/files/tus",
        headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(length), "Upload-Metadata": header},
    )


def _post_json(client: httpx.Client, url: str, value: object) -> httpx.Response:
    """JSON as Python writes it: a lone surrogate travels as its escape, ``\\ud800``."""
    return client.post(url, content=json.dumps(value), headers={"Content-Type": "application/json"})


def _served_back(deployment: Deployment, file_id: str, data: bytes) -> httpx.Response:
    """The file downloads byte for byte, with headers that are valid HTTP."""
    answer = deployment.client.get(deployment.url(file_id, "/download"))
    assert answer.status_code == 200, answer.text
    assert answer.content == data
    for name in ("content-type", "content-disposition", "etag"):
        answer.headers[name].encode("ascii")  # httpx decodes as latin-1: ASCII is what we send
    return answer


# --- names in every script, through tus ------------------------------------------------------


@pytest.mark.parametrize("name", ["Отчёт big.bin", "报告.docx", "résumé 📄.pdf", "100% done.txt"])
def test_a_tus_upload_with_a_non_ascii_name_gets_its_id(deployment: Deployment, name: str) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, in three PATCHes
    tus = tus_client.TusClient(f"{deployment.service.url}/files/tus", headers={"X-API-Key": FULL})
    uploader = tus.uploader(
        file_stream=io.BytesIO(data), chunk_size=400_000, metadata={"filename": name}
    )
    uploader.upload()
    assert uploader.url is not None
    head = httpx.head(uploader.url, headers={"X-API-Key": FULL, "Tus-Resumable": "1.0.0"})
    header = head.headers["file-id"]
    header.encode("ascii")  # percent-encoded, as in a URL path (docs/tus.md)
    file_id = unquote(header)
    info = deployment.client.get(deployment.url(file_id, "/info")).json()
    assert (info["file_id"], info["file_name"], info["file_size"]) == (file_id, name, len(data))
    disposition = _served_back(deployment, file_id, data).headers["content-disposition"]
    assert disposition.endswith(f"filename*=UTF-8''{quote(name, safe='')}")


# --- numbers ---------------------------------------------------------------------------------


def test_range_numbers_of_any_length_get_a_proper_answer(deployment: Deployment) -> None:
    data = b"0123456789"
    file_id = deployment.client.put("/files/upload/digits.txt", content=data).json()["file_id"]
    huge = "9" * 5000
    for method in ("GET", "HEAD"):
        url = deployment.url(file_id, "/download")
        beyond = deployment.client.request(method, url, headers={"Range": f"bytes={huge}-"})
        assert beyond.status_code == 416, beyond.text
        assert beyond.headers["content-range"] == "bytes */10"
        capped = deployment.client.request(method, url, headers={"Range": f"bytes=2-{huge}"})
        assert capped.status_code == 206
        assert capped.headers["content-range"] == "bytes 2-9/10"
        if method == "GET":
            refused(beyond, 416, "range_not_satisfiable")
            assert capped.content == data[2:]
        suffix = deployment.client.request(method, url, headers={"Range": f"bytes=-{huge}"})
        assert suffix.status_code == 206 and suffix.headers["content-range"] == "bytes 0-9/10"
        for since in ("Mon, 01 Jan 2020 00:00:00 +99999999999999999999", "Mon, 01 Jan 99999 x"):
            dated = deployment.client.request(method, url, headers={"If-Modified-Since": since})
            assert dated.status_code == 200  # a date it cannot read is no condition


# --- text --------------------------------------------------------------------------------------


def _form(name: bytes, content_type: bytes = b"text/plain", **fields: bytes) -> tuple[bytes, str]:
    """A multipart body written byte by byte, so that names can be any bytes at all."""
    boundary = "hostile-boundary-1234"
    parts = [
        b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
        % (boundary.encode(), key.encode(), value)
        for key, value in fields.items()
    ]
    parts.append(
        b'--%s\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n'
        b"Content-Type: %s\r\n\r\nhello\r\n--%s--\r\n"
        % (boundary.encode(), name, content_type, boundary.encode())
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _post_form(deployment: Deployment, body: bytes, content_type: str) -> httpx.Response:
    return deployment.client.post(
        "/files/upload", content=body, headers={"Content-Type": content_type}
    )


@pytest.mark.usefixtures("nothing_stored")
def test_lone_surrogates_are_refused_naming_the_field(deployment: Deployment) -> None:
    client = deployment.client
    body, kind = _form(b"a.txt", metadata=b'{"note": "\\ud800"}')
    refused(_post_form(deployment, body, kind), 400, "invalid_argument", "metadata")
    existing = client.put("/files/upload/keep.txt", content=b"kept").json()["file_id"]
    link = _post_json(client, deployment.url(existing, "/link"), {"filename": "x\ud800.txt"})
    refused(link, 400, "invalid_argument", "filename")
    archive = _post_json(
        client, "/files/download-zip", [{"file_id": existing, "file_name": "\ud800.txt"}]
    )
    refused(archive, 400, "invalid_argument", "zip_entry_name")
    batch = {"file_ids": [f"{deployment.prefix()}\ud800"]}
    error = refused(_post_json(client, "/files/batch-delete", batch), 400, "invalid_argument")
    assert error["file_id"] == f"{deployment.prefix()}?"  # echoed as UTF-8 can carry it
    client.delete(deployment.url(existing))


@pytest.mark.usefixtures("nothing_stored")
def test_text_that_is_not_utf8_is_refused_not_reread(deployment: Deployment) -> None:
    client = deployment.client
    body, kind = _form(b"r\xe9sum\xe9.pdf")  # latin-1, not UTF-8
    refused(_post_form(deployment, body, kind), 400, "invalid_argument", "file_name")
    refused(client.put("/files/upload/%FF%FE.txt", content=b"x"), 400, "invalid_argument", "url")
    refused(
        client.put("/files/upload/a.txt?folder=%C3", content=b"x"), 400, "invalid_argument", "url"
    )
    meta = client.put("/files/upload/a.txt", content=b"x", headers={b"X-Meta-Note": b"\xff\xfe"})
    refused(meta, 400, "invalid_argument", "metadata")


def test_utf8_in_headers_and_forms_is_stored_exactly(deployment: Deployment) -> None:
    name = "Отчёт «Q3» 报告 😀.txt"
    body, kind = _form(name.encode(), metadata='{"author": "Zoë 张"}'.encode())
    answer = _post_form(deployment, body, kind)
    assert answer.status_code == 201, answer.text
    file_id = answer.json()["file_id"]
    info = deployment.client.get(deployment.url(file_id, "/info")).json()
    assert (info["file_name"], info["metadata"]) == (name, {"author": "Zoë 张"})
    put = deployment.client.put(
        f"/files/upload/{quote(name)}", content=b"x", headers={b"X-Meta-Note": "Zoë".encode()}
    )
    assert put.status_code == 201 and put.json()["file_name"] == name
    info = deployment.client.get(deployment.url(put.json()["file_id"], "/info")).json()
    assert info["metadata"] == {"note": "Zoë"}


@pytest.mark.usefixtures("nothing_stored")
def test_metadata_nested_deep_is_refused_unparsed(deployment: Deployment) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    body, kind = _form(b"a.txt", metadata=b'{"a": ' + deep + b"}")
    refused(_post_form(deployment, body, kind), 400, "invalid_argument", "metadata")
    tus = _tus_create(
        deployment, {"filename": b"a.txt", "metadata": b'{"a": ' + b"{" * 40 + b"}" * 40 + b"}"}
    )
    refused(tus, 400, "invalid_argument", "metadata")


@pytest.mark.usefixtures("nothing_stored")
@pytest.mark.parametrize(
    "content_type",
    [b"text/plain\x0b", b"text/\x00plain", b"text/plain\x7f", b"text/plain\nX-Evil: 1", b"text"],
    ids=["vt", "nul", "del", "lone-lf", "no-subtype"],
)
def test_a_part_content_type_that_is_not_a_media_type_is_refused(
    deployment: Deployment, content_type: bytes
) -> None:
    body, kind = _form(b"a.txt", content_type=content_type)
    answer = _post_form(deployment, body, kind)
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "invalid_argument"


@pytest.mark.usefixtures("nothing_stored")
def test_an_8_kib_content_type_is_refused_before_storage(deployment: Deployment) -> None:
    long_type = "application/" + "x" * 8000
    answer = deployment.client.put(
        "/files/upload/a.bin", content=b"x", headers={"Content-Type": long_type}
    )
    refused(answer, 400, "invalid_argument", "content_type")
    tus = _tus_create(deployment, {"filename": b"a.txt", "filetype": b"text/plain\r\nX: y"})
    refused(tus, 400, "invalid_argument", "upload_metadata")


def test_a_valid_content_type_with_parameters_is_kept(deployment: Deployment) -> None:
    kind = 'text/plain; charset="utf-8"; format=flowed'
    answer = deployment.client.put(
        "/files/upload/note.txt", content=b"x", headers={"Content-Type": kind}
    )
    assert answer.status_code == 201, answer.text
    assert _served_back(deployment, answer.json()["file_id"], b"x").headers["content-type"] == kind


@pytest.mark.usefixtures("nothing_stored")
def test_names_that_hide_their_extension_or_break_lines_are_refused(
    deployment: Deployment,
) -> None:
    for name in ("invoice\u202efdp.exe", "a\u2028b.txt", "a\ufffe.txt", "a\\b.txt"):
        answer = deployment.client.put(f"/files/upload/{quote(name)}", content=b"x")
        refused(answer, 400, "invalid_argument", "file_name")
    empty = deployment.client.put("/files/upload/", content=b"x")
    refused(empty, 400, "invalid_argument", "file_name")
    long = "й" * 101  # 202 bytes
    refused(deployment.client.put(f"/files/upload/{quote(long)}", content=b"x"), 400,
            "invalid_argument", "file_name")  # fmt: skip


def test_a_zip_entry_name_over_the_format_limit_is_refused_before_the_first_byte(
    deployment: Deployment,
) -> None:
    file_id = deployment.client.put("/files/upload/z.txt", content=b"z").json()["file_id"]
    answer = deployment.client.post(
        "/files/download-zip", json=[{"file_id": file_id, "file_name": "n" * 70_000}]
    )
    refused(answer, 400, "invalid_argument", "zip_entry_name")
    longest = deployment.client.post(
        "/files/download-zip", json=[{"file_id": file_id, "file_name": "n" * 65_535}]
    )
    assert longest.status_code == 200 and longest.content.startswith(b"PK")


# --- ids with backslashes ----------------------------------------------------------------------


@pytest.mark.usefixtures("nothing_stored")
def test_backslashes_cannot_climb_out_of_a_folder_or_a_bucket(deployment: Deployment) -> None:
    inside = f"{deployment.mode}:{deployment.bucket}"
    attempts = [
        f"{inside}/..\\secret\\payroll.csv",
        f"{inside}/uploads/..\\private\\payroll.csv",
        f"{inside}/uploads\\..\\..\\{deployment.other_bucket}\\x",
        f"{inside}/.\\x",
    ]
    for key in (FULL, FOLDER_ONLY, BUCKET_ONLY):
        for raw in attempts:
            for path in (
                deployment.url(raw, "/info"),  # %5C
                "/files/" + raw.replace("\\", "%5C") + "/download",
                "/files/" + raw.replace("\\", "%255C").replace("..", "%2E%2E") + "/download",
            ):
                answer = deployment.client.get(path, headers={"X-API-Key": key})
                assert answer.status_code in (400, 403, 404), (path, answer.text)
                assert answer.headers["content-type"] == "application/json"
                if "%255C" not in path:  # a literal "%5C" in a key is just three characters
                    assert answer.status_code == 400, (path, answer.text)
    listing = deployment.client.get("/files", params={"prefix": f"{inside}/uploads\\..\\"})
    refused(listing, 400, "invalid_argument")


# --- the server layer --------------------------------------------------------------------------


def _raw(service: Service, request: bytes, *, read_for: float = 5) -> bytes:
    with socket.create_connection((HOST, service.port), timeout=read_for) as sock:
        with contextlib.suppress(OSError):  # refused while sending: the answer is already there
            sock.sendall(request)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer


def _json_answer(raw: bytes, status: int, code: str) -> None:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), raw[:300]
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["code"] == code


def test_oversized_request_heads_are_refused_as_json(deployment: Deployment) -> None:
    service = deployment.service
    line = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    _json_answer(_raw(service, line + b"X-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"), 431,
                 "headers_too_large")  # fmt: skip
    many = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 7000) for i in range(12))
    _json_answer(_raw(service, line + many + b"\r\n"), 431, "headers_too_large")
    count = b"".join(b"X-%d: v\r\n" % i for i in range(150))
    _json_answer(_raw(service, line + count + b"\r\n"), 431, "headers_too_large")
    url = b"GET /files/" + b"a" * 9000 + b"/info HTTP/1.1\r\nHost: x\r\n\r\n"
    _json_answer(_raw(service, url), 414, "url_too_long")
    _json_answer(_raw(service, b"GET /files/a\x00b HTTP/1.1\r\nHost: x\r\n\r\n"), 400,
                 "malformed_request")  # fmt: skip
    _json_answer(_raw(service, line + b"X-A: a\x01b\r\n\r\n"), 400, "malformed_request")
    # within the limits, the same connection goes on serving
    fine = line + b"X-A: " + b"v" * 7000 + b"\r\nConnection: close\r\n\r\n"
    assert _raw(service, fine).startswith(b"HTTP/1.1 200 ")


def test_unfinished_huge_headers_hold_no_memory(deployment: Deployment) -> None:
    service = deployment.service
    before = service.rss_kib()
    answers: list[bytes] = []

    def send_forever() -> None:
        with socket.create_connection((HOST, service.port), timeout=10) as sock:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
                for _ in range(512):  # 32 MiB, never finished
                    sock.sendall(b"a" * 65536)
            except OSError:
                pass
            try:
                answers.append(sock.recv(65536))
            except OSError:
                answers.append(b"")

    threads = [threading.Thread(target=send_forever) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    time.sleep(0.5)
    grown_mib = (service.rss_kib() - before) / 1024
    assert grown_mib < 40, grown_mib  # before the limits: 345 MiB
    assert any(answer.startswith(b"HTTP/1.1 431 ") for answer in answers), answers


def test_the_start_up_says_every_type_is_accepted(deployment: Deployment) -> None:
    assert deployment.service.log_path is not None
    log = deployment.service.log_path.read_text()
    assert "Files of every type are accepted" in log
    evil = deployment.client.put("/files/upload/evil.exe", content=b"MZ")
    assert evil.status_code == 201  # the documented default: FILE_BLACKLIST is empty
    deployment.client.delete(deployment.url(evil.json()["file_id"]))


# --- property: whatever is sent, no 5xx, and what is stored is served back --------------------

NASTY = [
    "",
    " ",
    ".",
    "..",
    "\\",
    "a\\b",
    "../x",
    "\ud800",
    "\udfff",
    "\x00",
    "\x0b",
    "\x7f",
    "\x85",
    "\u2028",
    "\u202e",
    "\ufeff",
    "\ufffe",
    "\U0010ffff",
    "%",
    "%FF",
    "%00",
    "'",
    '"',
    "`",
    ";",
    "Отчёт",
    "报告",
    "😀",
    "e\u0301",
    " lead",
    "trail ",
    "a" * 300,
    "й" * 120,
    "{}",
    "[[[]]]",
]
text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(NASTY),
    st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=8)), max_size=4).map("".join),
)
content_types = st.one_of(
    st.none(),
    st.sampled_from(["text/plain", 'text/plain; charset="utf-8"', "image/png", "a/b;c=d;e"]),
    text,
)


def _utf8(value: str) -> bytes:
    """What a careless client sends: UTF-8, lone surrogates as the bytes Python would write."""
    return value.encode("utf-8", "surrogatepass")


def _check_answer(deployment: Deployment, answer: httpx.Response) -> None:
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400:
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["code"]


def _check_stored(
    deployment: Deployment, answer: httpx.Response, data: bytes, name: str, meta: dict[str, str]
) -> None:
    """A stored file serves back byte for byte, under its exact name, with valid headers."""
    attach = answer.json()
    assert attach["file_name"] == name
    _served_back(deployment, attach["file_id"], data)
    info = deployment.client.get(deployment.url(attach["file_id"], "/info")).json()
    assert info["metadata"] == meta
    assert deployment.client.delete(deployment.url(attach["file_id"])).status_code == 200


@settings(max_examples=150, deadline=None, database=None)
@given(
    how=st.sampled_from(["put", "form"]),
    name=text,
    folder=st.one_of(st.none(), text),
    content_type=content_types,
    meta_value=st.one_of(st.none(), text),
    data=st.binary(max_size=64),
)
def test_any_upload_is_stored_and_served_exactly_or_refused_cleanly(
    deployment: Deployment,
    how: str,
    name: str,
    folder: str | None,
    content_type: str | None,
    meta_value: str | None,
    data: bytes,
) -> None:
    before = deployment.stored()
    meta = {} if meta_value is None else {"note": meta_value}
    query = "" if folder is None else "?folder=" + quote(_utf8(folder), safe="")
    try:
        if how == "put":
            headers: dict[bytes, bytes] = {}
            if content_type is not None:
                headers[b"Content-Type"] = _utf8(content_type)
            if meta_value is not None:
                headers[b"X-Meta-Note"] = _utf8(meta_value)
            path = "/files/upload/" + quote(_utf8(name), safe="") + query
            answer = deployment.client.put(path, content=data, headers=headers)
        else:
            fields = {} if meta_value is None else {"metadata": _utf8(json.dumps(meta))}
            body, kind = _form(
                _utf8(name).replace(b'"', b"%22"), _utf8(content_type or "text/plain"), **fields
            )
            body = body.replace(b"\r\n\r\nhello\r\n", b"\r\n\r\n" + data + b"\r\n")
            answer = deployment.client.post(
                "/files/upload" + query, content=body, headers={"Content-Type": kind}
            )
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        reject()  # not sendable as HTTP at all: a client library refuses it first
    _check_answer(deployment, answer)
    if answer.status_code == 201:
        sent_name = name if how == "put" else name.replace('"', "%22")
        stored_meta = meta if how == "form" or meta_value is None else {"note": meta_value}
        _check_stored(deployment, answer, data, sent_name, stored_meta)
    assert deployment.stored() == before


@settings(max_examples=60, deadline=None, database=None)
@given(name=text, filetype=st.one_of(st.none(), text), folder=st.one_of(st.none(), text))
def test_any_tus_upload_is_stored_and_served_exactly_or_refused_cleanly(
    deployment: Deployment, name: str, filetype: str | None, folder: str | None
) -> None:
    pairs = {"filename": name, "filetype": filetype, "folder": folder}
    sent = {key: _utf8(value) for key, value in pairs.items() if value is not None}
    created = _tus_create(deployment, sent, length=5)
    _check_answer(deployment, created)
    if created.status_code != 201:
        return
    done = deployment.client.patch(
        created.headers["location"],
        content=b"hello",
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert done.status_code == 204, done.text
    file_id = unquote(done.headers["file-id"])
    assert deployment.client.get(deployment.url(file_id, "/info")).json()["file_name"] == name
    _served_back(deployment, file_id, b"hello")
    deployment.client.delete(deployment.url(file_id))


@settings(max_examples=80, deadline=None, database=None)
@given(entry=text, filename=text)
def test_any_zip_entry_name_or_link_filename_is_served_or_refused_cleanly(
    deployment: Deployment, entry: str, filename: str
) -> None:
    file_id = deployment.client.put("/files/upload/z.bin", content=b"zz").json()["file_id"]
    try:
        archive = _post_json(
            deployment.client, "/files/download-zip", [{"file_id": file_id, "file_name": entry}]
        )
        _check_answer(deployment, archive)
        if archive.status_code == 200:
            with zipfile.ZipFile(io.BytesIO(archive.content)) as opened:
                assert [opened.read(n) for n in opened.namelist()] == [b"zz"]
        link = _post_json(
            deployment.client, deployment.url(file_id, "/link"), {"filename": filename}
        )
        _check_answer(deployment, link)
        if link.status_code == 200:
            served = httpx.get(link.json()["url"])
            assert served.status_code == 200 and served.content == b"zz"
            served.headers["content-disposition"].encode("ascii")
    finally:
        deployment.client.delete(deployment.url(file_id))


header_text = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60),
    st.sampled_from(
        ["bytes=", "bytes=-", "bytes=0-", "bytes=5-2", "bytes=0-0,1-1", '"x"', "W/", "*"]
    ),
    st.integers(min_value=0, max_value=10**40).map(lambda n: f"bytes={n}-{n * 7}"),
    st.integers(min_value=0, max_value=10**40).map(lambda n: f"Mon, 01 Jan 2020 00:00:00 +{n}"),
)


@settings(max_examples=120, deadline=None, database=None)
@given(
    name=st.sampled_from(["range", "if-range", "if-none-match", "if-modified-since"]),
    value=header_text,
    method=st.sampled_from(["GET", "HEAD"]),
)
def test_any_conditional_or_range_header_gets_a_proper_answer(
    deployment: Deployment, name: str, value: str, method: str
) -> None:
    file_id = deployment.client.put("/files/upload/r.bin", content=b"0123456789").json()["file_id"]
    try:
        answer = deployment.client.request(
            method, deployment.url(file_id, "/download"), headers={name: value.strip()}
        )
        assert answer.status_code in (200, 206, 304, 400, 416), answer.text
        if method == "GET" and answer.status_code == 206:
            first, last = answer.headers["content-range"].split()[1].split("/")[0].split("-")
            assert answer.content == b"0123456789"[int(first) : int(last) + 1]
    finally:
        deployment.client.delete(deployment.url(file_id))


def test_a_content_type_stored_before_the_rules_is_served_as_valid_http(
    local_service: Service, tmp_path: Path
) -> None:
    """A record written before the text rules (edited here on disk) never breaks a download: a
    type that is not a media type is served as the one guessed from the name."""
    answer = httpx.put(f"{local_service.url}/files/upload/notes.txt", content=b"old file")
    file_id = answer.json()["file_id"]
    path = tmp_path / "data" / "files" / file_id.removeprefix("local:files/")
    record = json.loads(os.getxattr(path, "user.filegate"))
    record["content_type"] = "text/plain\r\nX-Evil: 1"
    os.setxattr(path, "user.filegate", json.dumps(record).encode())
    for method in ("GET", "HEAD"):
        served = httpx.request(method, f"{local_service.url}/files/{quote(file_id)}/download")
        assert served.status_code == 200
        assert served.headers["content-type"] == "text/plain; charset=utf-8"
        assert "x-evil" not in served.headers
    copied = httpx.post(f"{local_service.url}/files/{quote(file_id)}/copy", json={})
    assert copied.status_code == 201, copied.text  # a copy takes the served type, not the record's
    assert copied.json()["content_type"] == "text/plain"
