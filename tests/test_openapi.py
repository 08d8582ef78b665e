"""The OpenAPI document is what generated clients are built from."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.api.openapi import FOLDER, ID_PATTERNS, NAME
from app.errors import InvalidArgument
from app.settings import Settings
from app.storage.ids import MAX_KEY_BYTES, parse_file_id
from app.storage.validation import MAX_NAME_BYTES, check_file_name, check_folder
from tests.conftest import serve

OPERATIONS = {
    ("post", "/files/upload"): "upload_file",
    ("put", "/files/upload/{file_name}"): "upload_raw",
    ("post", "/files/batch-upload"): "batch_upload",
    ("get", "/files/{file_id}/download"): "download_file",
    ("delete", "/files/{file_id}"): "delete_file",
    ("get", "/files/{file_id}/info"): "get_file_info",
    ("post", "/files/download-zip"): "download_zip",
    ("post", "/files/{file_id}/link"): "create_link",
    ("get", "/files"): "list_files",
    ("get", "/files/summary"): "summarize_files",
    ("post", "/files/batch-delete"): "batch_delete",
    ("post", "/files/delete-prefix"): "delete_prefix",
    ("get", "/files/download-zip"): "download_zip_prefix",
    ("post", "/files/{file_id}/copy"): "copy_file",
    ("get", "/access"): "get_access",
}


KEYS = '[{"name": "docs", "key": "openapi-test-key-0123456789", "scopes": ["read"]}]'


async def _document(settings: Settings) -> dict[str, Any]:
    async with serve(settings) as client:
        response = await client.get("/openapi.json")
        assert response.status_code == 200
        document: dict[str, Any] = response.json()
        return document


@pytest.fixture
async def spec(tmp_path: Any) -> dict[str, Any]:
    """The document of a service with keys."""
    async with serve(Settings(_env_file=None, local_root=tmp_path, api_keys=KEYS)) as client:
        response = await client.get("/openapi.json")
        assert response.status_code == 200
        docs = await client.get("/docs")
        assert docs.status_code == 200
        document: dict[str, Any] = response.json()
        return document


def test_operation_ids_are_stable(spec: dict[str, Any]) -> None:
    found = {
        (method, path): op["operationId"]
        for path, item in spec["paths"].items()
        for method, op in item.items()
    }
    for key, operation_id in OPERATIONS.items():
        assert found.get(key) == operation_id, key


def test_every_error_response_is_declared_with_its_schema(spec: dict[str, Any]) -> None:
    error_ref = "#/components/schemas/ErrorBody"
    assert set(spec["components"]["schemas"]["ErrorBody"]["properties"]) >= {"detail", "code"}
    expected = {
        "upload_file": {"400", "401", "403", "408", "413", "500", "503", "507"},
        "upload_raw": {"400", "401", "403", "408", "413", "500", "503", "507"},
        "batch_upload": {"400", "401", "403", "408", "413", "500", "503", "507"},
        "download_file": {"400", "401", "403", "404", "416", "500", "503"},
        "get_file_info": {"400", "401", "403", "404", "500", "503"},
        "delete_file": {"400", "401", "403", "500", "503"},
        "download_zip": {"400", "401", "403", "404", "413", "500", "503"},
        "create_link": {"400", "401", "403", "404", "500", "503"},
    }
    for item in spec["paths"].values():
        for op in item.values():
            if op["operationId"] not in expected:
                continue
            errors = {s for s in op["responses"] if s >= "400"}
            assert errors == expected[op["operationId"]], op["operationId"]
            for status in errors:
                schema = op["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": error_ref}
            assert "422" not in op["responses"]


def test_the_key_schemes_are_declared_on_every_file_operation(spec: dict[str, Any]) -> None:
    """Generated clients send the key only where the document asks for it."""
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    assert schemes["apiKey"]["type"] == "apiKey"
    assert (schemes["apiKey"]["in"], schemes["apiKey"]["name"]) == ("header", "X-API-Key")
    for path, item in spec["paths"].items():
        for method, op in item.items():
            security = op.get("security", [])
            if path.startswith("/files/tus") and method == "options":
                assert security == [], path  # tus capabilities are public, as in tusd
            elif path.startswith("/files"):
                assert {"apiKey": []} in security and {"bearer": []} in security, (method, path)
            elif path in ("/healthz", "/readyz"):
                assert security == [], path


def test_upload_bodies_are_documented(spec: dict[str, Any]) -> None:
    def form(path: str) -> dict[str, Any]:
        body = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
        schema: dict[str, Any] = body["schema"]
        return schema

    single = form("/files/upload")
    assert single["required"] == ["file"]
    assert single["properties"] == {"file": {"type": "string", "format": "binary"}}
    batch = form("/files/batch-upload")
    assert batch["properties"]["files"]["items"] == {"type": "string", "format": "binary"}
    for path in ("/files/upload", "/files/batch-upload"):
        # generated clients send the file part first: folder and bucket are query parameters
        query = {p["name"] for p in spec["paths"][path]["post"]["parameters"]}
        assert query == {"folder", "bucket"}
    raw = spec["paths"]["/files/upload/{file_name}"]["put"]["requestBody"]["content"]
    assert "application/octet-stream" in raw
    for schema in ("FileAttach", "FileInfo"):
        assert schema in spec["components"]["schemas"]


async def test_validation_errors_are_400_not_422(tmp_path: Any) -> None:
    async with serve(Settings(_env_file=None, local_root=tmp_path)) as client:
        response = await client.get("/files/local:files/x_y/download?inline=perhaps")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_argument"
    assert "inline" in body["detail"]  # names the parameter that was wrong


async def test_without_keys_no_operation_declares_security(tmp_path: Any) -> None:
    document = await _document(Settings(_env_file=None, local_root=tmp_path))
    for path, item in document["paths"].items():
        for method, op in item.items():
            assert "security" not in op, (method, path)
            assert "401" not in op["responses"], (method, path)


async def test_file_ids_carry_the_pattern_of_the_backends_this_mode_serves(tmp_path: Any) -> None:
    document = await _document(Settings(_env_file=None, local_root=tmp_path))
    info = document["paths"]["/files/{file_id}/info"]["get"]
    pattern = re.compile(info["parameters"][0]["schema"]["pattern"])
    async with serve(Settings(_env_file=None, local_root=tmp_path)) as client:
        uploaded = await client.put("/files/upload/Q3 report.pdf?folder=a/b", content=b"x")
    file_id = uploaded.json()["file_id"]
    assert pattern.fullmatch(file_id)
    for refused in ("0", "s3:files/a_b", "local:files/../x", "local:Files/a", "local:files/a/info",
                    "group1/M00/00/00/wKgAAWZ.jpg"):  # fmt: skip
        assert not pattern.fullmatch(refused), refused
    download = document["paths"]["/files/{file_id}/download"]["get"]["responses"]
    assert set(download["200"]["content"]) == {"*/*"}
    assert set(download["206"]["content"]) == {"*/*"}
    zip_ok = document["paths"]["/files/download-zip"]["post"]["responses"]["200"]
    assert set(zip_ok["content"]) == {"application/zip"}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(ID_PATTERNS)).flatmap(
    lambda backend: st.from_regex(f"^{ID_PATTERNS[backend]}$", fullmatch=True)))  # fmt: skip
def test_every_id_the_pattern_admits_parses(raw: str) -> None:
    """What the document calls a valid id, the service accepts (the schemathesis runs of
    tests/test_schema_tools.py check the same against the live service)."""
    assert str(parse_file_id(raw)) == raw or len(raw.encode()) > MAX_KEY_BYTES


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_names_and_folders_the_patterns_admit_are_accepted(name: str, folder: str) -> None:
    if re.fullmatch(NAME["pattern"], name) and len(name.encode()) <= MAX_NAME_BYTES:
        assert check_file_name(name) == name
    else:
        with pytest.raises(InvalidArgument):
            check_file_name(name)
    if re.fullmatch(FOLDER["pattern"], folder):
        check_folder(folder)
    else:
        with pytest.raises(InvalidArgument):
            check_folder(folder)


async def test_an_empty_link_filename_is_admitted_by_the_document_as_by_the_route(
    tmp_path: Any,
) -> None:
    """The route reads "" as no name (the file's own); the document must admit it too (a
    schemathesis run found the gap: the document refused what the route accepted)."""
    import jsonschema  # type: ignore[import-untyped]  # (check-jsonschema brings it)

    settings = Settings(_env_file=None, local_root=tmp_path, signing_secret="s" * 32)
    async with serve(settings) as client:
        document = (await client.get("/openapi.json")).json()
        filename = document["components"]["schemas"]["LinkRequest"]["properties"]["filename"]
        jsonschema.validate("", filename)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate("a/b", filename)
        file_id = (await client.put("/files/upload/a.txt", content=b"a")).json()["file_id"]
        link = await client.post(f"/files/{file_id}/link", json={"filename": ""})
        assert link.status_code == 200, link.text


async def test_request_booleans_are_booleans(tmp_path: Any) -> None:
    """The document says boolean, so 0 and 1 are refused, not read as false and true (a
    schemathesis run found ``{"inline": 0}`` accepted by the link route)."""
    settings = Settings(_env_file=None, local_root=tmp_path, signing_secret="s" * 32)
    async with serve(settings) as client:
        file_id = (await client.put("/files/upload/a.txt", content=b"a")).json()["file_id"]
        bodies: list[dict[str, object]] = [{"inline": 0}, {"direct": 1}, {"inline": "true"}]
        for body in bodies:
            refused = await client.post(f"/files/{file_id}/link", json=body)
            assert refused.status_code == 400, (body, refused.text)
        refusals: list[tuple[str, dict[str, object]]] = [
            ("/files/delete-prefix", {"prefix": "local:files/x/", "dry_run": 1}),
            (f"/files/{file_id}/copy", {"delete_source": 0}),
        ]
        for path, body in refusals:
            refused = await client.post(path, json=body)
            assert refused.status_code == 400, (path, refused.text)
        assert (
            await client.post(f"/files/{file_id}/link", json={"inline": True})
        ).status_code == 200
